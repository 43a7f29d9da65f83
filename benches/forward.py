"""The forward benchmark (`scripts/bench.sh --only forward`): many stores forwarded into
one PostgreSQL server, then the review queries on what arrived.

1. `cargo bench --bench forward_records` writes 16 stores x 200 000 records through the
   real store code (records shaped like a collector's, several users and sessions).
2. A throwaway cluster (tests/python/pgcluster.py) with PostgreSQL's default durability
   (fsync, synchronous_commit, full_page_writes on), `jupyter-audit postgres init`.
3. 16 collectors start at once on those stores with `--forward-postgres`: the figure is
   the aggregate records/s until PostgreSQL holds every generated record.
4. On the 3.2 M rows: `sessions --postgres --user U`, `log --postgres --session S` and
   code searches (`log --postgres --grep`) p95 over several users, sessions, patterns.

`--stores N --records M` for a smaller run; `--quick`: 2 stores x 5 000 records.
Not a test: the figures are printed with the targets, PASS/MISS informational.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))

from pgcluster import make_cluster  # noqa: E402

BIN = Path(os.environ.get("JUPYTER_AUDIT_BIN") or REPO / "target" / "release" / "jupyter-audit")


def run(*argv: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, **kwargs)


def generate(out: Path, stores: int, records: int) -> dict:
    result = run("cargo", "bench", "--quiet", "--bench", "forward_records", "--", "--out",
                 str(out), "--stores", str(stores), "--records", str(records), cwd=REPO)
    print(result.stdout.strip())
    return json.loads((out / "manifest.json").read_text())


def init_schema(cluster) -> None:
    init = subprocess.run([str(BIN), "postgres", "init", "--url", cluster.url(), "--writer",
                           "ja_writer", "--reader", "ja_reader"], capture_output=True, text=True)
    if init.returncode != 0 and "unrecognized subcommand" in init.stderr:
        # A binary without `postgres init`: the tables and indexes of the contract.
        schema = (REPO / "src" / "postgres" / "schema.rs").read_text()
        for name in ("TABLES", "INDEXES"):
            sql = re.search(rf'pub const {name}: &str = r#"(.*?)"#;', schema, re.S).group(1)
            cluster.psql(sql)
        cluster.psql("CREATE ROLE ja_reader LOGIN; CREATE ROLE ja_writer LOGIN; "
                     "GRANT USAGE ON SCHEMA jupyter_audit TO ja_reader, ja_writer; "
                     "GRANT SELECT ON ALL TABLES IN SCHEMA jupyter_audit TO ja_reader, ja_writer; "
                     "GRANT INSERT ON ALL TABLES IN SCHEMA jupyter_audit TO ja_writer")
    elif init.returncode != 0:
        raise SystemExit(f"postgres init failed:\n{init.stderr}")


def load_with_sql(cluster, manifest: dict, root: Path, expected: int) -> tuple[float, str]:
    """Without the forwarder (for working on the queries): the stores' lines loaded with
    COPY and split into columns by the server."""
    import uuid
    start = time.monotonic()
    cluster.psql("CREATE UNLOGGED TABLE IF NOT EXISTS staging (line text)")
    for store in manifest["stores"]:
        store_id = uuid.uuid4()
        key = (Path(store["dir"]) / "checkpoint.pub").read_text().strip()
        cluster.psql("TRUNCATE staging")
        segments = sorted((Path(store["dir"]) / "segments").glob("*.jsonl"))
        cat = subprocess.Popen(["cat", *map(str, segments)], stdout=subprocess.PIPE)
        subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(cluster.sockets),
                        "-p", str(cluster.port), "-U", "postgres", "-d", "postgres", "-c",
                        "COPY staging FROM STDIN (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')"],
                       stdin=cat.stdout, check=True)
        cat.wait()
        cluster.psql(f"""
            INSERT INTO jupyter_audit.stores (store_id, host, public_key, key_id)
                VALUES ('{store_id}', '{store["host"]}', '{key}', 'k');
            INSERT INTO jupyter_audit.records (store_id, sequence, time, action, user_name,
                user_id, session_id, kernel_id, msg_id, parent_msg_id, line, prev, hash)
            SELECT '{store_id}', (j #>> '{{event,sequence}}')::bigint,
                (j ->> '@timestamp')::timestamptz, j #>> '{{event,action}}',
                j #>> '{{user,name}}', j #>> '{{user,id}}', j #>> '{{jupyter,session_id}}',
                j #>> '{{jupyter,kernel_id}}', j #>> '{{jupyter,msg_id}}',
                j #>> '{{jupyter,parent_msg_id}}', line,
                decode(j #>> '{{chain,prev}}', 'hex'), decode(j #>> '{{chain,hash}}', 'hex')
            FROM (SELECT line, line::jsonb AS j FROM staging) lines;""")
    cluster.psql("DROP TABLE staging")
    return time.monotonic() - start, "COPY and INSERT … SELECT, not the forwarder"


def count(cluster) -> int:
    return int(cluster.scalar("SELECT count(*) FROM jupyter_audit.records"))


def forward(cluster, manifest: dict, root: Path, expected: int) -> tuple[float, str]:
    """Starts one forwarding collector per store; seconds until all records arrived."""
    collectors = []
    start = time.monotonic()
    for number, store in enumerate(manifest["stores"]):
        log = open(root / f"collector-{number}.log", "ab")
        collectors.append(subprocess.Popen(
            [str(BIN), "collector", "--store", store["dir"], "--socket",
             str(root / f"c{number}.sock"), "--forward-postgres", cluster.url("ja_writer")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log))
    try:
        last = (0, start)
        while True:
            time.sleep(0.5)
            now = count(cluster)
            if now >= expected:
                break
            if any(c.poll() is not None for c in collectors):
                raise SystemExit(f"a collector exited; see {root}/collector-*.log")
            if now == last[0] and time.monotonic() - last[1] > 120:
                raise SystemExit(f"forwarding stalled at {now} of {expected} records")
            if now != last[0]:
                last = (now, time.monotonic())
        elapsed = time.monotonic() - start
    finally:
        for collector in collectors:
            collector.terminate()
        for collector in collectors:
            collector.wait(timeout=60)
    return elapsed, "16 forwarding collectors"


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def timed(argv: list[str]) -> tuple[float, int]:
    start = time.monotonic()
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{argv}: exit {result.returncode}\n{result.stderr}")
    return elapsed, len(result.stdout.splitlines())


def query_figures(cluster, manifest: dict, runs: int) -> list[tuple[str, float, float, str]]:
    rng = random.Random(12)
    url = cluster.url("ja_reader")
    base = [str(BIN)]
    users = [u for s in manifest["stores"] for u in s["users"]]
    sessions = [s2 for s in manifest["stores"] for s2 in s["sessions"]]
    markers = [m for s in manifest["stores"] for m in s["markers"]]
    figures = []

    def measure(name: str, target: float, make) -> None:
        samples, rows = [], []
        make()  # one warm-up run (connection caches, the OS page cache)
        for _ in range(runs):
            elapsed, lines = timed(make())
            samples.append(elapsed)
            rows.append(lines)
        figures.append((name, p95(samples), target,
                        f"{runs} runs, median {sorted(samples)[len(samples) // 2] * 1000:.0f} ms, "
                        f"~{sum(rows) // len(rows)} lines out"))

    measure("sessions --postgres --user U", 0.100,
            lambda: base + ["sessions", "--postgres", url, "--user", rng.choice(users)])
    measure("log --postgres --session S (one session)", 0.050,
            lambda: base + ["log", "--postgres", url, "--session", rng.choice(sessions)["id"][:8]])
    measure("log --postgres --action execute_request --grep CODE", 1.0,
            lambda: base + ["log", "--postgres", url, "--action", "execute_request", "--grep",
                            re.escape(rng.choice(markers))])
    measure("log --postgres --grep CODE (every action)", 1.0,
            lambda: base + ["log", "--postgres", url, "--grep", re.escape(rng.choice(markers))])
    return figures


def main() -> None:
    # SIGTERM cleans up like an error: collectors stopped, cluster stopped, files removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    parser = argparse.ArgumentParser()
    parser.add_argument("--stores", type=int, default=16)
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--load", choices=["forwarder", "sql"], default="forwarder",
                        help="sql: load with COPY instead of forwarding (to work on queries)")
    parser.add_argument("--without-code-index", action="store_true",
                        help="drop the trigram index of code search (records_code) first: "
                             "what it costs forwarding, and code search without it")
    parser.add_argument("--stores-from", type=Path,
                        help="use the stores (and manifest.json) generated earlier in this directory")
    args = parser.parse_args()
    if args.quick:
        args.stores, args.records, args.runs = 2, 5_000, 5
    root = Path(tempfile.mkdtemp(prefix="jaudit-forward-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    os.chmod(root, 0o755)
    cluster = None
    try:
        if args.stores_from:
            manifest = json.loads((args.stores_from / "manifest.json").read_text())
            args.stores = len(manifest["stores"])
        else:
            manifest = generate(root / "stores", args.stores, args.records)
        cluster = make_cluster(root / "pg")
        with open(cluster.data / "postgresql.conf", "a") as conf:
            # The fixture turns durability off for tests; the figure is with the defaults.
            conf.write("fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n")
        cluster.start()
        init_schema(cluster)
        if args.without_code_index:
            cluster.psql("DROP INDEX jupyter_audit.records_code")
        total = args.stores * args.records
        load = forward if args.load == "forwarder" else load_with_sql
        elapsed, how = load(cluster, manifest, root, total)
        rate = total / elapsed
        cluster.psql("VACUUM ANALYZE jupyter_audit.records")
        size = cluster.scalar("SELECT pg_size_pretty(pg_total_relation_size('jupyter_audit.records'))")
        rows = [("forwarding, aggregate", f"{rate:,.0f} records/s", ">= 50,000/s",
                 "PASS" if rate >= 50_000 else "MISS",
                 f"{total:,} records of {args.stores} stores in {elapsed:.1f} s ({how}); "
                 f"records table with indexes {size}")]
        for name, value, target, note in query_figures(cluster, manifest, args.runs):
            rows.append((name + " p95", f"{value * 1000:.0f} ms", f"<= {target * 1000:.0f} ms",
                         "PASS" if value <= target else "MISS", note))
        print()
        print(f"{'FIGURE':52}  {'VALUE':>18}  {'TARGET':>12}  {'':4}  NOTE")
        for name, value, target, verdict, note in rows:
            print(f"{name:52}  {value:>18}  {target:>12}  {verdict:4}  {note}")
    finally:
        if cluster is not None:
            cluster.stop("immediate")
        if args.keep:
            print(f"kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
