"""The audit trail end to end: real collector, real proxy, real ipykernel, driven by
nbclient and jupyter_client.

- every cell's code and outputs of an executed notebook are on the record, in order;
- fail-closed: with the collector stopped a cell does not run (a side effect that must
  not happen), the user gets AuditLogUnavailable, and execution resumes once it is back;
- the allow policy runs the cell and leaves an explicit gap record;
- tampering with a real store (a byte, a line, two lines swapped, a segment, the tail,
  the checkpoint) makes `verify` fail and name where;
- a getpass() answer never reaches the store, an input() answer does;
- identity is the OS user, whatever the message header claims;
- as root: the collector runs as one system user, the kernel as another, who can
  neither read nor write the store.

The store is read by parsing its segment files directly (all lines of all segments in
name order), so these tests do not depend on the review tools.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable

import nbformat
import pytest
from jupyter_client import KernelManager
from nbclient import NotebookClient

from helpers import (
    AUDITED,
    BIN,
    TIMEOUT,
    KernelPool,
    as_user,
    execute,
    iopub_for,
    proxy_argv,
    reply_for,
    run_ok,
    stdout_of,
    system_user,
    unique_marker,
    wait_until,
)

RECORD_TIMEOUT = 30  # liveness only: how long records may take to reach the store
CHAIN_SUFFIX_LEN = len(b',"chain":{"prev":"') + 64 + len(b'","hash":"') + 64 + len(b'"}}')


# --- reading the store --------------------------------------------------------------------


def segment_files(store: Path) -> list[Path]:
    return sorted((store / "segments").glob("*.jsonl"))


def read_store(store: Path) -> list[dict]:
    """Every record of the store: all lines of all segments in name order. A last line
    without its newline is a write in progress and is left out."""
    records = []
    for segment in segment_files(store):
        data = segment.read_bytes()
        for line in data.split(b"\n")[:-1]:
            records.append(json.loads(line))
    return records


def field(record: dict, dotted: str, default: Any = None) -> Any:
    value: Any = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return default
        value = value[key]
    return value


def action(record: dict) -> str:
    return field(record, "event.action", "")


def seq(record: dict) -> int:
    return field(record, "event.sequence")


def describe(records: list[dict], limit: int = 60) -> str:
    """A short listing of records for failure messages."""
    lines = []
    for r in records[-limit:]:
        j = r.get("jupyter", {})
        keys = ("code", "text", "ename", "reason", "write_ahead_failed")
        extra = {k: j[k] for k in keys if k in j}
        lines.append(
            f"#{seq(r)} {action(r)} user={field(r, 'user.name')} msg={str(j.get('msg_id'))[-12:]} "
            f"parent={str(j.get('parent_msg_id'))[-12:]} {json.dumps(extra)[:120]}"
        )
    skipped = f"(first {len(records) - limit} not shown)\n  " if len(records) > limit else ""
    return f"{len(records)} records:\n  {skipped}" + "\n  ".join(lines)


def wait_for_records(
    store: Path, predicate: Callable[[list[dict]], bool], what: str, logs: str = ""
) -> list[dict]:
    """The store's records once predicate(records) holds; fails with what was seen."""
    seen: list[dict] = []

    def ready() -> bool:
        nonlocal seen
        seen = read_store(store)
        return predicate(seen)

    if not wait_until(ready, RECORD_TIMEOUT, interval=0.1):
        pytest.fail(f"not on the record within {RECORD_TIMEOUT}s: {what}\n{describe(seen)}\n{logs}")
    return seen


def by_msg_id(records: list[dict], msg_id: str, act: str | None = None) -> list[dict]:
    return [
        r
        for r in records
        if field(r, "jupyter.msg_id") == msg_id and (act is None or action(r) == act)
    ]


def children(records: list[dict], parent_msg_id: str) -> list[dict]:
    return [r for r in records if field(r, "jupyter.parent_msg_id") == parent_msg_id]


def verify(store: Path, *flags: str, user: str | None = None) -> subprocess.CompletedProcess:
    argv = [str(BIN), "verify", "--store", str(store), *flags]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def verify_output(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


# --- an own collector and kernelspec per test ---------------------------------------------


class Collector:
    """A collector of the test's own (own store, own socket), optionally run as another
    user (`run_as` = (uid, gid)); its stderr goes to a log file."""

    def __init__(
        self, root: Path, *flags: str, store: Path | None = None, socket: Path | None = None,
        run_as: tuple[int, int] | None = None,
    ) -> None:
        self.store = store or root / "store"
        self.socket = socket or root / "collector.sock"
        self.flags = flags
        self.run_as = run_as
        self.log_path = root / f"collector-{uuid.uuid4().hex[:6]}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> Collector:
        argv = [str(BIN), "collector", "--store", str(self.store), "--socket", str(self.socket),
                *self.flags]
        if self.run_as:
            uid, gid = self.run_as
            argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *argv]
        env = {**os.environ, "RUST_LOG": "jupyter_audit=info"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=log, env=env)
        if not wait_until(lambda: self.socket.exists() or self.process.poll() is not None, 20):
            pytest.fail(f"the collector did not start within 20 s\n{self.log()}")
        if self.process.poll() is not None:
            pytest.fail(f"the collector exited with {self.process.returncode}\n{self.log()}")
        return self

    def stop(self) -> None:
        """SIGTERM, and wait: the collector writes its final checkpoint and exits 0."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            pytest.fail(f"the collector did not stop on SIGTERM within 20 s\n{self.log()}")
        assert code == 0, f"the collector exited with {code}\n{self.log()}"
        assert not self.socket.exists(), "the collector left its socket behind"

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log(self) -> str:
        try:
            return f"collector stderr ({self.log_path}):\n{self.log_path.read_text()[-6000:]}"
        except OSError:
            return "collector stderr: none"


@pytest.fixture
def collectors():
    """Collectors started by a test; any still running is killed at teardown."""
    started: list[Collector] = []
    yield started
    for collector in started:
        collector.kill()


def own_collector(collectors: list, root: Path, *flags: str, **kwargs: Any) -> Collector:
    collector = Collector(root, *flags, **kwargs)
    collectors.append(collector)
    return collector.start()


def write_kernelspec(argv: list[str], env: dict | None = None, prefix: str = "ja-audit") -> str:
    """A kernelspec of the test's own in the suite's JUPYTER_PATH; returns its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    spec_dir = Path(os.environ["JUPYTER_PATH"]) / "kernels" / name
    spec_dir.mkdir(parents=True)
    spec = {"argv": argv, "display_name": name, "language": "python", "interrupt_mode": "signal"}
    if env:
        spec["env"] = env
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
    return name


def audited_kernelspec(socket: Path, *flags: str) -> str:
    ipykernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return write_kernelspec(proxy_argv(socket, *flags) + ipykernel,
                            env={"RUST_LOG": "jupyter_audit=info"})


class LoggedKernel:
    """A kernel started through a KernelPool with the proxy's stderr in a file (kept
    open: km.restart_kernel launches again with the same stderr)."""

    def __init__(self, pool: KernelPool, name: str, log_dir: Path, **km_kwargs: Any) -> None:
        self.log_path = log_dir / f"proxy-{uuid.uuid4().hex[:6]}.log"
        self.log_file = open(self.log_path, "ab")
        self.km = KernelManager(kernel_name=name, **km_kwargs)
        pool.managers.append(self.km)
        self.km.start_kernel(stderr=self.log_file)
        self.kc = pool.client(self.km)

    def log(self) -> str:
        try:
            return f"proxy stderr ({self.log_path}):\n{self.log_path.read_text()[-6000:]}"
        except OSError:
            return "proxy stderr: none"


def logs(*sources: Any) -> str:
    return "\n".join(source.log() for source in sources)


# --- 1. a notebook through nbclient -------------------------------------------------------


def make_png(width: int, height: int, seed: int) -> bytes:
    """A small valid RGB PNG whose pixels depend on seed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\x00" + bytes(((x * 37 + y * 11 + seed) % 256) for x in range(width * 3))
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_notebook_cells_and_outputs_are_on_the_record(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir)
    kernel_name = audited_kernelspec(collector.socket)
    token = uuid.uuid4().hex
    png = make_png(7, 5, seed=len(token))
    png_b64 = base64.b64encode(png).decode()
    sources = [
        f"# notebook {token}\nprint('hello from the audited kernel')\nprint('second line')",
        "import sys\nprint('to stderr', file=sys.stderr)\nprint('to stdout')",
        "import base64\nfrom IPython.display import Image, display\n"
        f"display(Image(data=base64.b64decode({png_b64!r}), format='png'))",
        "raise ValueError('intended failure ' + 'in a cell')",
        "value = 6 * 7\nvalue",
        "print('ünïcödé ✓ ' * 3)",
    ]
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nb.cells[3].metadata["tags"] = ["raises-exception"]
    client = NotebookClient(
        nb, kernel_name=kernel_name, timeout=120, startup_timeout=60,
        resources={"metadata": {"path": str(tmp_dir)}},
    )
    client.execute()

    # The session ends with the kernel's graceful shutdown; wait for its last record.
    def session_of_first_cell(records: list[dict]) -> str | None:
        for r in records:
            if action(r) == "execute_request" and field(r, "jupyter.code") == sources[0]:
                return field(r, "jupyter.session_id")
        return None

    records = wait_for_records(
        collector.store,
        lambda rs: any(
            action(r) == "session_end"
            and field(r, "jupyter.session_id") == session_of_first_cell(rs)
            for r in rs
        ),
        "session_end of the notebook's session",
        collector.log(),
    )
    session = session_of_first_cell(records)
    mine = [r for r in records if field(r, "jupyter.session_id") == session]
    listing = describe(mine)

    # Stored in order: the file order is the sequence order, without gaps.
    sequences = [seq(r) for r in records]
    assert sequences == list(range(1, len(records) + 1)), listing

    me = pwd.getpwuid(os.getuid())
    for r in mine:
        assert field(r, "user.name") == me.pw_name and field(r, "user.id") == str(me.pw_uid), r

    starts = [r for r in mine if action(r) == "session_start"]
    ends = [r for r in mine if action(r) == "session_end"]
    assert len(starts) == 1 and len(ends) == 1, listing
    assert field(starts[0], "jupyter.kernel_name") == kernel_name
    assert field(ends[0], "jupyter.exit_code") == 0, ends[0]

    for index, cell in enumerate(nb.cells):
        requests = [
            r for r in mine
            if action(r) == "execute_request" and field(r, "jupyter.code") == cell.source
        ]
        assert len(requests) == 1, f"cell {index}: execute_request with its exact code\n{listing}"
        request = requests[0]
        msg_id = field(request, "jupyter.msg_id")
        outputs = children(mine, msg_id)
        assert seq(starts[0]) < seq(request) < seq(ends[0]), listing
        assert all(seq(o) > seq(request) for o in outputs), f"cell {index}: outputs before request"
        kinds = [action(o) for o in outputs]

        inputs = [o for o in outputs if action(o) == "execute_input"]
        assert len(inputs) == 1 and field(inputs[0], "jupyter.code") == cell.source, kinds
        assert field(inputs[0], "jupyter.execution_count") == cell.execution_count
        replies = [o for o in outputs if action(o) == "execute_reply"]
        assert len(replies) == 1, f"cell {index}: one execute_reply\n{kinds}"
        reply = replies[0]
        assert field(reply, "jupyter.execution_count") == cell.execution_count

        shown = cell.outputs
        for name in ("stdout", "stderr"):
            expected = "".join(
                o.text for o in shown if o.output_type == "stream" and o.name == name
            )
            recorded = "".join(
                field(o, "jupyter.text") for o in outputs
                if action(o) == "stream" and field(o, "jupyter.stream") == name
            )
            assert recorded == expected, f"cell {index} {name}: {recorded!r} != {expected!r}"

        shown_errors = [o for o in shown if o.output_type == "error"]
        recorded_errors = [o for o in outputs if action(o) == "error"]
        assert [
            (field(o, "jupyter.ename"), field(o, "jupyter.evalue")) for o in recorded_errors
        ] == [(o.ename, o.evalue) for o in shown_errors], f"cell {index}"
        assert field(reply, "jupyter.status") == ("error" if shown_errors else "ok")
        assert field(reply, "event.outcome") == ("failure" if shown_errors else "success")

        shown_displays = [o for o in shown if o.output_type in ("display_data", "execute_result")]
        recorded_displays = [o for o in outputs if action(o) in ("display_data", "execute_result")]
        assert [action(o) for o in recorded_displays] == [o.output_type for o in shown_displays]
        for seen, kept in zip(shown_displays, recorded_displays):
            for mime, value in seen.data.items():
                stored = field(kept, "jupyter.data", {}).get(mime)
                if mime == "image/png":
                    raw = base64.b64decode(value)
                    assert stored == {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
                else:
                    assert stored == value, f"cell {index} {mime}"

    # The concrete values, not only "what nbclient saw".
    png_record = [r for r in mine if action(r) == "display_data"]
    assert len(png_record) == 1, listing
    assert field(png_record[0], "jupyter.data")["image/png"] == {
        "sha256": hashlib.sha256(png).hexdigest(), "size": len(png)}
    errors = [r for r in mine if action(r) == "error"]
    assert [(field(r, "jupyter.ename"), field(r, "jupyter.evalue")) for r in errors] == [
        ("ValueError", "intended failure in a cell")]
    results = [r for r in mine if action(r) == "execute_result"]
    assert [field(r, "jupyter.data")["text/plain"] for r in results] == ["42"]

    collector.stop()
    result = verify(collector.store)
    assert result.returncode == 0, verify_output(result)
    assert result.stdout.startswith("intact:"), verify_output(result)


# --- 2. fail-closed -----------------------------------------------------------------------


def test_fail_closed_refuses_without_the_collector_and_resumes(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        kc = kernel.kc
        assert run_ok(kc, "print('before the outage')") == "before the outage\n"

        collector.stop()
        marker = unique_marker(tmp_dir, "refused")
        code = f"open({str(marker)!r}, 'w').write('this cell ran')\nprint('ran')"
        reply, msgs = execute(kc, code)
        refused_id = reply["parent_header"]["msg_id"]
        content = reply["content"]
        diagnostics = f"{reply}\n{logs(collector, kernel)}"
        assert content["status"] == "error", diagnostics
        assert content["ename"] == "AuditLogUnavailable", diagnostics
        assert "audit log is unavailable" in content["evalue"], diagnostics
        iopub_errors = [m for m in msgs if m["msg_type"] == "error"]
        assert [m["content"]["ename"] for m in iopub_errors] == ["AuditLogUnavailable"], msgs
        assert "execute_input" not in [m["msg_type"] for m in msgs], "the kernel saw the request"
        assert stdout_of(msgs) == ""
        assert not marker.exists(), "a refused cell ran"

        collector.start()  # the same store and socket
        records = wait_for_records(
            collector.store,
            lambda rs: bool(by_msg_id(rs, refused_id, "execution_refused")),
            "execution_refused of the refused request, once the collector is back",
            logs(collector, kernel),
        )
        # Execution resumes; the kernel never counted the refused request.
        reply, msgs = execute(kc, f"import os\nprint(os.path.exists({str(marker)!r}))")
        assert reply["content"]["status"] == "ok", f"{reply}\n{logs(collector, kernel)}"
        assert stdout_of(msgs) == "False\n"
        assert reply["content"]["execution_count"] == 2
        resumed_id = reply["parent_header"]["msg_id"]
        records = wait_for_records(
            collector.store,
            lambda rs: bool(by_msg_id(rs, resumed_id, "execute_request"))
            and any(action(r) == "execute_reply" for r in children(rs, resumed_id)),
            "the cell run after the collector came back",
            logs(collector, kernel),
        )
        listing = describe(records)

        requests = by_msg_id(records, refused_id, "execute_request")
        assert len(requests) == 1, listing
        request = requests[0]
        assert field(request, "jupyter.code") == code
        assert field(request, "jupyter.write_ahead_failed") is True, request
        refusals = by_msg_id(records, refused_id, "execution_refused")
        assert len(refusals) == 1, listing
        refusal = refusals[0]
        assert field(refusal, "jupyter.refused_msg_type") == "execute_request"
        assert "unavailable" in field(refusal, "jupyter.reason", ""), refusal
        assert field(refusal, "user.name") == pwd.getpwuid(os.getuid()).pw_name
        assert seq(request) < seq(refusal), listing
        # What happened when: the proxy's clock says before the collector came back.
        restarts = [r for r in records if action(r) == "collector_start"]
        assert len(restarts) == 2, listing
        assert field(request, "event.created") < field(restarts[1], "@timestamp"), request
        # The kernel never answered it, never ran it.
        assert children(records, refused_id) == [], listing

        resumed = by_msg_id(records, resumed_id, "execute_request")[0]
        assert "write_ahead_failed" not in resumed["jupyter"]
        assert [field(r, "jupyter.text") for r in children(records, resumed_id)
                if action(r) == "stream"] == ["False\n"]
        assert not marker.exists(), "a refused cell ran later"
    finally:
        pool.shutdown_all()

    collector.stop()
    result = verify(collector.store)
    assert result.returncode == 0, verify_output(result)


# --- 3. allow policy ----------------------------------------------------------------------


def test_allow_policy_runs_and_records_the_gap(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(
            pool, audited_kernelspec(collector.socket, "--on-audit-failure", "allow"), tmp_dir)
        kc = kernel.kc
        run_ok(kc, "print('before the outage')")

        collector.stop()
        marker = unique_marker(tmp_dir, "allowed")
        code = f"open({str(marker)!r}, 'w').write('ran')\nprint('ran unrecorded')"
        reply, msgs = execute(kc, code)
        assert reply["content"]["status"] == "ok", f"{reply}\n{logs(collector, kernel)}"
        assert stdout_of(msgs) == "ran unrecorded\n"
        assert marker.exists()
        bypassed_id = reply["parent_header"]["msg_id"]

        collector.start()
        records = wait_for_records(
            collector.store,
            lambda rs: bool(by_msg_id(rs, bypassed_id, "audit_bypassed"))
            and any(action(r) == "execute_reply" for r in children(rs, bypassed_id)),
            "audit_bypassed and the cell's records, once the collector is back",
            logs(collector, kernel),
        )
        listing = describe(records)
        gap = by_msg_id(records, bypassed_id, "audit_bypassed")
        assert len(gap) == 1, listing
        assert field(gap[0], "jupyter.refused_msg_type") == "execute_request", gap[0]
        assert "unavailable" in field(gap[0], "jupyter.reason", ""), gap[0]
        requests = by_msg_id(records, bypassed_id, "execute_request")
        assert len(requests) == 1, listing
        assert field(requests[0], "jupyter.code") == code
        assert field(requests[0], "jupyter.write_ahead_failed") is True, requests[0]
        # What the cell displayed while the collector was away is on the record too.
        outputs = children(records, bypassed_id)
        assert [field(r, "jupyter.text") for r in outputs if action(r) == "stream"] == [
            "ran unrecorded\n"], listing
        assert run_ok(kc, "print('after')") == "after\n"
    finally:
        pool.shutdown_all()

    collector.stop()
    result = verify(collector.store)
    assert result.returncode == 0, verify_output(result)


# --- 4. tampering -------------------------------------------------------------------------


def chain_parts(line: bytes) -> tuple[bytes, bytes]:
    """(body B, prev hash hex) of a stored line (without its newline)."""
    head = line[: len(line) - CHAIN_SUFFIX_LEN]
    prev = line[len(head) + len(b',"chain":{"prev":"'):][:64]
    return head + b"}", prev


def sealed(body: bytes, prev_hex: bytes) -> tuple[bytes, bytes]:
    """The stored line of body B chained to prev, and its hash (as the store seals)."""
    digest = hashlib.sha256(bytes.fromhex(prev_hex.decode()) + body).hexdigest().encode()
    line = body[:-1] + b',"chain":{"prev":"' + prev_hex + b'","hash":"' + digest + b'"}}'
    return line, digest


class StoreCopy:
    """A writable copy of a store, with line-level edits."""

    def __init__(self, original: Path, root: Path, label: str) -> None:
        self.dir = root / label
        shutil.copytree(original, self.dir)
        for path in [self.dir, *self.dir.rglob("*")]:
            path.chmod(path.stat().st_mode | stat.S_IWUSR | stat.S_IRUSR | stat.S_IXUSR)

    def segments(self) -> list[Path]:
        return segment_files(self.dir)

    def lines(self, segment: Path) -> list[bytes]:
        return segment.read_bytes().split(b"\n")[:-1]

    def write(self, segment: Path, lines: list[bytes]) -> None:
        segment.write_bytes(b"".join(line + b"\n" for line in lines))

    def find(self, needle: bytes) -> tuple[Path, int]:
        """(segment, 1-based line) of the first line containing needle."""
        for segment in self.segments():
            for number, line in enumerate(self.lines(segment), 1):
                if needle in line:
                    return segment, number
        raise AssertionError(f"{needle!r} not in the store")

    def where(self, segment: Path, line: int) -> str:
        return f"segments/{segment.name}:{line}"


def expect_tampered(result: subprocess.CompletedProcess, *fragments: str) -> None:
    out = verify_output(result)
    assert result.returncode == 1, out
    assert result.stdout.startswith("TAMPERED: "), out
    for fragment in fragments:
        assert fragment in result.stdout, f"{fragment!r} not in the report\n{out}"


def test_tampering_with_a_real_store_is_detected(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir, "--segment-max-bytes", "3000",
                              "--checkpoint-interval-secs", "1")
    token = uuid.uuid4().hex
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        for i in range(8):
            run_ok(kernel.kc, f"print('cell {i}', {i} * {i})")
            if i == 3:
                run_ok(kernel.kc, f"target = 'ORIGINAL-{token}'")
        # An interval checkpoint while the collector runs.
        checkpoints = collector.store / "checkpoints.jsonl"
        assert wait_until(
            lambda: checkpoints.exists() and checkpoints.read_text().count("\n") >= 1, 20
        ), f"no checkpoint within 20 s with --checkpoint-interval-secs 1\n{collector.log()}"
        run_ok(kernel.kc, "print('after the first checkpoint')")
        assert wait_until(lambda: checkpoints.read_text().count("\n") >= 2, 20), collector.log()
    finally:
        pool.shutdown_all()
    collector.stop()

    original = collector.store
    keep = tmp_dir / "kept-elsewhere"
    keep.mkdir()
    exported = subprocess.run([str(BIN), "export-key", "--store", str(original)],
                              capture_output=True, text=True, timeout=30)
    assert exported.returncode == 0, exported.stderr
    (keep / "checkpoint.pub").write_text(exported.stdout)
    shutil.copy(original / "checkpoints.jsonl", keep / "checkpoints.jsonl")
    external = ["--checkpoint", str(keep / "checkpoints.jsonl"),
                "--key", str(keep / "checkpoint.pub")]
    checkpoint_lines = (keep / "checkpoints.jsonl").read_text().splitlines()
    last_checkpoint = json.loads(checkpoint_lines[-1])
    records = read_store(original)
    assert last_checkpoint["sequence"] == seq(records[-1]), "final checkpoint on shutdown"
    segments = segment_files(original)
    assert len(segments) >= 4, f"small segments expected: {[s.name for s in segments]}"
    for segment in segments[:-1]:
        assert stat.S_IMODE(segment.stat().st_mode) & 0o222 == 0, f"{segment} is not read-only"

    for result in (verify(original), verify(original, *external)):
        assert result.returncode == 0, verify_output(result)
        assert result.stdout.startswith("intact:"), verify_output(result)
    untouched = StoreCopy(original, tmp_dir, "untouched")
    assert verify(untouched.dir).returncode == 0

    # One byte inside a record's code.
    copy = StoreCopy(original, tmp_dir, "byte")
    segment, line = copy.find(f"ORIGINAL-{token}".encode())
    lines = copy.lines(segment)
    lines[line - 1] = lines[line - 1].replace(b"ORIGINAL-", b"ORIGINAM-", 1)
    copy.write(segment, lines)
    target_seq = json.loads(lines[line - 1])["event"]["sequence"]
    expect_tampered(verify(copy.dir), f"{copy.where(segment, line)} (sequence {target_seq})",
                    "record changed")

    # A record line deleted (in the middle of a segment).
    copy = StoreCopy(original, tmp_dir, "deleted-line")
    segment = next((s for s in copy.segments() if len(copy.lines(s)) >= 3), None)
    assert segment is not None, "no segment with 3 records"
    lines = copy.lines(segment)
    gone = json.loads(lines[1])["event"]["sequence"]
    copy.write(segment, lines[:1] + lines[2:])
    expect_tampered(verify(copy.dir), copy.where(segment, 2), f"record {gone} deleted")

    # Two lines swapped.
    copy = StoreCopy(original, tmp_dir, "swapped")
    segment = next((s for s in copy.segments() if len(copy.lines(s)) >= 3), None)
    assert segment is not None, "no segment with 3 records"
    lines = copy.lines(segment)
    first = json.loads(lines[1])["event"]["sequence"]
    lines[1], lines[2] = lines[2], lines[1]
    copy.write(segment, lines)
    expect_tampered(verify(copy.dir), copy.where(segment, 2), "reordered",
                    f"record {first} should come first", f"found at {copy.where(segment, 3)}")

    # A whole segment deleted (one in the middle).
    copy = StoreCopy(original, tmp_dir, "deleted-segment")
    victim, following = copy.segments()[1], copy.segments()[2]
    victim_lines = copy.lines(victim)
    first_gone = json.loads(victim_lines[0])["event"]["sequence"]
    last_gone = json.loads(victim_lines[-1])["event"]["sequence"]
    victim.unlink()
    expect_tampered(verify(copy.dir), copy.where(following, 1), "segment(s) removed",
                    f"records {first_gone} to {last_gone} are missing")

    # The tail cut off: the store ends before the last checkpoint.
    copy = StoreCopy(original, tmp_dir, "truncated")
    last = copy.segments()[-1]
    lines = copy.lines(last)
    if len(lines) >= 2:
        kept_lines = lines[:-1]
        copy.write(last, kept_lines)
        end_segment, end_line = last, len(kept_lines)
    else:
        last.unlink()
        end_segment = copy.segments()[-1]
        end_line = len(copy.lines(end_segment))
    end_seq = json.loads(copy.lines(end_segment)[-1])["event"]["sequence"]
    expect_tampered(verify(copy.dir), copy.where(end_segment, end_line),
                    f"truncated: the store ends at sequence {end_seq}, but the checkpoint "
                    f"covers up to {last_checkpoint['sequence']}")

    # The tail cut in the middle of a line.
    copy = StoreCopy(original, tmp_dir, "torn")
    last = copy.segments()[-1]
    data = last.read_bytes()
    last.write_bytes(data[:-40])
    expect_tampered(verify(copy.dir), copy.where(last, len(copy.lines(last)) + 1), "torn")

    # The tail and the later checkpoints cut together, consistently: only a checkpoint
    # kept elsewhere shows it.
    copy = StoreCopy(original, tmp_dir, "truncated-with-checkpoints")
    earlier = json.loads(checkpoint_lines[0])
    assert earlier["sequence"] < last_checkpoint["sequence"], checkpoint_lines
    for segment in copy.segments():
        kept_lines = [l for l in copy.lines(segment)
                      if json.loads(l)["event"]["sequence"] <= earlier["sequence"]]
        if kept_lines:
            copy.write(segment, kept_lines)
        else:
            segment.unlink()
    (copy.dir / "checkpoints.jsonl").write_text(checkpoint_lines[0] + "\n")
    expect_tampered(verify(copy.dir, *external), "truncated",
                    f"ends at sequence {earlier['sequence']}")

    # A forged checkpoint: the signed fields changed.
    copy = StoreCopy(original, tmp_dir, "forged-checkpoint")
    # Claims the record before the last, with that record's real chain hash, under the
    # last checkpoint's signature.
    forged = dict(last_checkpoint, sequence=seq(records[-2]),
                  chain_hash=records[-2]["chain"]["hash"])
    (copy.dir / "checkpoints.jsonl").write_text(
        "\n".join(checkpoint_lines[:-1] + [json.dumps(forged)]) + "\n")
    expect_tampered(verify(copy.dir), "checkpoint", "bad checkpoint signature")

    # A record rewritten and every later hash recomputed: the chain holds, the checkpoint
    # does not; verify names the record the checkpoint signed.
    copy = StoreCopy(original, tmp_dir, "rechained")
    segment, line = copy.find(f"ORIGINAL-{token}".encode())
    prev: bytes | None = None
    for current in copy.segments():
        lines = copy.lines(current)
        for i, text in enumerate(lines):
            if prev is None and not (current == segment and i == line - 1):
                continue
            body, old_prev = chain_parts(text)
            if prev is None:
                body = body.replace(b"ORIGINAL-", b"REWRITTEN", 1)
                prev = old_prev
            lines[i], prev = sealed(body, prev)
        copy.write(current, lines)
    last = copy.segments()[-1]
    expect_tampered(verify(copy.dir), copy.where(last, len(copy.lines(last))),
                    f"not the one the checkpoint signed: records up to "
                    f"{last_checkpoint['sequence']} were rewritten")

    # The same, re-signed by a collector with a new key (someone who can write the store
    # and run the binary): only the key and checkpoint kept elsewhere show it.
    for name in ("keys", "checkpoint.pub", "checkpoints.jsonl"):
        path = copy.dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (tmp_dir / "resigner").mkdir()
    resigner = own_collector(collectors, tmp_dir / "resigner", store=copy.dir)
    resigner.stop()
    expect_tampered(verify(copy.dir, "--key", str(keep / "checkpoint.pub")),
                    "bad checkpoint signature")
    expect_tampered(verify(copy.dir, *external), "not the one the checkpoint signed")

    # After all that, the original is untouched.
    assert verify(original).returncode == 0


# --- 5. passwords -------------------------------------------------------------------------


def answer(kc, msg_id: str, value: str, with_parent: bool = False) -> dict:
    """Waits for the input_request of msg_id and answers it, as jupyter_client's
    kc.input() does (no parent header) or, with_parent, as JupyterLab does (the
    input_request as parent). Returns the request."""
    request = kc.get_stdin_msg(timeout=TIMEOUT)
    assert request["msg_type"] == "input_request", request
    assert request["parent_header"]["msg_id"] == msg_id
    if with_parent:
        kc.stdin_channel.send(kc.session.msg("input_reply", {"value": value}, parent=request))
    else:
        kc.input(value)
    return request


def store_bytes(store: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in store.rglob("*") if path.is_file()}


def prompt_and_reply(records: list[dict], request_id: str) -> tuple[dict, dict]:
    """The input_request of an execution and the input_reply that answered it: the one
    whose parent is the prompt or, for frontends that send no parent (jupyter_client,
    jupyter console), the next input_reply of the session."""
    listing = describe(records)
    prompts = [r for r in children(records, request_id) if action(r) == "input_request"]
    assert len(prompts) == 1, listing
    prompt = prompts[0]
    replies = [
        r for r in records
        if action(r) == "input_reply"
        and field(r, "jupyter.session_id") == field(prompt, "jupyter.session_id")
        and seq(r) > seq(prompt)
        and field(r, "jupyter.parent_msg_id") in (None, field(prompt, "jupyter.msg_id"))
    ]
    assert replies, f"no input_reply after the prompt\n{listing}"
    return prompt, replies[0]


@pytest.mark.parametrize("with_parent", [False, True], ids=["jupyter_client", "jupyterlab"])
def test_getpass_answer_never_reaches_the_store(kernels, suite_store, with_parent):
    _, kc = kernels.start(AUDITED)
    secret = f"pw-{uuid.uuid4().hex}"
    msg_id = kc.execute("import getpass\npw = getpass.getpass('Password: ')\nprint(len(pw))",
                        allow_stdin=True)
    prompt = answer(kc, msg_id, secret, with_parent)
    assert prompt["content"]["password"] is True
    msgs = iopub_for(kc, msg_id)
    assert reply_for(kc.get_shell_msg, msg_id)["content"]["status"] == "ok"
    assert stdout_of(msgs) == f"{len(secret)}\n"

    records = wait_for_records(
        suite_store, lambda rs: any(action(r) == "execute_reply" for r in children(rs, msg_id)),
        "the password cell's reply")
    for path, data in store_bytes(suite_store).items():
        assert secret.encode() not in data, f"the password is in {path}"
    prompt, reply = prompt_and_reply(records, msg_id)
    assert field(prompt, "jupyter.password") is True
    assert field(prompt, "jupyter.prompt") == "Password: "
    assert field(reply, "jupyter.value_dropped") is True, reply
    assert "value" not in reply["jupyter"]
    assert [field(r, "jupyter.text") for r in children(records, msg_id)
            if action(r) == "stream"] == [f"{len(secret)}\n"]


@pytest.mark.parametrize("with_parent", [False, True], ids=["jupyter_client", "jupyterlab"])
def test_input_answer_is_recorded(kernels, suite_store, with_parent):
    _, kc = kernels.start(AUDITED)
    name = f"name-{uuid.uuid4().hex}"
    msg_id = kc.execute("name = input('Name: ')\nprint(len(name))", allow_stdin=True)
    prompt = answer(kc, msg_id, name, with_parent)
    assert prompt["content"]["password"] is False
    assert stdout_of(iopub_for(kc, msg_id)) == f"{len(name)}\n"
    assert reply_for(kc.get_shell_msg, msg_id)["content"]["status"] == "ok"

    records = wait_for_records(
        suite_store, lambda rs: any(action(r) == "execute_reply" for r in children(rs, msg_id)),
        "the input cell's reply")
    prompt, reply = prompt_and_reply(records, msg_id)
    assert field(prompt, "jupyter.password") is False
    assert field(prompt, "jupyter.prompt") == "Name: "
    assert field(reply, "jupyter.value") == name, (
        f"the answer to a non-password prompt is not on the record: {reply['jupyter']}")


# --- 6. identity --------------------------------------------------------------------------


def test_identity_is_the_os_user_not_the_claimed_one(kernels, suite_store):
    _, kc = kernels.start(AUDITED)
    kc.session.username = "root-impostor"
    token = uuid.uuid4().hex
    reply, _ = execute(kc, f"print('identity check {token}')")
    assert reply["content"]["status"] == "ok"
    msg_id = reply["parent_header"]["msg_id"]
    records = wait_for_records(
        suite_store, lambda rs: bool(by_msg_id(rs, msg_id, "execute_request")),
        "the impostor's execute_request")
    request = by_msg_id(records, msg_id, "execute_request")[0]
    me = pwd.getpwuid(os.getuid())
    assert field(request, "jupyter.claimed_username") == "root-impostor"
    assert field(request, "user.name") == me.pw_name, request
    assert field(request, "user.id") == str(me.pw_uid), request

    session = field(request, "jupyter.session_id")
    mine = [r for r in records if field(r, "jupyter.session_id") == session]
    assert all(field(r, "user.name") == me.pw_name for r in mine), describe(mine)
    start = [r for r in mine if action(r) == "session_start"]
    assert len(start) == 1, describe(mine)
    # The sender's pid is the kernel's (SO_PEERCRED), the proxy that started the kernel.
    assert field(request, "process.pid") == field(start[0], "jupyter.proxy_pid"), request


# --- 7. separate users (root only) --------------------------------------------------------

COLLECTOR_USER = "jupyter-audit-collector"
NOTEBOOK_USER = "jupyter-audit-nbuser"


def python_for(user: str) -> tuple[str, dict]:
    """An interpreter the user can run ipykernel with: this one if they can reach it,
    else the system's same-version Python with the venv's packages on PYTHONPATH
    (the venv's own interpreter may live under a home the user cannot enter)."""
    probe = "import ipykernel, zmq"
    if as_user(user, sys.executable, "-c", probe).returncode == 0:
        return sys.executable, {}
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = [
        p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix)
    ]
    for candidate in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.access(candidate, os.X_OK) or not site_packages:
            continue
        env = {"PYTHONPATH": os.pathsep.join(site_packages)}
        probed = subprocess.run(
            ["runuser", "-u", user, "--", "env", f"PYTHONPATH={env['PYTHONPATH']}", candidate,
             "-c", probe], capture_output=True, text=True, timeout=60)
        if probed.returncode == 0:
            return candidate, env
    pytest.skip(f"no Python with ipykernel that {user} can run (tried {sys.executable})")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates system users and runs "
                    "the collector and the kernel as two different users")
def test_collector_and_kernel_as_separate_users(collectors):
    owner = system_user(COLLECTOR_USER)
    nbuser = system_user(NOTEBOOK_USER)
    base = Path(tempfile.mkdtemp(prefix="ja-users-"))
    pool = KernelPool()
    try:
        base.chmod(0o755)
        collector_dir, run_dir, nb_dir = base / "collector", base / "run", base / "nb"
        for path, user, mode in ((collector_dir, owner, 0o755), (run_dir, owner, 0o755),
                                 (nb_dir, nbuser, 0o700)):
            path.mkdir()
            os.chown(path, user.pw_uid, user.pw_gid)
            path.chmod(mode)
        for sub in ("home", "runtime", "xdg", "ipython", "data", "config"):
            (nb_dir / sub).mkdir(mode=0o700)
            os.chown(nb_dir / sub, nbuser.pw_uid, nbuser.pw_gid)

        collector = own_collector(
            collectors, base, "--socket-mode", "666",
            store=collector_dir / "store", socket=run_dir / "collector.sock",
            run_as=(owner.pw_uid, owner.pw_gid),
        )
        store = collector.store
        assert store.stat().st_uid == owner.pw_uid
        assert stat.S_IMODE(store.stat().st_mode) & 0o077 == 0, oct(store.stat().st_mode)

        python, python_env = python_for(NOTEBOOK_USER)
        inner = proxy_argv(collector.socket) + [python, "-m", "ipykernel_launcher",
                                                "-f", "{connection_file}"]
        # The admin config path must be one the notebook user can look at (and not find).
        inner[inner.index("--config") + 1] = str(base / "no-admin-config.toml")
        # The connection file is written by this (root) process: hand it to the user,
        # then drop to the user for the proxy and the kernel.
        script = (
            f"chown {nbuser.pw_uid}:{nbuser.pw_gid} {{connection_file}} && "
            f"exec setpriv --reuid={nbuser.pw_uid} --regid={nbuser.pw_gid} --clear-groups -- "
            + shlex.join(inner)
        )
        env = {
            "HOME": str(nb_dir / "home"), "XDG_RUNTIME_DIR": str(nb_dir / "xdg"),
            "JUPYTER_RUNTIME_DIR": str(nb_dir / "runtime"), "IPYTHONDIR": str(nb_dir / "ipython"),
            "JUPYTER_DATA_DIR": str(nb_dir / "data"), "JUPYTER_CONFIG_DIR": str(nb_dir / "config"),
            "JUPYTER_PATH": str(nb_dir / "data"), "RUST_LOG": "jupyter_audit=info",
            **python_env,
        }
        name = write_kernelspec(["/bin/sh", "-c", script], env=env, prefix="ja-audit-nbuser")
        kernel = LoggedKernel(pool, name, base,
                              connection_file=str(nb_dir / f"kernel-{uuid.uuid4().hex}.json"))
        kc = kernel.kc
        assert run_ok(kc, "import os\nprint(os.getuid(), os.getgid())") == (
            f"{nbuser.pw_uid} {nbuser.pw_gid}\n"), kernel.log()

        segment = segment_files(store)[0]
        # From inside the notebook: the store cannot be read, listed, changed or removed,
        # and the collector cannot be stopped.
        attempts = {
            "read": f"open({str(segment)!r}).read()",
            "list": f"os.listdir({str(store / 'segments')!r})",
            "append": f"open({str(segment)!r}, 'a').write('x')",
            "create": f"open({str(store / 'segments' / 'x.jsonl')!r}, 'w')",
            "remove": f"os.remove({str(segment)!r})",
            "signal": f"os.kill({collector.process.pid}, signal.SIGTERM)",
            # The proxy (the kernel's parent, same user) cannot be reached into either.
            "proxy memory": "open('/proc/%d/mem' % os.getppid(), 'rb')",
            "proxy environment": "open('/proc/%d/environ' % os.getppid(), 'rb').read()",
        }
        code = "import os, signal\nresults = {}\n"
        for label, attempt in attempts.items():
            code += (f"try:\n    {attempt}\n    results[{label!r}] = 'allowed'\n"
                     f"except Exception as e:\n    results[{label!r}] = type(e).__name__\n")
        code += "print(sorted(results.items()))"
        token = uuid.uuid4().hex
        out = run_ok(kc, f"# {token}\n{code}")
        assert out == repr(sorted((label, "PermissionError") for label in attempts)) + "\n", out

        # And from a shell as that user.
        denied = [
            as_user(NOTEBOOK_USER, "cat", str(segment)),
            as_user(NOTEBOOK_USER, "touch", str(store / "segments" / "x")),
            as_user(NOTEBOOK_USER, "ls", str(store)),
            as_user(NOTEBOOK_USER, "rm", "-f", str(segment)),
        ]
        for result in denied:
            assert result.returncode != 0, result
            assert "Permission denied" in result.stderr, result
        unable = verify(store, user=NOTEBOOK_USER)
        assert unable.returncode == 2, verify_output(unable)
        # Told why, not that there is no store.
        assert "Permission denied" in verify_output(unable), verify_output(unable)

        records = wait_for_records(
            store,
            lambda rs: any(action(r) == "execute_request" and token in field(r, "jupyter.code", "")
                           for r in rs),
            "the notebook user's cell", logs(collector, kernel),
        )
        listing = describe(records)
        starts = [r for r in records if action(r) == "collector_start"]
        assert [field(r, "user.name") for r in starts] == [COLLECTOR_USER], listing
        request = next(r for r in records
                       if action(r) == "execute_request" and token in field(r, "jupyter.code", ""))
        session = field(request, "jupyter.session_id")
        mine = [r for r in records if field(r, "jupyter.session_id") == session]
        assert {field(r, "user.name") for r in mine} == {NOTEBOOK_USER}, listing
        assert {field(r, "user.id") for r in mine} == {str(nbuser.pw_uid)}, listing
        assert any(action(r) == "session_start" for r in mine), listing

        for path in [store, *store.rglob("*")]:
            info = path.lstat()
            assert info.st_uid == owner.pw_uid, f"{path} is owned by uid {info.st_uid}"
            assert stat.S_IMODE(info.st_mode) & 0o077 == 0, f"{path}: {oct(info.st_mode)}"
        pool.shutdown_all()
        collector.stop()
        result = verify(store)
        assert result.returncode == 0, verify_output(result)
    finally:
        pool.shutdown_all()
        shutil.rmtree(base, ignore_errors=True)
