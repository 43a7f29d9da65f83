"""Load figures (not a test): N audited kernels at once, each running cells with output,
all recording to the bench's collector. Prints kernels started, cells run, records sent
(the records each cell must produce) and stored, records lost (missing or counted in
audit_gap), execute round trip p50/p99 (includes the write-ahead ack) and proxy RSS per
kernel. Run by `scripts/bench.sh --only load`; --kernels 0 picks N from free memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from jupyter_client import BlockingKernelClient, KernelManager

PER_KERNEL_MIB = 90  # ipykernel ~70 MiB + proxy ~10 MiB + headroom


def mem_available_mib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def read_store(store: Path) -> list[dict]:
    records = []
    for segment in sorted((store / "segments").glob("*.jsonl")):
        for line in segment.read_bytes().split(b"\n")[:-1]:
            records.append(json.loads(line))
    return records


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--kernel-name", default="bench-audited")
    parser.add_argument("--kernels", type=int, default=0)
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--lines", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = args.kernels or max(1, min(64, (mem_available_mib() // 2) // PER_KERNEL_MIB))
    if args.quick:
        n, args.cells = min(n, 2), 2
    print(f"load: starting {n} audited kernels ({mem_available_mib()} MiB available)")
    kms, kcs, started = [], [], time.monotonic()
    for _ in range(n):
        km = KernelManager(kernel_name=args.kernel_name)
        try:
            km.start_kernel()
            kc = BlockingKernelClient()
            kc.load_connection_file(km.connection_file)
            kc.start_channels()
            kc.wait_for_ready(timeout=120)
        except Exception as error:  # the machine is full: report how many started
            print(f"load: kernel {len(kms) + 1} failed to start: {error!r}")
            break
        kms.append(km)
        kcs.append(kc)
    print(f"load: {len(kms)} kernels started in {time.monotonic() - started:.1f} s")
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def work(i: int, kc: BlockingKernelClient) -> None:
        for cell in range(args.cells):
            code = f"for line in range({args.lines}):\n    print('k{i} c{cell} line', line)"
            t0 = time.perf_counter()
            reply = kc.execute_interactive(code, timeout=120, output_hook=lambda m: None)
            with lock:
                latencies.append(time.perf_counter() - t0)
                if reply["content"]["status"] != "ok":
                    failures.append(f"k{i} c{cell}: {reply['content']}")

    t0 = time.monotonic()
    threads = [threading.Thread(target=work, args=(i, kc)) for i, kc in enumerate(kcs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - t0
    proxies = [km.provisioner.process.pid for km in kms]
    rss = [rss_mib(pid) for pid in proxies]
    for kc in kcs:
        kc.stop_channels()
    for km in kms:
        km.shutdown_kernel()
    files = {str(km.connection_file) for km in kms}

    deadline = time.monotonic() + 60
    while True:
        records = read_store(args.store)
        sessions = {r["jupyter"]["session_id"] for r in records
                    if r["event"]["action"] == "session_start"
                    and r["jupyter"].get("connection_file") in files}
        mine = [r for r in records if r.get("jupyter", {}).get("session_id") in sessions]
        ended = sum(r["event"]["action"] == "session_end" for r in mine)
        if ended == len(kms) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    cells = len(kms) * args.cells
    requests = {r["jupyter"]["msg_id"] for r in mine if r["event"]["action"] == "execute_request"
                and "line" in r["jupyter"].get("code", "")}
    by_parent: dict[str, set[str]] = {}
    for r in mine:
        if r["event"]["action"] in ("execute_input", "stream", "execute_reply"):
            by_parent.setdefault(r["jupyter"].get("parent_msg_id"), set()).add(
                r["event"]["action"])
    # Each cell must leave its request, execute_input, at least one stream and its reply.
    stored = len(requests) + sum(len(by_parent.get(msg_id, ())) for msg_id in requests)
    sent = cells * 4
    gap = sum(r["jupyter"].get("lost_records", 0) for r in mine
              if r["event"]["action"] == "audit_gap")
    lat = sorted(latencies)
    p = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000) if lat else (lambda q: 0)
    print(f"load: {cells} cells in {wall:.1f} s ({cells / wall:.0f} cells/s), "
          f"{len(failures)} failed")
    print(f"load: cell records sent {sent}, stored {stored}, lost {sent - stored + gap} "
          f"(audit_gap {gap}); all records of these sessions {len(mine)}, "
          f"sessions ended {ended}/{len(kms)}")
    print(f"load: execute round trip (includes the write-ahead ack) p50 {p(0.5):.1f} ms, "
          f"p99 {p(0.99):.1f} ms")
    if rss:
        print(f"load: proxy RSS per kernel after the cells: mean {statistics.mean(rss):.1f} MiB, "
              f"max {max(rss):.1f} MiB")
    for failure in failures[:5]:
        print(f"load: failed cell {failure}")
    return 0 if stored == sent and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
