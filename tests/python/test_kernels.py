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
from nbclient import NotebookClient

from helpers import BIN, KernelPool, execute, stdout_of
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
    # xeus-python answers history_request with an empty history: no history samples.
    # Its pager (`zip?`) goes to a payload jupyter_kernel_test does not read: no pager test.


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


class BashSamples:
    language_name = "bash"
    file_extension = ".sh"
    code_hello_world = "echo 'hello, world'"
    # bash_kernel runs bash on one pty: stderr arrives as stdout, so no stderr test.
    code_display_data = [
        {"code": "echo '<b>hi</b>' | displayHTML", "mime": "text/html"},
        {"code": f"echo '{PNG_B64}' | base64 -d | display", "mime": "image/png"},
    ]
    completion_samples = [{"text": "ech", "matches": {"echo"}}]
    # bash_kernel has no execute_result, is_complete, inspect or history: not tested.


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
