"""Test environment for the integration tests: private Jupyter directories and kernelspecs.

At import time (before any test module, so that jupyter_kernel_test classes and
KernelManager find them), this points every Jupyter and IPython directory at a fresh
temporary directory and writes the kernelspecs the tests use:

- python3-direct            ipykernel itself (the reference)
- python3-direct-message    ipykernel itself, interrupt_mode "message"
- python3-audited           ipykernel behind `jupyter-audit kernel` (interrupt by signal)
- python3-audited-message   the same, interrupt_mode "message"

The proxy binary is $JUPYTER_AUDIT_BIN, or target/release/jupyter-audit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import (
    AUDITED,
    AUDITED_MESSAGE,
    BIN,
    DIRECT,
    DIRECT_MESSAGE,
    KernelPool,
    proxy_argv,
)

_TMP = Path(tempfile.mkdtemp(prefix="jupyter-audit-tests-"))
STORE = _TMP / "store"
COLLECTOR_SOCKET = _TMP / "collector.sock"
_collector: subprocess.Popen | None = None


def _setup_environment() -> None:
    dirs = {
        "JUPYTER_PATH": _TMP / "share" / "jupyter",
        "JUPYTER_DATA_DIR": _TMP / "data",
        "JUPYTER_RUNTIME_DIR": _TMP / "runtime",
        "JUPYTER_CONFIG_DIR": _TMP / "config",
        "IPYTHONDIR": _TMP / "ipython",
    }
    for name, path in dirs.items():
        path.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(path)
    # Use the platformdirs layout (silences jupyter_core's migration warning).
    os.environ["JUPYTER_PLATFORM_DIRS"] = "1"
    os.environ.pop("JPY_SESSION_NAME", None)

    # One collector for the whole run; every audited kernel records to it.
    os.environ["JUPYTER_AUDIT_TEST_SOCKET"] = str(COLLECTOR_SOCKET)
    os.environ["JUPYTER_AUDIT_TEST_CONFIG"] = str(_TMP / "no-admin-config.toml")
    ipykernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    proxy = proxy_argv()
    specs = {
        DIRECT: {"argv": ipykernel},
        DIRECT_MESSAGE: {"argv": ipykernel, "interrupt_mode": "message"},
        AUDITED: {"argv": proxy + ipykernel, "interrupt_mode": "signal"},
        AUDITED_MESSAGE: {"argv": proxy + ipykernel, "interrupt_mode": "message"},
    }
    for name, spec in specs.items():
        spec_dir = dirs["JUPYTER_PATH"] / "kernels" / name
        spec_dir.mkdir(parents=True, exist_ok=True)
        spec = {"display_name": f"Python 3 ({name})", "language": "python", **spec}
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))


_setup_environment()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"jupyter-audit binary: {BIN}", f"jupyter test dirs: {_TMP}"]


def pytest_sessionstart(session: pytest.Session) -> None:
    global _collector
    if not (BIN.is_file() and os.access(BIN, os.X_OK)):
        pytest.exit(
            f"jupyter-audit binary not found at {BIN}: run `cargo build --release` "
            "or set JUPYTER_AUDIT_BIN",
            returncode=2,
        )
    _collector = subprocess.Popen(
        [str(BIN), "collector", "--store", str(STORE), "--socket", str(COLLECTOR_SOCKET)],
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not COLLECTOR_SOCKET.exists():
        if _collector.poll() is not None or time.monotonic() > deadline:
            pytest.exit(f"the test collector did not start (exit {_collector.poll()})", returncode=2)
        time.sleep(0.05)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _collector is not None and _collector.poll() is None:
        _collector.terminate()
        try:
            _collector.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _collector.kill()
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.fixture(scope="session")
def suite_store() -> Path:
    """The store the suite's collector writes (every audited kernel's records)."""
    return STORE


@pytest.fixture
def kernels():
    """Start kernels with `kernels.start(name)`; all are shut down at teardown."""
    pool = KernelPool()
    try:
        yield pool
    finally:
        pool.shutdown_all()


@pytest.fixture(params=[DIRECT, AUDITED])
def kernel_name(request) -> str:
    """The reference kernel and the audited one: a failure on both is the test's."""
    return request.param


@pytest.fixture
def tmp_dir():
    """A temporary directory that the kernel can write to (for marker files)."""
    path = Path(tempfile.mkdtemp(prefix="ja-test-", dir=_TMP))
    yield path
    shutil.rmtree(path, ignore_errors=True)
