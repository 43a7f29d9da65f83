"""A session exported as a notebook with its proof, and verified offline (issue 14).

A real notebook runs through the audited kernel into a collector of the test's own (which
signs a checkpoint every 200 ms). `jupyter-audit export` writes the session as the
notebook `replay` makes, with the records and the covering checkpoint in
`metadata.jupyter_audit.export`; nbformat accepts it, its cells are the ones that ran
(code and outputs), and `verify-export` passes with the store's public key alone, and
fails once a cell, an output, a record, the checkpoint or the key is not what the store
signed. Without outputs, neither the notebook nor its proof holds an output; the left-out
output records are gaps an offline check cannot cross (`--strict` fails), which
`verify-export --store` checks on the store.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import BIN, wait_until
from test_audit import audited_kernelspec, collectors, own_collector  # noqa: F401

CELLS = [
    "print('revenue', 6 * 7)",
    "6 * 7",
    "raise ValueError('on purpose')",
]
SECRET_OUTPUT = "revenue 42"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def exported_session(collectors, tmp_dir, monkeypatch):  # noqa: F811
    """Runs CELLS through an audited kernel; returns (store, session id)."""
    collector = own_collector(collectors, tmp_dir, "--checkpoint-interval-ms", "200")
    name = f"export/{uuid.uuid4().hex}.ipynb"
    monkeypatch.setenv("JPY_SESSION_NAME", name)
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in CELLS]
    notebook.cells[2].metadata["tags"] = ["raises-exception"]
    NotebookClient(notebook, kernel_name=audited_kernelspec(collector.socket), timeout=120,
                   startup_timeout=60, resources={"metadata": {"path": str(tmp_dir)}}).execute()

    found: list[dict] = []

    def ended() -> bool:
        out = cli("sessions", "--store", str(collector.store), "--json").stdout
        found[:] = [s for s in map(json.loads, out.splitlines()) if s["notebook"] == name]
        return len(found) == 1 and found[0]["end"] is not None

    assert wait_until(ended, 30, 0.2), f"the session did not end: {found}\n{collector.log()}"
    return collector.store, found[0]["session_id"]


def export(store: Path, session: str, out: Path, *flags: str) -> nbformat.NotebookNode:
    """Exports, retrying while the last record waits for its checkpoint."""
    result: list[subprocess.CompletedProcess] = []

    def written() -> bool:
        result[:] = [cli("export", "--store", str(store), "--session", session,
                         "--out", str(out), *flags)]
        return result[0].returncode == 0

    assert wait_until(written, 10, 0.2), result[0].stderr
    notebook = nbformat.read(out, as_version=4)
    nbformat.validate(notebook)
    return notebook


def verify(path: Path, *key: str) -> subprocess.CompletedProcess:
    return cli("verify-export", str(path), *key)


def tampered(path: Path, change) -> Path:
    notebook = json.loads(path.read_text())
    change(notebook)
    out = path.with_name(f"tampered-{uuid.uuid4().hex[:6]}.ipynb")
    out.write_text(json.dumps(notebook))
    return out


def test_an_export_is_the_session_as_it_ran_and_verifies_offline(exported_session, tmp_dir):
    store, session = exported_session
    path = tmp_dir / "export.ipynb"
    notebook = export(store, session, path)
    assert path.stat().st_mode & 0o077 == 0, "an export holds audit data: owner only"

    assert [cell.source for cell in notebook.cells] == CELLS
    assert [cell.execution_count for cell in notebook.cells] == [1, 2, 3]
    assert notebook.cells[0].outputs == [
        nbformat.v4.new_output("stream", name="stdout", text=SECRET_OUTPUT + "\n")]
    assert notebook.cells[1].outputs[0].data["text/plain"] == "42"
    error = notebook.cells[2].outputs[0]
    assert (error.output_type, error.ename, error.evalue) == ("error", "ValueError", "on purpose")
    proof = notebook.metadata["jupyter_audit"]["export"]
    assert proof["session_id"] == session
    assert proof["checkpoint"]["sequence"] >= proof["records"][-1]["sequence"]

    # The auditor has the file and the public key, kept away from the store.
    key = tmp_dir / "store.pub"
    key.write_text(cli("export-key", "--store", str(store)).stdout)
    offline = verify(path, "--public-key", str(key))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "FAILED" not in offline.stdout
    assert "is signed by the store's key" in offline.stdout
    assert "are what replay makes of the records" in offline.stdout
    # Nothing else wrote to this store: the checkpoint signs the session's last record,
    # and every record is proven offline.
    strict = verify(path, "--public-key", str(key), "--strict")
    assert strict.returncode == 0, strict.stdout + strict.stderr
    with_store = verify(path, "--store", str(store))
    assert with_store.returncode == 0, with_store.stdout + with_store.stderr
    assert "names this store" in with_store.stdout

    # Whatever is changed is caught.
    def code(nb):
        nb["cells"][0]["source"] = "print('revenue', 0)"

    def output(nb):
        nb["cells"][0]["outputs"][0]["text"] = "revenue 0\n"

    def record(nb):
        line = nb["metadata"]["jupyter_audit"]["export"]["records"]
        request = next(r for r in line if '"execute_request"' in r["line"])
        request["line"] = request["line"].replace("6 * 7", "6 * 0", 1)

    def checkpoint(nb):
        checkpoint = nb["metadata"]["jupyter_audit"]["export"]["checkpoint"]
        checkpoint["sequence"] += 1

    for change, says in [(code, "its source differ"), (output, "its outputs differ"),
                         (record, "its chain hash is not"), (checkpoint, "signature")]:
        result = verify(tampered(path, change), "--public-key", str(key))
        assert result.returncode == 1, f"{change.__name__}: {result.stdout}{result.stderr}"
        assert "FAILED" in result.stdout and says in result.stdout, result.stdout

    other_key = tmp_dir / "other.pub"
    other_key.write_text("11" * 32 + "\n")
    wrong = verify(path, "--public-key", str(other_key))
    assert wrong.returncode == 1 and "FAILED" in wrong.stdout, wrong.stdout + wrong.stderr


def test_an_export_without_outputs_holds_none(exported_session, tmp_dir):
    store, session = exported_session
    path = tmp_dir / "no-outputs.ipynb"
    notebook = export(store, session, path, "--no-outputs")
    assert [cell.source for cell in notebook.cells] == CELLS
    assert all(cell.outputs == [] for cell in notebook.cells)
    text = path.read_text()
    assert SECRET_OUTPUT not in text and "output_type" not in text, "an output leaked"
    actions = {json.loads(r["line"])["event"]["action"]
               for r in notebook.metadata["jupyter_audit"]["export"]["records"]}
    assert "execute_request" in actions
    assert not actions & {"stream", "execute_result", "error", "execute_reply"}, actions
    key = tmp_dir / "store.pub"
    key.write_text(cli("export-key", "--store", str(store)).stdout)
    offline = verify(path, "--public-key", str(key))
    assert offline.returncode == 0, offline.stdout + offline.stderr
    assert "without outputs" in offline.stdout
    # The left-out outputs are gaps in the chain: not provable offline, said, and --strict
    # fails on it; with the store, they are checked there.
    assert "not verifiable offline" in offline.stdout
    strict = verify(path, "--public-key", str(key), "--strict")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    on_host = verify(path, "--store", str(store), "--strict")
    assert on_host.returncode == 0, on_host.stdout + on_host.stderr
    assert "against the store" in on_host.stdout
