"""Kernels other than ipykernel behind the proxy: xeus-python (C++ on its own ZeroMQ
stack), IRkernel (R; Debian's r-cran-irkernel) and bash_kernel (bash under pexpect).

Each audited kernelspec is written by `jupyter-audit install --wrap NAME` as an admin
would, with no transport flag (so the proxy reaches the kernel over ipc, the default).
For every kernel:

- jupyter_kernel_test's conformance tests run against the kernel directly and through
  the proxy: the same class, two kernel names. A test the kernel itself cannot pass is
  left out for both, with the reason (a kernel's gap, not the proxy's);
- a notebook run through nbclient gives the same outputs directly and audited, and the
  audited run is on the record: every cell's execute_request with its exact code, its
  execute_input, execute_reply, stream text, displays (images by hash) and errors;
- interrupt and restart work through the proxy as they do directly.

IRkernel needs R from Debian (scripts/kernels-env.sh installs it as root); without it
its tests are skipped with the reason.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jupyter_kernel_test as jkt
import nbformat
import pytest
from jupyter_client import KernelManager
from nbclient import NotebookClient

from helpers import BIN, execute, iopub_for, reply_for, stdout_of
from test_audit import action, children, describe, field, wait_for_records
from test_notebooks import first_difference, normalise

# The suite's private Jupyter prefix (conftest points JUPYTER_PATH at PREFIX/share/jupyter).
PREFIX = Path(os.environ["JUPYTER_PATH"]).parents[1]
IR_SPEC = Path("/usr/share/jupyter/kernels/ir")
HAVE_IR = shutil.which("R") is not None and (IR_SPEC / "kernel.json").is_file()
NO_IR = ("R and IRkernel are not installed: run scripts/kernels-env.sh as root "
         "(Debian's r-cran-irkernel)")

# A 2x2 PNG (red, green / blue, white), for the kernels that display a file's bytes.
PNG_B64 = ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP4z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==")


def install_audited(wrap: str, name: str) -> None:
    """`jupyter-audit install --wrap WRAP --name NAME` into the suite's prefix, recording
    to the suite's collector: what an admin runs, with no transport flag."""
    env = {**os.environ, "VIRTUAL_ENV": sys.prefix}
    subprocess.run(
        [str(BIN), "install", "--wrap", wrap, "--name", name, "--prefix", str(PREFIX),
         "--socket", os.environ["JUPYTER_AUDIT_TEST_SOCKET"],
         "--config", os.environ["JUPYTER_AUDIT_TEST_CONFIG"]],
        check=True, capture_output=True, env=env, timeout=60,
    )


def _install_kernelspecs() -> None:
    """At import, before jupyter_kernel_test's classes look their kernels up: bash_kernel's
    own spec (its installer, into the suite's prefix), then the audited specs. xeus-python's
    spec comes with its wheel (sys.prefix), IRkernel's with the Debian package."""
    if not BIN.is_file():
        return  # conftest stops the session with the reason
    subprocess.run([sys.executable, "-m", "bash_kernel.install", "--prefix", str(PREFIX)],
                   check=True, capture_output=True, timeout=60)
    install_audited("xpython", "xpython-audited")
    install_audited("bash", "bash-audited")
    if HAVE_IR:
        install_audited("ir", "ir-audited")


_install_kernelspecs()


# --- conformance: jupyter_kernel_test, direct and audited ----------------------------


class XeusPythonSamples:
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('to stderr', file=sys.stderr)"
    code_generate_error = "raise ValueError('on purpose')"
    code_execute_result = [{"code": "6 * 7", "result": "42"}, {"code": "'a' * 3", "result": "'aaa'"}]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>hi</b>'))",
         "mime": "text/html"},
        {"code": "import base64; from IPython.display import Image, display; "
                 f"display(Image(data=base64.b64decode('{PNG_B64}'), format='png'))",
         "mime": "image/png"},
    ]
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x * 2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x += 1"]
    invalid_code_samples = ["import = 7q"]
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"
    code_page_something = "zip?"
    # Not "range": like ipykernel, xeus-python numbers the current session 0, which
    # jupyter_kernel_test 0.7 does not expect; not "search": xeus-python 0.19 ignores
    # `unique` (both fail the same way directly and audited).
    supported_history_operations = ("tail",)


class IRSamples:
    language_name = "R"
    file_extension = ".r"
    code_hello_world = 'cat("hello, world\\n")'
    code_stderr = 'message("to stderr")'
    code_generate_error = 'stop("on purpose")'
    # IRkernel 1.3 shows a cell's value as display_data, never execute_result: so the
    # value is a display sample here, and there is no execute_result (nor history) test.
    code_display_data = [
        {"code": "6 * 7", "mime": "text/plain"},
        {"code": 'IRdisplay::display_html("<b>hi</b>")', "mime": "text/html"},
        {"code": f'IRdisplay::display_png(base64enc::base64decode("{PNG_B64}"))',
         "mime": "image/png"},
    ]
    completion_samples = [{"text": "seq_le", "matches": {"seq_len"}}]
    complete_code_samples = ["1", 'print("hello, world")', "f <- function(x) { x * 2 }"]
    incomplete_code_samples = ['print("hello', "f <- function(x) {"]
    invalid_code_samples = ["1 +* 2"]
    code_inspect_sample = "seq_len"
    code_clear_output = "IRdisplay::clear_output()"
    code_page_something = "?seq_len"


class BashSamples:
    language_name = "bash"
    file_extension = ".sh"
    code_hello_world = "echo 'hello, world'"
    code_generate_error = "(exit 3)"
    # bash_kernel runs bash on one pty: stderr arrives as stdout, so no stderr test.
    code_display_data = [
        {"code": "echo '<b>hi</b>' | displayHTML", "mime": "text/html"},
        {"code": f"echo '{PNG_B64}' | base64 -d | display", "mime": "image/png"},
    ]
    completion_samples = [{"text": "ech", "matches": {"echo"}}]
    # bash_kernel has no execute_result, is_complete, inspect, pager or history: not tested.


@pytest.mark.timeout(300)
class TestXeusPythonDirect(XeusPythonSamples, jkt.KernelTests):
    kernel_name = "xpython"


@pytest.mark.timeout(300)
class TestXeusPythonAudited(XeusPythonSamples, jkt.KernelTests):
    kernel_name = "xpython-audited"


@pytest.mark.skipif(not HAVE_IR, reason=NO_IR)
@pytest.mark.timeout(300)
class TestIRDirect(IRSamples, jkt.KernelTests):
    kernel_name = "ir"


@pytest.mark.skipif(not HAVE_IR, reason=NO_IR)
@pytest.mark.timeout(300)
class TestIRAudited(IRSamples, jkt.KernelTests):
    kernel_name = "ir-audited"


@pytest.mark.timeout(300)
class TestBashDirect(BashSamples, jkt.KernelTests):
    kernel_name = "bash"


@pytest.mark.timeout(300)
class TestBashAudited(BashSamples, jkt.KernelTests):
    kernel_name = "bash-audited"


# --- a notebook through nbclient: direct and audited agree, and it is on the record ----

# Per kernel: (direct name, audited name, cells). A cell tagged raises-exception must
# end in an error; "comm" marks the cell whose comm_open must be on the record.
NOTEBOOKS = {
    "xeus-python": ("xpython", "xpython-audited", [
        ("print('notebook TOKEN')\nprint('second line')", []),
        ("import sys\nprint('to stderr', file=sys.stderr)\nprint('to stdout')", []),
        ("import base64\nfrom IPython.display import Image, display\n"
         f"display(Image(data=base64.b64decode('{PNG_B64}'), format='png'))", []),
        ("from IPython.display import HTML\nHTML('<i>rich</i>')", []),
        ("value = 6 * 7\nvalue", []),
        ("import ipywidgets\nipywidgets.IntSlider(value=7, max=50)", ["comm"]),
        ("raise ValueError('intended failure')", ["raises-exception"]),
    ]),
    "IRkernel": ("ir", "ir-audited", [
        ('cat("notebook TOKEN\\n")\ncat("second line\\n")', []),
        ('message("to stderr")\ncat("to stdout\\n")', []),
        (f'IRdisplay::display_png(base64enc::base64decode("{PNG_B64}"))', []),
        ("options(repr.plot.width = 3, repr.plot.height = 3)\nplot(1:10)", []),
        ("value <- 6 * 7\nvalue", []),
        ("data.frame(x = 1:2, y = c('a', 'b'))", []),
        ('stop("intended failure")', ["raises-exception"]),
    ]),
    "bash_kernel": ("bash", "bash-audited", [
        ("echo 'notebook TOKEN'\necho 'second line'", []),
        ("ls /nonexistent-dir-for-the-test; echo 'after the error'", []),
        (f"echo '{PNG_B64}' | base64 -d | display", []),
        ("echo '<i>rich</i>' | displayHTML", []),
        ("(exit 3)", ["raises-exception"]),
    ]),
}


def notebook_of(cells: list[tuple[str, list[str]]], token: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source.replace("TOKEN", token))
        cell.metadata["tags"] = list(tags)
        nb.cells.append(cell)
    return nb


def run_notebook(nb: nbformat.NotebookNode, kernel_name: str, workdir: Path) -> nbformat.NotebookNode:
    NotebookClient(nb, kernel_name=kernel_name, timeout=120, startup_timeout=60,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return nb


def check_on_the_record(nb: nbformat.NotebookNode, store: Path) -> None:
    """Every cell of an audited run is on the record: its request with the exact code,
    execute_input, execute_reply, and what it displayed (images by their hash)."""
    first = nb.cells[0].source

    def session_of(records: list[dict]) -> str | None:
        for r in records:
            if action(r) == "execute_request" and field(r, "jupyter.code") == first:
                return field(r, "jupyter.session_id")
        return None

    records = wait_for_records(
        store,
        lambda rs: any(action(r) == "session_end" and field(r, "jupyter.session_id")
                       == session_of(rs) for r in rs),
        "the notebook's session, to its end",
    )
    session = session_of(records)
    mine = [r for r in records if field(r, "jupyter.session_id") == session]
    listing = describe(mine)
    for index, cell in enumerate(nb.cells):
        requests = [r for r in mine if action(r) == "execute_request"
                    and field(r, "jupyter.code") == cell.source]
        assert len(requests) == 1, f"cell {index}: its execute_request\n{listing}"
        outputs = children(mine, field(requests[0], "jupyter.msg_id"))
        kinds = [action(o) for o in outputs]
        assert kinds.count("execute_input") == 1 and kinds.count("execute_reply") == 1, kinds
        for name in ("stdout", "stderr"):
            shown = "".join(o.text for o in cell.outputs
                            if o.output_type == "stream" and o.name == name)
            recorded = "".join(field(o, "jupyter.text") for o in outputs
                               if action(o) == "stream" and field(o, "jupyter.stream") == name)
            assert recorded == shown, f"cell {index} {name}: {recorded!r} != {shown!r}"
        shown_errors = [(o.ename, o.evalue) for o in cell.outputs if o.output_type == "error"]
        recorded_errors = [(field(o, "jupyter.ename"), field(o, "jupyter.evalue"))
                           for o in outputs if action(o) == "error"]
        assert recorded_errors == shown_errors, f"cell {index}"
        shown_displays = [o for o in cell.outputs
                          if o.output_type in ("display_data", "execute_result")]
        recorded_displays = [o for o in outputs
                             if action(o) in ("display_data", "execute_result")]
        assert [action(o) for o in recorded_displays] == [o.output_type for o in shown_displays]
        for seen, kept in zip(shown_displays, recorded_displays):
            for mime, value in seen.data.items():
                stored = field(kept, "jupyter.data", {}).get(mime)
                if mime.startswith("image/") and mime != "image/svg+xml":
                    raw = base64.b64decode(value)
                    assert stored == {"sha256": hashlib.sha256(raw).hexdigest(),
                                      "size": len(raw)}, f"cell {index} {mime}"
                elif isinstance(value, str):
                    assert stored == value, f"cell {index} {mime}"
        if "comm" in cell.metadata["tags"]:
            opened = [o for o in outputs if action(o) == "comm_open"]
            assert opened and field(opened[0], "jupyter.target_name") == "jupyter.widget", kinds


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kernel", sorted(NOTEBOOKS))
def test_a_notebook_runs_the_same_audited_and_is_on_the_record(kernel, suite_store, tmp_path):
    direct, audited, cells = NOTEBOOKS[kernel]
    if direct == "ir" and not HAVE_IR:
        pytest.skip(NO_IR)
    notebook = notebook_of(cells, uuid.uuid4().hex)
    expected = run_notebook(copy.deepcopy(notebook), direct, tmp_path)
    for cell, (_, tags) in zip(expected.cells, cells):
        assert cell.outputs, f"no output in the direct run of {cell.source!r}"
        if "raises-exception" in tags:
            assert cell.outputs[-1].output_type == "error", cell.outputs
    got = run_notebook(copy.deepcopy(notebook), audited, tmp_path)
    diff = first_difference(normalise(got), normalise(expected))
    assert diff is None, f"{kernel}: the audited run differs at {diff}"
    check_on_the_record(got, suite_store)


# --- interrupt and restart --------------------------------------------------------------

# Per kernel: (direct name, audited name, a cell that runs until interrupted, a cell that
# sets a variable, a cell that prints whether the variable is still set: "set"/"unset").
# xeus-python 0.19 (PyPI wheel) cannot interrupt a cell, directly either: SIGINT (its
# spec's interrupt mode) ends the kernel, and an interrupt_request lets the cell run on.
LIFECYCLE = {
    "xeus-python": ("xpython", "xpython-audited", None,
                    "marker = 1", "print('set' if 'marker' in globals() else 'unset')"),
    "IRkernel": ("ir", "ir-audited", "Sys.sleep(120)  # TOKEN",
                 "marker <- 1", 'cat(if (exists("marker")) "set" else "unset", "\\n")'),
    "bash_kernel": ("bash", "bash-audited", "sleep 120  # TOKEN",
                    "MARKER=1", 'if [ -n "${MARKER:-}" ]; then echo set; else echo unset; fi'),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("audited", [False, True], ids=["direct", "audited"])
@pytest.mark.parametrize("kernel", sorted(LIFECYCLE))
def test_interrupt_and_restart(kernel, audited, kernels, suite_store):
    direct_name, audited_name, long_cell, set_cell, check_cell = LIFECYCLE[kernel]
    if direct_name == "ir" and not HAVE_IR:
        pytest.skip(NO_IR)
    km, kc = kernels.start(audited_name if audited else direct_name)
    if long_cell is not None:
        interrupt_a_running_cell(km, kc, long_cell.replace("TOKEN", uuid.uuid4().hex),
                                 suite_store if audited else None)

    reply, msgs = execute(kc, set_cell)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert stdout_of(execute(kc, check_cell)[1]).strip() == "set"

    km.restart_kernel()
    kc = kernels.client(km)
    reply, msgs = execute(kc, check_cell)
    assert stdout_of(msgs).strip() == "unset", "the restarted kernel starts afresh"


def interrupt_a_running_cell(km, kc, long_cell: str, store: Path | None) -> None:
    """Interrupts long_cell while it runs; with a store, the interrupt must be on the
    record in the cell's session."""
    msg_id = kc.execute(long_cell)
    # Interrupt once the cell runs (its execute_input is out), not before it starts.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        msg = kc.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "execute_input":
            break
    time.sleep(0.5)  # let the kernel enter the sleep (liveness only)
    km.interrupt_kernel()
    reply = reply_for(kc.get_shell_msg, msg_id)
    assert reply["content"]["status"] in ("error", "abort"), reply["content"]
    # IRkernel drops shell requests that arrive before the interrupted cell's idle status
    # (directly too): wait for it, as a frontend that shows the busy state does.
    iopub_for(kc, msg_id)
    if store is None:
        return
    records = wait_for_records(
        store,
        lambda rs: any(action(r) == "execute_request" and field(r, "jupyter.code") == long_cell
                       for r in rs),
        "the interrupted cell",
    )
    session = next(field(r, "jupyter.session_id") for r in records
                   if field(r, "jupyter.code") == long_cell)
    wait_for_records(
        store,
        lambda rs: any(action(r) == "interrupt" and field(r, "jupyter.session_id") == session
                       for r in rs),
        "the interrupt, in the interrupted cell's session",
    )


def test_xeus_python_starts_audited_under_a_long_xdg_runtime_dir(kernels, tmp_path):
    """A desktop session's $XDG_RUNTIME_DIR (/run/user/UID) makes ipc endpoints longer
    than xeus accepts; the proxy then puts its private directory in the temp dir."""
    runtime = tmp_path / "run" / "user" / "1000"
    runtime.mkdir(parents=True, mode=0o700)
    km = KernelManager(kernel_name="xpython-audited")
    kernels.managers.append(km)
    km.start_kernel(env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    kc = kernels.client(km)
    reply, msgs = execute(kc, "print(6 * 7)")
    assert reply["content"]["status"] == "ok", reply["content"]
    assert stdout_of(msgs) == "42\n"
    assert list(runtime.iterdir()) == [], "nothing of the kernel's under the long directory"
