"""The proxy hands memory back once output stops: after large outputs pass, a quiet
proxy's resident memory falls back near where it started (src/memory.rs trims the free
heap). Without the trim the freed output buffers stay resident (glibc keeps up to its
64 MiB trim threshold at the top of the single heap, and all free chunks below it)."""

from __future__ import annotations

from queue import Empty

from helpers import KernelPool, proc_status_mib, reply_for, run_ok, wait_until
from test_audit import (
    LoggedKernel,
    audited_kernelspec,
    collectors,  # noqa: F401 (a fixture)
    own_collector,
)
from test_faults import stop_and_verify

CHUNK = 16 << 20
# Resident memory a quiet proxy may keep above its level before the output (measured:
# 13 MiB before, 77 peak, 13 quiet; with malloc_trim made a no-op by an LD_PRELOADed
# stub, 77 MiB stayed resident and this test failed).
KEPT_MIB = 24


def test_quiet_proxy_returns_memory_after_large_outputs(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(
            pool, audited_kernelspec(collector.socket, "--text-cap-bytes", "4096"), tmp_dir)
        kc = kernel.kc
        proxy_pid = kernel.km.provisioner.process.pid
        run_ok(kc, "print('warm')")
        before = proc_status_mib(proxy_pid, "VmRSS")
        # Several outputs of 16 MiB writes, all read: the proxy's buffers grow and are freed.
        for _ in range(4):
            msg_id = kc.execute(
                f"import sys\nblock = 'q' * {CHUNK}\n"
                "for i in range(8):\n    sys.stdout.write(block)\n    sys.stdout.flush()\n")
            while True:
                try:
                    msg = kc.get_iopub_msg(timeout=60)
                except Empty:
                    raise AssertionError(f"output stalled\n{kernel.log()}") from None
                if (msg["parent_header"].get("msg_id") == msg_id
                        and msg["msg_type"] == "status"
                        and msg["content"]["execution_state"] == "idle"):
                    break
            assert reply_for(kc.get_shell_msg, msg_id)["content"]["status"] == "ok"
        peak = proc_status_mib(proxy_pid, "VmHWM")
        # Otherwise the test could not tell trimming from no growth at all.
        assert peak > before + 2 * KEPT_MIB, f"the output did not grow the proxy: {peak:.0f} MiB"
        returned = wait_until(
            lambda: proc_status_mib(proxy_pid, "VmRSS") < before + KEPT_MIB, timeout=30)
        now = proc_status_mib(proxy_pid, "VmRSS")
        assert returned, (f"quiet proxy still holds {now:.0f} MiB (before the output "
                          f"{before:.0f}, peak {peak:.0f})\n{kernel.log()}")
        print(f"proxy RSS {before:.0f} MiB before, peak {peak:.0f}, quiet {now:.0f}")
    finally:
        pool.shutdown_all()
    stop_and_verify(collector)
