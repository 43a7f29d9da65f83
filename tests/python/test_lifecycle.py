"""Kernel lifecycle through the proxy: interrupt, restart, shutdown, and dying together."""

from __future__ import annotations

import os
import signal
import time

import pytest

from helpers import (
    AUDITED,
    AUDITED_MESSAGE,
    DIRECT,
    DIRECT_MESSAGE,
    TIMEOUT,
    iopub_for,
    kernel_pid,
    process_gone,
    reply_for,
    run_ok,
    wait_until,
)

# Generous liveness bounds; timings are never pass/fail criteria otherwise.
INTERRUPT_TIMEOUT = 10
DEATH_TIMEOUT = 10


@pytest.mark.parametrize("name", [DIRECT, DIRECT_MESSAGE, AUDITED, AUDITED_MESSAGE])
def test_interrupt(kernels, name):
    km, kc = kernels.start(name)
    msg_id = kc.execute("import time\nprint('sleeping', flush=True)\ntime.sleep(60)")
    # Interrupt only once the cell really runs.
    while True:
        msg = kc.get_iopub_msg(timeout=TIMEOUT)
        if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
            assert "sleeping" in msg["content"]["text"]
            break
    km.interrupt_kernel()
    reply = reply_for(kc.get_shell_msg, msg_id, timeout=INTERRUPT_TIMEOUT)
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    iopub_for(kc, msg_id)
    assert run_ok(kc, "print(6 * 7)") == "42\n"
    assert km.is_alive()


def test_interrupt_while_idle_is_harmless(kernels, kernel_name):
    km, kc = kernels.start(kernel_name)
    km.interrupt_kernel()
    assert run_ok(kc, "print('fine')") == "fine\n"


@pytest.mark.timeout(120)
def test_restart(kernels, kernel_name):
    km, kc = kernels.start(kernel_name)
    info_before = km.get_connection_info()
    run_ok(kc, "state = 'before restart'")
    pid_before = kernel_pid(kc)

    km.restart_kernel(now=False)
    kc.wait_for_ready(timeout=60)

    info_after = km.get_connection_info()
    for key in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port", "key"):
        assert info_after[key] == info_before[key], key
    assert kernel_pid(kc) != pid_before
    assert wait_until(lambda: process_gone(pid_before), DEATH_TIMEOUT)
    assert run_ok(kc, "print('state' in dir())") == "False\n"
    assert run_ok(kc, "print(1 + 1)") == "2\n"


def test_shutdown_request_ends_the_process(kernels, kernel_name):
    """A client's shutdown_request is answered, and the kernel process exits by itself."""
    km, kc = kernels.start(kernel_name)
    proc = km.provisioner.process
    pid = kernel_pid(kc)
    msg_id = kc.shutdown()
    reply = reply_for(kc.get_control_msg, msg_id)
    assert reply["msg_type"] == "shutdown_reply"
    assert reply["content"]["status"] == "ok"
    assert reply["content"]["restart"] is False
    assert wait_until(lambda: proc.poll() is not None, DEATH_TIMEOUT), "process still running"
    assert proc.returncode == 0
    assert wait_until(lambda: process_gone(pid), DEATH_TIMEOUT)


def test_graceful_shutdown_by_manager(kernels, kernel_name):
    """KernelManager.shutdown_kernel() finishes without having to kill anything."""
    km, kc = kernels.start(kernel_name)
    proc = km.provisioner.process
    pid = kernel_pid(kc)
    km.shutdown_kernel(now=False)
    assert proc.poll() == 0, f"exit status {proc.returncode} (negative: killed by a signal)"
    assert wait_until(lambda: process_gone(pid), DEATH_TIMEOUT)


def test_sigkill_proxy_kills_kernel(kernels, kernel_name):
    km, kc = kernels.start(kernel_name)
    pid = kernel_pid(kc)
    proc = km.provisioner.process
    if kernel_name == AUDITED:
        assert pid != proc.pid, "the code should run in the real kernel, not the proxy"
    proc.kill()
    proc.wait(timeout=DEATH_TIMEOUT)
    assert wait_until(lambda: process_gone(pid), DEATH_TIMEOUT), f"kernel {pid} outlived SIGKILL"


def test_kernel_death_ends_proxy(kernels):
    km, kc = kernels.start(AUDITED)
    pid = kernel_pid(kc)
    assert pid != km.provisioner.process.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not km.is_alive(), DEATH_TIMEOUT), "proxy outlived its kernel"
    assert km.provisioner.process.poll() is not None


def test_kernel_exit_from_code_ends_proxy(kernels):
    """The kernel leaves on its own (os._exit): the proxy follows so Jupyter can restart."""
    km, kc = kernels.start(AUDITED)
    pid = kernel_pid(kc)
    kc.execute("import os; os._exit(3)")
    assert wait_until(lambda: process_gone(pid), DEATH_TIMEOUT)
    assert wait_until(lambda: not km.is_alive(), DEATH_TIMEOUT), "proxy outlived its kernel"


def test_proxy_survives_sigint_to_process_group(kernels):
    """jupyter_client interrupts by SIGINT to the process group; the proxy must live on."""
    km, kc = kernels.start(AUDITED)
    proc = km.provisioner.process
    os.killpg(os.getpgid(proc.pid), signal.SIGINT)
    assert run_ok(kc, "print('alive')") == "alive\n"
    assert proc.poll() is None


def test_a_killed_proxys_private_directory_is_removed_by_the_next_start(
        kernels, monkeypatch, tmp_path):
    """SIGKILL (`shutdown_kernel(now=True)`) leaves the proxy's private directory behind;
    the next audited kernel of the same user removes it, and never a live one's."""
    base = tmp_path / "tmp"
    base.mkdir(mode=0o700)
    monkeypatch.setenv("TMPDIR", str(base))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    km, kc = kernels.start(AUDITED)
    (killed,) = base.glob("ja-*")
    km.provisioner.process.kill()
    km.provisioner.process.wait(timeout=DEATH_TIMEOUT)
    assert killed.is_dir(), "what a killed proxy leaves"
    # Older than the sweep's minimum age (a directory that young may not be locked yet).
    long_ago = time.time() - 300
    os.utime(killed, (long_ago, long_ago))

    live_km, live_kc = kernels.start(AUDITED)
    assert not killed.exists()
    (live,) = base.glob("ja-*")
    os.utime(live, (long_ago, long_ago))
    third_km, third_kc = kernels.start(AUDITED)
    assert live.is_dir(), "a live proxy's directory is kept"
    assert run_ok(live_kc, "print('still here')") == "still here\n"
    for manager in (live_km, third_km):
        manager.shutdown_kernel(now=False)
    assert list(base.glob("ja-*")) == [], "a proxy that ends removes its own"
