#!/usr/bin/env python3
"""How fast collectors forward to PostgreSQL, variant against variant, alternately in
one run on one throwaway cluster with PostgreSQL's default durability (fsync,
synchronous_commit, full_page_writes on).

    scripts/forward-speed.py --stores DIR [--binary NAME=PATH ...] [--rounds 3]
        [--forwarders 1,4] [--schema full|trigram|no-indexes]

DIR holds stores (store-*/ as benches/forward_records writes them). Each measurement
copies the stores it needs, makes a new database with `postgres init` (plus the code
search trigram index for `--schema trigram`, minus every review index for
`no-indexes`), starts one forwarding collector per store and times until PostgreSQL
holds every record they held. Prints records/s per binary, schema and forwarder count.
Not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from pgcluster import make_cluster  # noqa: E402

TRIGRAM = ("CREATE EXTENSION IF NOT EXISTS pg_trgm; CREATE INDEX IF NOT EXISTS records_code "
           "ON jupyter_audit.records USING gin (line gin_trgm_ops) "
           "WHERE action = 'execute_request'")
REVIEW_INDEXES = ["records_time", "records_user_name", "records_user_id", "records_session",
                  "records_kernel", "records_code"]


def stored_records(store: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in (store / "segments").glob("*.jsonl"))


FORWARDER_CPU = [0.0]


def postgres_cpu(cluster) -> float:
    """CPU seconds of the server's processes so far (the postmaster, its reaped children
    and the live ones)."""
    ticks = os.sysconf("SC_CLK_TCK")
    pid = int((cluster.data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ppid = int(fields[1])
        if int(proc.name) == pid:
            total += sum(int(f) for f in fields[11:15]) / ticks
        elif ppid == pid:
            total += sum(int(f) for f in fields[11:13]) / ticks
    return total


def measure(cluster, binary: str, stores: list[Path], schema: str, work: Path,
            number: int) -> float:
    db = f"speed{number}"
    cluster.psql(f"CREATE DATABASE {db}")
    subprocess.run([binary, "postgres", "init", "--url", cluster.url(db=db), "--writer",
                    "ja_writer", "--reader", "ja_reader"], check=True, capture_output=True)
    psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(cluster.sockets), "-p",
            str(cluster.port), "-U", "postgres", "-d", db, "-c"]
    if schema == "trigram":
        subprocess.run(psql + [TRIGRAM], check=True, capture_output=True)
    if schema == "no-indexes":
        for index in REVIEW_INDEXES:
            subprocess.run(psql + [f"DROP INDEX IF EXISTS jupyter_audit.{index}"], check=True,
                           capture_output=True)
    copies = []
    for store in stores:
        copy = work / f"{number}-{store.name}"
        shutil.copytree(store, copy)
        copies.append(copy)
    expected = sum(stored_records(c) for c in copies)
    collectors = []
    server_cpu = postgres_cpu(cluster)
    start = time.monotonic()
    for i, copy in enumerate(copies):
        collectors.append(subprocess.Popen(
            [binary, "collector", "--store", str(copy), "--socket", str(work / f"{number}-{i}.sock"),
             "--forward-postgres", cluster.url("ja_writer", db=db)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(work / f"{number}-{i}.log", "ab")))
    try:
        while True:
            time.sleep(0.2)
            held = int(subprocess.run(psql[:-1] + ["-At", "-c",
                       "SELECT count(*) FROM jupyter_audit.records"], check=True,
                       capture_output=True, text=True).stdout)
            # The collectors add a few records of their own (collector_start, …).
            if held >= expected:
                break
            if any(c.poll() is not None for c in collectors):
                raise SystemExit(f"a collector exited; see {work}/{number}-*.log")
        elapsed = time.monotonic() - start
    finally:
        for c in collectors:
            c.terminate()
        for c in collectors:
            c.wait(timeout=60)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        forwarder_cpu = children.ru_utime + children.ru_stime - FORWARDER_CPU[0]
        FORWARDER_CPU[0] += forwarder_cpu
    cluster.psql("CHECKPOINT")
    print(f"    CPU s: collectors {forwarder_cpu:.1f}, PostgreSQL {postgres_cpu(cluster) - server_cpu:.1f}; "
          f"{elapsed:.1f} s elapsed", flush=True)
    for copy in copies:
        shutil.rmtree(copy)
    cluster.psql(f"DROP DATABASE {db}")
    return expected / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", type=Path, required=True)
    parser.add_argument("--binary", action="append", default=[],
                        help="NAME=PATH (default: this checkout's release build)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--forwarders", default="1,4")
    parser.add_argument("--schema", action="append", default=[],
                        choices=["full", "trigram", "no-indexes"])
    args = parser.parse_args()
    binaries = [b.split("=", 1) for b in args.binary] or [
        ["this", str(REPO / "target" / "release" / "jupyter-audit")]]
    schemas = args.schema or ["full"]
    counts = [int(n) for n in args.forwarders.split(",")]
    all_stores = sorted(p for p in args.stores.glob("store-*") if p.is_dir())
    work = Path(tempfile.mkdtemp(prefix="ja-speed-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    cluster = make_cluster(work / "pg")
    with open(cluster.data / "postgresql.conf", "a") as conf:
        conf.write("fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n")
    cluster.start()
    results: dict[tuple[str, str, int], list[float]] = {}
    number = 0
    try:
        for _round in range(args.rounds):
            for count in counts:
                for schema in schemas:
                    for name, path in binaries:
                        number += 1
                        rate = measure(cluster, path, all_stores[:count], schema, work, number)
                        results.setdefault((name, schema, count), []).append(rate)
                        print(f"round {_round + 1}: {name:10} {schema:10} {count:2} forwarder(s) "
                              f"{rate:9,.0f} records/s", flush=True)
    finally:
        cluster.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)
    print()
    for (name, schema, count), rates in sorted(results.items()):
        rates.sort()
        print(f"{name:10} {schema:10} {count:2} forwarder(s): median {rates[len(rates) // 2]:9,.0f}"
              f" records/s (runs: {', '.join(f'{r:,.0f}' for r in rates)})")


if __name__ == "__main__":
    main()
