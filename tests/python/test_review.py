"""The reviewer's tools on a real store (the suite's collector, real proxy, real ipykernel).

- `replay` rebuilds a session as a notebook that nbformat accepts, with the outputs the
  frontend showed (clear_output and display updates applied, images as placeholders),
  and that runs again on ipykernel to the same streams.
- `sessions` tells a running session, one whose proxy was SIGKILLed (ended abnormally)
  and one that ended normally apart.
- `log` filters, prints a table, and with --json the stored lines byte for byte.

Each test gives its kernel a unique JPY_SESSION_NAME (what jupyter_server sets to the
notebook path), which the proxy records in session_start: that is how the test finds its
session among everything else in the suite's store.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import AUDITED, BIN, DIRECT, TIMEOUT, proxy_argv, run_ok, wait_until

# A tiny valid PNG (1x1, red), built once.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)

CELLS = [
    "print('hello')\nprint('world')",
    "import sys\nprint('out')\nsys.stdout.flush()\nprint('err', file=sys.stderr)\n"
    "sys.stderr.flush()\nprint('out again')",
    "from IPython.display import clear_output, display\nfor i in range(4):\n"
    "    clear_output(wait=True)\n    print('step', i)",
    "print('gone')\nclear_output()\nprint('kept')",
    "h = display('first', display_id=True)\nh.update('second')",
    "h.update('updated from a later cell')\nprint('updated')",
    f"import base64\nfrom IPython.display import Image\n"
    f"display(Image(data=base64.b64decode({base64.b64encode(PNG).decode()!r}), format='png'))",
    "6 * 7",
    "raise ValueError('on purpose')",
    "for i in range(3):\n    print(i, end=' ')\nprint()",
]
FAILING_CELL = 8


def review(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
    if check:
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    return result


def sessions(store: Path, *filters: str) -> list[dict]:
    out = review("sessions", "--store", str(store), "--json", *filters).stdout
    return [json.loads(line) for line in out.splitlines()]


def session_of(store: Path, notebook: str, done=lambda s: True, timeout: float = TIMEOUT) -> dict:
    """The session whose notebook is `notebook`, once `done(session)` holds."""
    found: list[dict] = []

    def ready() -> bool:
        found[:] = [s for s in sessions(store) if s["notebook"] == notebook]
        return len(found) == 1 and done(found[0])

    assert wait_until(ready, timeout, 0.2), f"session of {notebook}: {found}"
    return found[0]


def streams(outputs: list) -> list[tuple[str, str]]:
    """Stream outputs with consecutive same-name ones merged (chunking is arbitrary)."""
    merged: list[list[str]] = []
    for out in outputs:
        if out["output_type"] != "stream":
            continue
        if merged and merged[-1][0] == out["name"]:
            merged[-1][1] += out["text"]
        else:
            merged.append([out["name"], out["text"]])
    return [tuple(pair) for pair in merged]


def output_kinds(outputs: list) -> list[str]:
    """Output types in order, a run of same-name stream outputs counted once (how a
    kernel's writes are split into stream messages depends on timing)."""
    kinds: list[str] = []
    last_stream = None
    for out in outputs:
        stream = out["name"] if out["output_type"] == "stream" else None
        if stream is None or stream != last_stream:
            kinds.append(out["output_type"])
        last_stream = stream
    return kinds


def non_stream(outputs: list) -> list:
    return [out for out in outputs if out["output_type"] != "stream"]


def per_stream(outputs: list) -> dict[str, str]:
    texts: dict[str, str] = {}
    for name, text in streams(outputs):
        texts[name] = texts.get(name, "") + text
    return texts


def run_notebook(nb: nbformat.NotebookNode, kernel_name: str, workdir: Path) -> None:
    NotebookClient(
        nb, kernel_name=kernel_name, timeout=120, startup_timeout=60,
        resources={"metadata": {"path": str(workdir)}},
    ).execute()


@pytest.fixture
def notebook_name(monkeypatch) -> str:
    """A unique notebook path, seen by the proxy as JPY_SESSION_NAME."""
    name = f"review/{uuid.uuid4().hex}.ipynb"
    monkeypatch.setenv("JPY_SESSION_NAME", name)
    return name


def test_replay_is_the_notebook_as_shown_and_runs_again(suite_store, tmp_dir, notebook_name):
    original = nbformat.v4.new_notebook()
    original.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    original.cells[FAILING_CELL].metadata["tags"] = ["raises-exception"]
    run_notebook(original, AUDITED, tmp_dir)

    session = session_of(suite_store, notebook_name, lambda s: s["end"] is not None)
    assert session["state"] == "ended", session
    assert session["kernel_name"] == AUDITED
    assert (session["cells"], session["errors"], session["refused"]) == (len(CELLS), 1, 0)
    assert session["user_id"] == str(os.getuid())

    path = tmp_dir / "replay.ipynb"
    # A prefix of the session id is enough.
    review("replay", "--store", str(suite_store), "--session", session["session_id"][:13],
           "-o", str(path))
    replay = nbformat.read(path, as_version=4)
    nbformat.validate(replay)
    assert replay.nbformat == 4 and replay.nbformat_minor == 5

    audit = replay.metadata["jupyter_audit"]
    assert audit["session_id"] == session["session_id"]
    assert audit["notebook_path"] == notebook_name
    assert audit["user"]["id"] == str(os.getuid())
    assert audit["sequence"]["first"] <= audit["sequence"]["last"]
    assert Path(audit["store"]) == suite_store.resolve()
    assert replay.metadata["kernelspec"]["name"] == AUDITED
    assert replay.metadata["language_info"]["name"] == "python"

    assert [cell.source for cell in replay.cells] == CELLS
    for index, (shown, rebuilt) in enumerate(zip(original.cells, replay.cells)):
        assert rebuilt.execution_count == shown.execution_count, index
        assert streams(rebuilt.outputs) == streams(shown.outputs), index
        kinds = output_kinds(rebuilt.outputs)
        assert kinds == output_kinds(shown.outputs), f"cell {index}: {kinds}"
        for seen, kept in zip(non_stream(shown.outputs), non_stream(rebuilt.outputs)):
            if seen.output_type in ("display_data", "execute_result") and index != 6:
                assert kept.data == seen.data, index
            if seen.output_type == "error":
                assert (kept.ename, kept.evalue) == (seen.ename, seen.evalue)
                assert "\n".join(kept.traceback) == "\n".join(seen.traceback)

    # clear_output and update_display_data applied as the frontend did.
    assert streams(replay.cells[2].outputs) == [("stdout", "step 3\n")]
    assert streams(replay.cells[3].outputs) == [("stdout", "kept\n")]
    assert replay.cells[4].outputs[0].data["text/plain"] == "'updated from a later cell'"
    # The image was stored as hash and size: the notebook says so instead of inventing it.
    image = replay.cells[6].outputs[0].data
    assert "image/png" not in image
    assert image["text/plain"].startswith(
        f"<image/png: {len(PNG)} bytes, sha256 {hashlib.sha256(PNG).hexdigest()}, not kept>"
    )
    assert replay.cells[7].outputs[0].data["text/plain"] == "42"

    # The replay runs again on plain ipykernel, to the same streams.
    rerun = nbformat.read(path, as_version=4)
    rerun.cells[FAILING_CELL].metadata["tags"] = ["raises-exception"]
    run_notebook(rerun, DIRECT, tmp_dir)
    for index, (rebuilt, again) in enumerate(zip(replay.cells, rerun.cells)):
        assert per_stream(again.outputs) == per_stream(rebuilt.outputs), index

    # nbconvert accepts it too.
    converted = subprocess.run(
        [sys.executable, "-m", "nbconvert", "--to", "markdown", "--stdout", str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert converted.returncode == 0, converted.stderr
    assert "updated from a later cell" in converted.stdout


def test_replay_rebuilds_shortened_text_with_what_is_missing(suite_store, tmp_dir, notebook_name):
    """With a small text cap, a long output comes back as head, a note, and tail."""
    socket = os.environ["JUPYTER_AUDIT_TEST_SOCKET"]
    spec_dir = Path(os.environ["JUPYTER_PATH"]) / "kernels" / "python3-audited-smallcap"
    spec_dir.mkdir(parents=True, exist_ok=True)
    argv = proxy_argv(socket, "--text-cap-bytes", "64") + [
        sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps(
        {"argv": argv, "display_name": "small cap", "language": "python"}))

    text = "".join(f"{i:03d}" for i in range(100)) + "\n"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f"print({text.strip()!r})")]
    run_notebook(nb, "python3-audited-smallcap", tmp_dir)

    store = suite_store
    session = session_of(store, notebook_name, lambda s: s["end"] is not None)
    out = review("replay", "--store", str(store), "--session", session["session_id"],
                 "-o", "-").stdout
    replay = nbformat.reads(out, as_version=4)
    nbformat.validate(replay)
    shown = replay.cells[0].outputs[0].text
    head, tail = text[:32], text[-32:]
    note = f"\n… [{len(text) - 64} bytes omitted, sha256 {hashlib.sha256(text.encode()).hexdigest()}] …\n"
    assert shown == head + note + tail
    # The code is never shortened.
    assert replay.cells[0].source == f"print({text.strip()!r})"


def test_sessions_tell_running_killed_and_ended_apart(
    kernels, suite_store, notebook_name, monkeypatch
):
    km, kc = kernels.start(AUDITED)
    assert run_ok(kc, "print('alive')") == "alive\n"
    running = session_of(suite_store, notebook_name)
    assert running["state"] == "running" and running["end"] is None, running
    assert running["cells"] == 1
    assert running["proxy_pid"] == km.provisioner.pid

    # SIGKILL leaves the proxy no time to record session_end.
    os.kill(km.provisioner.pid, signal.SIGKILL)
    km.provisioner.process.wait(timeout=TIMEOUT)
    killed = session_of(suite_store, notebook_name)
    assert killed["state"] == "ended abnormally", killed
    assert killed["end"] is None and "gone" in killed["end_reason"]

    table = review("sessions", "--store", str(suite_store), "--session",
                   killed["session_id"]).stdout.splitlines()
    assert len(table) == 2, table
    assert table[0].split()[:4] == ["SESSION", "USER", "NOTEBOOK", "KERNEL"]
    assert table[1].startswith(killed["session_id"][:8]) and "ended abnormally" in table[1]
    assert notebook_name in table[1]

    # A kernel shut down properly ends normally.
    monkeypatch.setenv("JPY_SESSION_NAME", notebook_name + "-clean")
    km2, kc2 = kernels.start(AUDITED)
    run_ok(kc2, "print(1)")
    kc2.stop_channels()
    km2.shutdown_kernel()
    ended = session_of(suite_store, notebook_name + "-clean", lambda s: s["end"] is not None)
    assert ended["state"] == "ended" and ended["end_reason"] is None, ended


def test_log_filters_and_prints_records_as_stored(kernels, suite_store, notebook_name):
    _, kc = kernels.start(AUDITED)
    marker = uuid.uuid4().hex
    run_ok(kc, f"print('{marker}')\n1 / 1")
    session = session_of(suite_store, notebook_name)
    sid = session["session_id"]

    lines = review("log", "--store", str(suite_store), "--session", sid[:8], "--json").stdout
    records = [json.loads(line) for line in lines.splitlines()]
    assert records and all(r["jupyter"]["session_id"] == sid for r in records)
    stored = b"".join(p.read_bytes() for p in sorted((suite_store / "segments").glob("*.jsonl")))
    for line in lines.encode().splitlines(keepends=True):
        assert line in stored

    requests = review("log", "--store", str(suite_store), "--session", sid, "--json",
                      "--action", "execute_request", "--action", "stream",
                      "--grep", marker).stdout.splitlines()
    assert [json.loads(line)["event"]["action"] for line in requests] == [
        "execute_request", "stream"]

    table = review("log", "--store", str(suite_store), "--session", sid, "--user",
                   str(os.getuid()), "--since", "2000-01-01").stdout.splitlines()
    assert table[0].split()[:4] == ["TIME", "(UTC)", "SEQ", "USER"]
    rows = [row for row in table[1:] if " execute_request " in row]
    assert len(rows) == 1 and rows[0].endswith(f"print('{marker}') …"), table
    assert all(sid[:8] in row for row in table[1:])

    nothing = review("log", "--store", str(suite_store), "--session", sid,
                     "--until", "2000-01-01", "--json").stdout
    assert nothing == ""

    for bad in (["--store", str(suite_store / "segments")], ["--store", "/nonexistent/store"]):
        result = review("log", *bad, check=False)
        assert result.returncode == 2 and result.stdout == "", result
        assert result.stderr.startswith("jupyter-audit: ")
    missing = review("replay", "--store", str(suite_store), "--session", "no-such-session",
                     "-o", "/dev/null", check=False)
    assert missing.returncode == 2 and "no session" in missing.stderr
