"""Forwarding to PostgreSQL (issue 12): a real collector forwards its store to a real
throwaway cluster while real kernels run cells through the audited kernelspec.

After each scenario PostgreSQL holds exactly the store: every record once, in sequence,
with the stored line byte for byte and its chain hashes; every checkpoint; the store's
row with its public key. Faults: PostgreSQL down when the collector starts; stopped
while a cell streams output (and started again); the forwarder's backend terminated;
a lock that holds the records table; the collector SIGKILLed while it forwards. In each,
the audited cells finish while PostgreSQL is down or blocked: proxies never wait for it.
A fork (a forwarded row changed in PostgreSQL) stops forwarding, is logged and is on the
local record as `forward_conflict`. `status` shows the lag, to a reviewer too. The
collector forwards as the writer role that `postgres init` made. Timeouts only bound
waiting; the tamper-window measurement runs on request.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers import (
    BIN,
    KernelPool,
    execute,
    iopub_for,
    reply_for,
    run_ok,
    stdout_of,
    system_user,
    wait_until,
)
from pgcluster import pg  # noqa: F401 (a fixture)
from test_audit import (
    LoggedKernel,
    action,
    audited_kernelspec,
    collectors,  # noqa: F401 (a fixture)
    logs,
    own_collector,
    read_store,
    segment_files,
)

FORWARD_TIMEOUT = 60  # liveness only: how long forwarding may take to catch up
SEP = "\x1f"

STREAM_LINES = 200
STREAMING_CELL = (
    "import time\n"
    f"for i in range({STREAM_LINES}):\n"
    "    print(f'line {i:05d}', flush=True)\n"
    "    time.sleep(0.01)\n"
)
EXPECTED_STREAM = "".join(f"line {i:05d}\n" for i in range(STREAM_LINES))


# --- the database -------------------------------------------------------------------------


WRITER = "ja_writer"
REVIEWER = "jaudit-reviewer"


@pytest.fixture(scope="module")
def db(pg):  # noqa: F811 (the pgcluster fixture)
    """The module's cluster prepared by `postgres init` (tables, writer role, triggers)."""
    subprocess.run([str(BIN), "postgres", "init", "--url", pg.url(), "--writer", WRITER,
                    "--reader", "ja_reader"], check=True, capture_output=True, timeout=120)
    return pg


def ensure_up(pg) -> None:  # noqa: F811
    if pg.psql("SELECT 1", check=False).returncode != 0:
        pg.start()


def rows(pg, sql: str) -> list[list[str]]:  # noqa: F811
    out = subprocess.run(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-F", SEP, "-h", str(pg.sockets), "-p",
         str(pg.port), "-U", "postgres", "-d", "postgres", "-c", sql],
        capture_output=True, text=True, timeout=120, check=True).stdout
    return [line.split(SEP) for line in out.splitlines() if line]


def store_id(store: Path) -> str:
    return (store / "store_id").read_text().strip()


def pg_records(pg, sid: str) -> list[tuple[int, str, str, str]]:  # noqa: F811
    return [(int(s), line, prev, hash_) for s, prev, hash_, line in rows(
        pg, "SELECT sequence, encode(prev, 'hex'), encode(hash, 'hex'), line "
        f"FROM jupyter_audit.records WHERE store_id = '{sid}' ORDER BY sequence")]


def local_records(store: Path) -> list[tuple[int, str, str, str]]:
    """(sequence, line, prev, hash) of every complete line of the store."""
    out = []
    for segment in segment_files(store):
        for line in segment.read_bytes().split(b"\n")[:-1]:
            record = json.loads(line)
            out.append((record["event"]["sequence"], line.decode(), record["chain"]["prev"],
                        record["chain"]["hash"]))
    return out


def local_checkpoints(store: Path) -> list[tuple[int, str, str, str, str, str]]:
    path = store / "checkpoints.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        c = json.loads(line)
        out.append((c["sequence"], c["chain_hash"], c["time"], c["segment"], c["key_id"],
                    c["signature"]))
    return out


def pg_checkpoints(pg, sid: str) -> list[tuple]:  # noqa: F811
    return [(int(r[0]), *r[1:]) for r in rows(
        pg, "SELECT sequence, chain_hash, time, segment, key_id, signature FROM "
        f"jupyter_audit.checkpoints WHERE store_id = '{sid}' ORDER BY sequence")]


def forwarded_max(pg, sid: str) -> int:  # noqa: F811
    try:
        value = pg.scalar(f"SELECT coalesce(max(sequence), 0) FROM jupyter_audit.records "
                          f"WHERE store_id = '{sid}'")
    except subprocess.CalledProcessError:
        return -1
    return int(value or 0)


def wait_forwarded(pg, store: Path, diagnostics: str = "") -> None:  # noqa: F811
    """Until PostgreSQL has the store's last record and last checkpoint."""
    sid = store_id(store)

    def caught_up() -> bool:
        local = local_records(store)
        checkpoints = local_checkpoints(store)
        if not local or forwarded_max(pg, sid) != local[-1][0]:
            return False
        if not checkpoints:
            return True
        last = pg.scalar(f"SELECT coalesce(max(sequence), 0) FROM jupyter_audit.checkpoints "
                         f"WHERE store_id = '{sid}'")
        return int(last or 0) == checkpoints[-1][0]

    if not wait_until(caught_up, FORWARD_TIMEOUT, interval=0.2):
        pytest.fail(f"not forwarded within {FORWARD_TIMEOUT}s: local last "
                    f"{local_records(store)[-1:]}, PostgreSQL max {forwarded_max(pg, sid)}\n"
                    f"{diagnostics}")


def assert_exact(pg, store: Path) -> None:  # noqa: F811
    """PostgreSQL holds exactly the store: records (bytes, hashes, each once, no gap),
    checkpoints and the store's key."""
    sid = store_id(store)
    local = local_records(store)
    remote = pg_records(pg, sid)
    assert [r[0] for r in local] == list(range(1, len(local) + 1))
    assert len(remote) == len(local), (len(remote), len(local))
    for mine, theirs in zip(local, remote):
        assert theirs == mine, f"record {mine[0]} differs:\n store {mine}\n pg    {theirs}"
        # The chain fields are the line's own suffix.
        assert mine[1].endswith(f'"prev":"{mine[2]}","hash":"{mine[3]}"}}}}')
    assert pg_checkpoints(pg, sid) == local_checkpoints(store)
    key = (store / "checkpoint.pub").read_text().strip()
    registered = rows(pg, f"SELECT public_key, host, key_id FROM jupyter_audit.stores "
                          f"WHERE store_id = '{sid}'")
    assert len(registered) == 1 and registered[0][0] == key, registered
    assert registered[0][1], "the store's host is registered"


def status(store: Path) -> dict:
    result = subprocess.run([str(BIN), "status", "--store", str(store), "--json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def lag(store: Path) -> int | None:
    return (status(store).get("forwarding") or {}).get("lag_records")


def forwarding_collector(collectors, root: Path, pg, *flags: str):  # noqa: F811
    """A collector that forwards as the writer role (INSERT and SELECT only)."""
    return own_collector(collectors, root, "--forward-postgres", pg.url(WRITER), *flags)


def stream(kernel: LoggedKernel, collector) -> None:
    """Runs the streaming cell to its end and checks that every line came back."""
    reply, msgs = execute(kernel.kc, STREAMING_CELL, timeout=120)
    assert reply["content"]["status"] == "ok", f"{reply['content']}\n{logs(collector, kernel)}"
    assert stdout_of(msgs) == EXPECTED_STREAM


# --- the whole trail reaches PostgreSQL ---------------------------------------------------


def test_records_checkpoints_and_key_reach_postgres(collectors, db, tmp_dir):
    collector = forwarding_collector(collectors, tmp_dir, db)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        assert run_ok(kernel.kc, "print('forwarded ' + 'cell')") == "forwarded cell\n"
        run_ok(kernel.kc, "x = 41\nprint(x + 1)")
        wait_forwarded(db, collector.store, logs(collector, kernel))
        shown = status(collector.store)
        assert shown["store_id"] == store_id(collector.store)
        # The state file follows within about a second.
        assert wait_until(lambda: lag(collector.store) == 0, 10), status(collector.store)
    finally:
        pool.shutdown_all()
    collector.stop()
    # The stop's own records and final checkpoint were forwarded before it exited.
    assert_exact(db, collector.store)
    sid = store_id(collector.store)
    code = rows(db, "SELECT line FROM jupyter_audit.records WHERE store_id = "
                    f"'{sid}' AND action = 'execute_request'")
    assert any("forwarded ' + 'cell" in line for (line,) in code)
    shown = status(collector.store)
    assert shown["forwarding"]["lag_records"] == 0, shown
    assert shown["forwarding"]["last_forwarded"]["sequence"] == shown["last_stored"]["sequence"]
    assert shown["forwarding"]["last_forwarded_checkpoint"]["sequence"] == \
        shown["last_checkpoint"]["sequence"]
    assert shown["last_checkpoint"]["sequence"] == shown["last_stored"]["sequence"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates a reviewer system user")
def test_a_reviewer_reads_the_status(collectors, db):
    reviewer = system_user(REVIEWER)
    base = Path(tempfile.mkdtemp(prefix="ja-status-"))
    try:
        base.chmod(0o755)
        collector = forwarding_collector(collectors, base, db, "--reviewers-group", REVIEWER)
        wait_forwarded(db, collector.store, collector.log())
        collector.stop()
        shown = subprocess.run(["runuser", "-u", reviewer.pw_name, "--", str(BIN), "status",
                                "--store", str(collector.store), "--json"],
                               capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        status_json = json.loads(shown.stdout)
        assert status_json["store_id"] == store_id(collector.store)
        assert status_json["forwarding"]["lag_records"] == 0
        assert status_json["forwarding"]["last_error"] is None
        text = subprocess.run(["runuser", "-u", reviewer.pw_name, "--", str(BIN), "status",
                               "--store", str(collector.store)],
                              capture_output=True, text=True, timeout=60).stdout
        assert "lag              0 records" in text, text
        # Anyone else cannot read it.
        nobody = subprocess.run(["runuser", "-u", "nobody", "--", str(BIN), "status",
                                 "--store", str(collector.store)],
                                capture_output=True, text=True, timeout=60)
        assert nobody.returncode != 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- faults -------------------------------------------------------------------------------


def test_postgres_down_at_start_and_stopped_mid_stream(collectors, db, tmp_dir):
    db.stop()
    try:
        collector = forwarding_collector(collectors, tmp_dir, db)  # starts without it
        pool = KernelPool()
        try:
            kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
            stream(kernel, collector)  # while PostgreSQL is down
            assert wait_until(lambda: (status(collector.store).get("forwarding") or {})
                              .get("last_error") is not None, 30), collector.log()
            db.start()
            wait_forwarded(db, collector.store, logs(collector, kernel))

            # Stopped mid-stream: the cell streams to its end while PostgreSQL is down.
            msg_id = kernel.kc.execute(STREAMING_CELL)
            assert wait_until(lambda: any(r.get("jupyter", {}).get("parent_msg_id") == msg_id
                                          and action(r) == "stream"
                                          for r in read_store(collector.store)), 30)
            db.stop()
            stopped = time.monotonic()
            msgs = iopub_for(kernel.kc, msg_id, timeout=120)
            reply = reply_for(kernel.kc.get_shell_msg, msg_id, timeout=30)
            assert reply["content"]["status"] == "ok"
            assert stdout_of(msgs) == EXPECTED_STREAM
            # Down for 30 s while cells keep running (past the forwarder's longest
            # back-off): every cell completes, recorded locally, with PostgreSQL away.
            cells = 0
            while time.monotonic() - stopped < 30:
                assert run_ok(kernel.kc, f"print('still down', {cells})") == f"still down {cells}\n"
                cells += 1
                time.sleep(0.5)
            assert cells >= 10
            db.start()
            wait_forwarded(db, collector.store, logs(collector, kernel))
        finally:
            pool.shutdown_all()
        collector.stop()
        assert_exact(db, collector.store)
        assert "forwarding to PostgreSQL failed" in collector.log()
    finally:
        ensure_up(db)


def test_backend_terminated_and_table_locked(collectors, db, tmp_dir):
    collector = forwarding_collector(collectors, tmp_dir, db)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        run_ok(kernel.kc, "print(1)")
        wait_forwarded(db, collector.store, logs(collector, kernel))
        terminated = db.scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE application_name = 'jupyter-audit'")
        assert int(terminated) >= 1
        stream(kernel, collector)
        wait_forwarded(db, collector.store, logs(collector, kernel))

        # A slow server: a lock on the records table while cells run.
        locker = subprocess.Popen(
            ["psql", "-X", "-h", str(db.sockets), "-p", str(db.port), "-U", "postgres", "-d",
             "postgres", "-c", "BEGIN; LOCK TABLE jupyter_audit.records IN ACCESS EXCLUSIVE "
             "MODE; SELECT pg_sleep(4); COMMIT;"], stdout=subprocess.DEVNULL)
        try:
            assert wait_until(lambda: db.scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE "
                "c.relname = 'records' AND l.mode = 'AccessExclusiveLock' AND l.granted") == "1",
                10)
            assert run_ok(kernel.kc, "print('while locked')") == "while locked\n"
            assert locker.poll() is None, "the cell finished only after the lock was released"
        finally:
            locker.wait(timeout=60)
        wait_forwarded(db, collector.store, logs(collector, kernel))
    finally:
        pool.shutdown_all()
    collector.stop()
    assert_exact(db, collector.store)


def test_collector_sigkilled_while_forwarding(collectors, db, tmp_dir):
    collector = forwarding_collector(collectors, tmp_dir, db)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        msg_id = kernel.kc.execute(STREAMING_CELL)
        sid = store_id(collector.store)
        # Killed once some of the stream is in PostgreSQL and more is coming.
        assert wait_until(lambda: forwarded_max(db, sid) > 10, 30), collector.log()
        collector.process.send_signal(signal.SIGKILL)
        collector.process.wait(timeout=20)
        collector.start()
        iopub_for(kernel.kc, msg_id, timeout=120)
        run_ok(kernel.kc, "print('after the restart')")
        wait_forwarded(db, collector.store, logs(collector, kernel))
    finally:
        pool.shutdown_all()
    collector.stop()
    assert_exact(db, collector.store)


# --- a fork -------------------------------------------------------------------------------


def test_a_changed_row_is_a_fork_that_stops_forwarding(collectors, db, tmp_dir):
    collector = forwarding_collector(collectors, tmp_dir, db)
    sid = store_id(collector.store)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        run_ok(kernel.kc, "print('before')")
        wait_forwarded(db, collector.store, logs(collector, kernel))
        newest = forwarded_max(db, sid)
        # The tables' owner may still change rows (the triggers bind every other role).
        db.psql(f"UPDATE jupyter_audit.records SET hash = '\\x{'00' * 32}' WHERE "
                f"store_id = '{sid}' AND sequence = {newest}")
        run_ok(kernel.kc, "print('after')")
        records = []
        assert wait_until(lambda: any(action(r) == "forward_conflict"
                                      for r in read_store(collector.store)), 30), collector.log()
        records = read_store(collector.store)
        conflict = next(r for r in records if action(r) == "forward_conflict")
        assert conflict["collector"]["store_id"] == sid
        assert conflict["collector"]["table"] == "records"
        assert conflict["collector"]["row_sequence"] == newest
        assert conflict["collector"]["remote"] == "00" * 32
        assert conflict["event"]["outcome"] == "failure"
        run_ok(kernel.kc, "print('cells still run')")
        time.sleep(1)
        assert forwarded_max(db, sid) == newest, "forwarding stopped at the fork"
    finally:
        pool.shutdown_all()
    assert "FORWARDING STOPPED" in collector.log()
    shown = status(collector.store)
    assert "fork" in (shown["forwarding"]["stopped"] or ""), shown
    collector.stop()
    assert forwarded_max(db, sid) == newest


def test_a_changed_checkpoint_is_a_fork_found_on_resume(collectors, db, tmp_dir):
    collector = forwarding_collector(collectors, tmp_dir, db)
    sid = store_id(collector.store)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        run_ok(kernel.kc, "print('checkpointed')")
        assert wait_until(lambda: local_checkpoints(collector.store), 30), collector.log()
        wait_forwarded(db, collector.store, logs(collector, kernel))
        newest = int(db.scalar("SELECT max(sequence) FROM jupyter_audit.checkpoints WHERE "
                               f"store_id = '{sid}'"))
        db.psql(f"UPDATE jupyter_audit.checkpoints SET chain_hash = '{'0' * 64}' WHERE "
                f"store_id = '{sid}' AND sequence = {newest}")
        # A new connection asks PostgreSQL where it stopped and checks what it finds.
        db.scalar("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                  "WHERE application_name = 'jupyter-audit'")
        run_ok(kernel.kc, "print('after')")
        assert wait_until(lambda: any(action(r) == "forward_conflict"
                                      for r in read_store(collector.store)), 30), collector.log()
        conflict = next(r for r in read_store(collector.store)
                        if action(r) == "forward_conflict")["collector"]
        assert (conflict["table"], conflict["row_sequence"], conflict["remote"]) == \
            ("checkpoints", newest, "0" * 64)
    finally:
        pool.shutdown_all()
    collector.stop()
    assert "FORWARDING STOPPED" in collector.log()


# --- the tamper window (a measurement, run on request) ------------------------------------


@pytest.mark.skipif(not os.environ.get("JUPYTER_AUDIT_MEASURE_TAMPER_WINDOW"),
                    reason="a measurement: set JUPYTER_AUDIT_MEASURE_TAMPER_WINDOW=1")
def test_measure_tamper_window(collectors, db, tmp_dir):
    """How much of the newest trail a root on the collector's host could erase without
    `verify` against PostgreSQL noticing: at each sample (every 50 ms while a cell prints
    a line every 20 ms for 30 s), the span of @timestamps from the record the newest
    checkpoint in PostgreSQL covers to the newest record in the store. Prints the
    distribution; asserts nothing about time."""
    collector = forwarding_collector(collectors, tmp_dir, db)
    sid = store_id(collector.store)
    samples: list[tuple[int, int]] = []
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        run_ok(kernel.kc, "print('warm')")
        cell = ("import time\nend = time.time() + 30\nwhile time.time() < end:\n"
                "    print(time.time(), flush=True)\n    time.sleep(0.02)\n")
        msg_id = kernel.kc.execute(cell)
        time.sleep(2)
        deadline = time.monotonic() + 26
        while time.monotonic() < deadline:
            newest = last_complete_sequence(collector.store)
            checkpointed = int(db.scalar(
                "SELECT coalesce(max(sequence), 0) FROM jupyter_audit.checkpoints "
                f"WHERE store_id = '{sid}'") or 0)
            samples.append((newest, checkpointed))
            time.sleep(0.05)
        iopub_for(kernel.kc, msg_id, timeout=120)
    finally:
        pool.shutdown_all()
    collector.stop()
    times = {r[0]: record_time(r[1]) for r in local_records(collector.store)}
    windows = sorted(max(0.0, times[n] - times[c]) for n, c in samples if c in times)
    unchecked = sorted(n - c for n, c in samples)
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
    report = (f"tamper window over {len(windows)} samples: median {pick(windows, 0.5):.3f} s, "
              f"p95 {pick(windows, 0.95):.3f} s, max {windows[-1]:.3f} s; records past the "
              f"newest forwarded checkpoint: median {pick(unchecked, 0.5)}, max {unchecked[-1]}")
    print(report)
    (Path(os.environ.get("JUPYTER_AUDIT_MEASURE_OUT", tmp_dir)) / "tamper-window.txt").write_text(
        report + "\n")


def last_complete_sequence(store: Path) -> int:
    segment = segment_files(store)[-1]
    with open(segment, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(max(0, size - 65536))
        tail = f.read()
    lines = tail.split(b"\n")[:-1]
    return json.loads(lines[-1])["event"]["sequence"] if lines else 0


def record_time(line: str) -> float:
    stamp = json.loads(line)["@timestamp"]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
