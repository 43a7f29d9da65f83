"""Load: several audited kernels at once, recording to one collector of their own.

Every record the proxies send is stored (nothing lost, no audit_gap), the chain verifies,
and each session's records are in the order its cells ran. No timings are asserted.
"""

from __future__ import annotations

import threading

from helpers import KernelPool, run_ok
from test_audit import (  # noqa: F401  (collectors is a fixture)
    LoggedKernel,
    action,
    audited_kernelspec,
    collectors,
    describe,
    field,
    own_collector,
    read_store,
    seq,
    verify,
    verify_output,
    wait_for_records,
)

KERNELS = 8
CELLS = 20
LINES = 3


def cell_code(kernel: int, cell: int) -> str:
    return f"for line in range({LINES}):\n    print('k{kernel} c{cell} line', line)"


def cell_output(kernel: int, cell: int) -> str:
    return "".join(f"k{kernel} c{cell} line {line}\n" for line in range(LINES))


def test_concurrent_kernels_lose_nothing_and_keep_order(collectors, tmp_dir):
    collector = own_collector(collectors, tmp_dir)
    spec = audited_kernelspec(collector.socket)
    pool = KernelPool()
    try:
        # Started one after another (jupyter_client's port picking is not thread-safe);
        # the cells run concurrently.
        kernels = [LoggedKernel(pool, spec, tmp_dir) for _ in range(KERNELS)]
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                for cell in range(CELLS):
                    out = run_ok(kernels[i].kc, cell_code(i, cell))
                    assert out == cell_output(i, cell), out
            except BaseException as error:  # reported below, with the proxy's log
                errors.append(RuntimeError(f"kernel {i}: {error!r}\n{kernels[i].log()}"))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(KERNELS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, "\n".join(map(str, errors))
        for kernel in kernels:  # gracefully: each proxy records its session_end
            kernel.kc.stop_channels()
            kernel.km.shutdown_kernel()

        wait_for_records(
            collector.store,
            lambda rs: sum(action(r) == "session_end" for r in rs) == KERNELS,
            f"{KERNELS} sessions ended", collector.log())
        collector.stop()
    finally:
        pool.shutdown_all()
    records = read_store(collector.store)
    listing = describe(records)
    assert not [r for r in records if action(r) in ("audit_gap", "audit_bypassed",
                                                    "execution_refused")], listing
    sessions = {field(r, "jupyter.session_id") for r in records
                if action(r) == "session_start"}
    assert len(sessions) == KERNELS, listing
    for session in sessions:
        mine = [r for r in records if field(r, "jupyter.session_id") == session]
        # Which kernel this session is: from its first cell's code.
        first = next(r for r in mine if action(r) == "execute_request"
                     and "line" in field(r, "jupyter.code", ""))
        k = int(field(first, "jupyter.code").split("'k")[1].split(" ")[0])
        # Each cell: request, its input, its whole output, its reply, in that order and
        # before the next cell's request.
        expected = []
        for cell in range(CELLS):
            expected += [("execute_request", cell_code(k, cell)),
                         ("execute_input", cell_code(k, cell)),
                         ("stream", cell_output(k, cell)), ("execute_reply", None)]
        # Outputs (iopub) and the reply (shell) travel on different sockets, so they may
        # reach the proxy in either order; each stays with its cell, after its request
        # and before the next cell's request, and iopub keeps its own order.
        got = []
        cell_ids: dict[str, int] = {}
        for r in mine:
            if action(r) == "execute_request" and "line" in field(r, "jupyter.code", ""):
                cell_ids[field(r, "jupyter.msg_id")] = len(cell_ids)
                got.append([("execute_request", field(r, "jupyter.code"))])
            elif field(r, "jupyter.parent_msg_id") in cell_ids:
                cell = cell_ids[field(r, "jupyter.parent_msg_id")]
                assert cell == len(got) - 1, f"a record of cell {cell} after the next request"
                if action(r) == "execute_input":
                    got[cell].append(("execute_input", field(r, "jupyter.code")))
                elif action(r) == "stream":
                    last = got[cell][-1]
                    if last[0] == "stream":  # one print may come as several messages
                        got[cell][-1] = ("stream", last[1] + field(r, "jupyter.text"))
                    else:
                        got[cell].append(("stream", field(r, "jupyter.text")))
                elif action(r) == "execute_reply":
                    got[cell].append(("execute_reply", None))
        # The reply's place among the outputs is not fixed: put it last.
        got = [item for cell in got for item in sorted(cell, key=lambda x: x[0] == "execute_reply")]
        assert got == expected, f"session {session} (kernel {k}):\n{describe(mine, 200)}"
        assert [action(r) for r in mine if action(r) == "session_end"] == ["session_end"]
        # The store's sequence is the order of arrival: strictly increasing.
        sequences = [seq(r) for r in mine]
        assert sequences == sorted(sequences)
    assert [seq(r) for r in records] == list(range(1, len(records) + 1))
    result = verify(collector.store)
    assert result.returncode == 0, verify_output(result)
