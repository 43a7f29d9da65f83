"""Review and verification from PostgreSQL, on a real cluster fed by real collectors.

Two collectors (two stores) record real audited kernels; their records reach PostgreSQL
through the forwarder. Then:

- `log`, `sessions` and `replay` with `--postgres` print what they print from the store
  directory, for the same filters (table and --json); `--store-id` and `--host` select
  stores, and without them the records of both stores come together.
- `verify --postgres` finds both stores intact; then, as the database owner, a changed
  line of code, a deleted record, dropped newest records and records deleted under a
  checkpoint are each reported, with exit status 1.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import BIN, TIMEOUT, KernelPool, run_ok
from pgcluster import pg  # noqa: F401 (a fixture)
from test_audit import Collector, LoggedKernel, audited_kernelspec
from test_forward import store_id, wait_forwarded

def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    return result


WRITER = "ja_writer"


def store_lines(store: Path) -> list[str]:
    lines: list[str] = []
    for segment in sorted((store / "segments").glob("*.jsonl")):
        lines += segment.read_text().splitlines()
    return lines


class Host:
    """A collector forwarding its store to PostgreSQL, and the sessions run through it."""

    def __init__(self, root: Path, pg) -> None:  # noqa: F811
        root.mkdir(parents=True)
        self.collector = Collector(root, "--forward-postgres", pg.url(WRITER)).start()
        self.kernelspec = audited_kernelspec(self.collector.socket)
        self.store = self.collector.store
        self.store_id = store_id(self.store)
        self.name = ""


def run_session(pool, host: Host, log_dir: Path, cells: list[str]) -> None:
    kernel = LoggedKernel(pool, host.kernelspec, log_dir)
    for code in cells:
        if "raise" in code:
            kernel.kc.execute_interactive(code, timeout=TIMEOUT)
        else:
            run_ok(kernel.kc, code)
    kernel.kc.stop_channels()
    kernel.km.shutdown_kernel(now=False)


@pytest.fixture(scope="module")
def trail(pg, tmp_path_factory):  # noqa: F811
    """Two stores with sessions in them, forwarded to PostgreSQL by their collectors (which
    keep running: a collector that stops writes records it has no time left to forward)."""
    subprocess.run([str(BIN), "postgres", "init", "--url", pg.url(), "--writer", WRITER,
                    "--reader", "ja_reader"], check=True, capture_output=True, timeout=120)
    root = tmp_path_factory.mktemp("pg-review")
    hosts = [Host(root / "a", pg), Host(root / "b", pg)]
    marker = uuid.uuid4().hex[:12]
    pool = KernelPool()
    try:
        try:
            run_session(pool, hosts[0], root, [f"# alpha {marker}\nprint('hello a')",
                                               "raise ValueError('on purpose')", "6 * 7"])
            run_session(pool, hosts[0], root, ["import os\nprint(len(os.environ) > 0)"])
            run_session(pool, hosts[1], root, [f"# beta {marker}\nprint('hello b')"])
        finally:
            pool.shutdown_all()
        for host in hosts:
            wait_forwarded(pg, host.store, host.collector.log())
            host.name = pg.scalar(f"SELECT host FROM jupyter_audit.stores "
                                  f"WHERE store_id = '{host.store_id}'")
        yield {"pg": pg, "hosts": hosts, "marker": marker}
    finally:
        for host in hosts:
            host.collector.kill()


def without_store_path(notebook: str) -> dict:
    """A replayed notebook without the one field that names where it was read from."""
    nb = json.loads(notebook)
    nb["metadata"]["jupyter_audit"].pop("store")
    return nb


def test_log_sessions_and_replay_from_postgresql_match_the_store(trail):
    pg, marker = trail["pg"], trail["marker"]
    a = trail["hosts"][0]
    from_store = ["--store", str(a.store)]
    from_pg = ["--postgres", pg.url("ja_reader"), "--store-id", a.store_id]
    sessions = [json.loads(line) for line in
                cli("sessions", *from_store, "--json").stdout.splitlines()]
    assert len(sessions) == 2, sessions
    user = sessions[0]["user"]
    since = sessions[1]["start"]
    filters = [
        [],
        ["--user", user],
        ["--session", sessions[1]["session_id"][:8]],
        ["--action", "execute_request", "--action", "error"],
        ["--grep", f"alpha {marker}"],
        ["--grep", r"print\('hello [ab]'\)"],
        ["--since", since],
        ["--until", since, "--kernel", sessions[0]["kernel_id"][:6]],
    ]
    for command in ("log", "sessions"):
        for query in filters:
            for form in ([], ["--json"]):
                expected = cli(command, *from_store, *query, *form).stdout
                got = cli(command, *from_pg, *query, *form).stdout
                assert got == expected, f"{command} {query} {form}"
                assert len(expected.splitlines()) > (0 if form else 1) or command == "sessions", \
                    f"{command} {query} {form} selects nothing: a weak comparison"
    for session in sessions:
        prefix = ["--session", session["session_id"][:8], "-o", "-"]
        expected = without_store_path(cli("replay", *from_store, *prefix).stdout)
        got = without_store_path(cli("replay", *from_pg, *prefix).stdout)
        assert got == expected
        assert got["cells"], "a replay without cells compares nothing"


def test_stores_are_selected_by_id_and_host_and_read_together_in_time_order(trail):
    pg, marker = trail["pg"], trail["marker"]
    a, b = trail["hosts"]
    grep = ["--grep", marker, "--action", "execute_request", "--json"]
    both = [json.loads(line) for line in cli("log", "--postgres", pg.url("ja_reader"), *grep).stdout.splitlines()]
    assert [r["jupyter"]["code"].split("\n")[0] for r in both] == [
        f"# alpha {marker}", f"# beta {marker}"]
    times = [r["@timestamp"] for r in cli_json("log", "--postgres", pg.url("ja_reader"))]
    assert times == sorted(times), "records of several stores come in time order"
    for host in (a, b):
        by_id = cli("log", "--postgres", pg.url("ja_reader"), "--store-id", host.store_id, "--json").stdout
        assert by_id == "".join(line + "\n" for line in store_lines(host.store))
    # Both collectors run on this machine: its host name selects both stores.
    assert a.name == b.name
    by_host = cli("log", "--postgres", pg.url("ja_reader"), "--host", a.name, "--json").stdout
    assert by_host == cli("log", "--postgres", pg.url("ja_reader"), "--json").stdout
    assert len(by_host.splitlines()) == len(store_lines(a.store)) + len(store_lines(b.store))
    every = cli("sessions", "--postgres", pg.url("ja_reader"), "--json").stdout.splitlines()
    assert len(every) == 3
    none = cli("log", "--postgres", pg.url("ja_reader"), "--host", "no-such-host", "--json")
    assert none.stdout == "" and "no forwarded store" in none.stderr


def cli_json(*args: str) -> list[dict]:
    return [json.loads(line) for line in cli(*args, "--json").stdout.splitlines()]


def duplicate_store(pg, store_id: str) -> str:
    """A copy of a forwarded store under a new id, to tamper with."""
    copy_id = str(uuid.uuid4())
    pg.psql(f"""
        INSERT INTO jupyter_audit.stores (store_id, host, public_key, key_id)
            SELECT '{copy_id}', 'copy-of-' || host, public_key, key_id
            FROM jupyter_audit.stores WHERE store_id = '{store_id}';
        INSERT INTO jupyter_audit.records (store_id, sequence, time, action, user_name, user_id,
            session_id, kernel_id, msg_id, parent_msg_id, line, prev, hash)
            SELECT '{copy_id}', sequence, time, action, user_name, user_id, session_id,
                   kernel_id, msg_id, parent_msg_id, line, prev, hash
            FROM jupyter_audit.records WHERE store_id = '{store_id}';
        INSERT INTO jupyter_audit.checkpoints (store_id, sequence, chain_hash, time, segment,
            key_id, signature)
            SELECT '{copy_id}', sequence, chain_hash, time, segment, key_id, signature
            FROM jupyter_audit.checkpoints WHERE store_id = '{store_id}';
    """)
    return copy_id


def verify(pg, *args: str) -> subprocess.CompletedProcess:
    return cli("verify", "--postgres", pg.url("ja_reader"), *args, check=False)


def test_verify_finds_the_forwarded_stores_intact(trail):
    pg = trail["pg"]
    result = verify(pg)
    assert result.returncode == 0, result.stdout + result.stderr
    for host in trail["hosts"]:
        assert f"store {host.store_id} (host {host.name}): intact" in result.stdout
    key = trail["hosts"][0].store / "checkpoint.pub"
    store_id = trail["hosts"][0].store_id
    with_key = verify(pg, "--store-id", store_id, "--key", f"{store_id}={key}")
    assert with_key.returncode == 0, with_key.stdout + with_key.stderr
    other_key = trail["hosts"][1].store / "checkpoint.pub"
    wrong_key = verify(pg, "--store-id", store_id, "--key", f"{store_id}={other_key}")
    assert wrong_key.returncode == 1
    assert "is not the one given with --key" in wrong_key.stdout


def sequence_of(pg, store_id: str, where: str) -> int:
    return int(pg.scalar(f"SELECT sequence FROM jupyter_audit.records "
                         f"WHERE store_id = '{store_id}' AND {where} ORDER BY sequence LIMIT 1"))


@pytest.mark.parametrize("tampering", ["edit", "delete", "drop_newest", "under_checkpoint"])
def test_verify_reports_what_the_database_owner_changed(trail, tampering):
    pg, marker = trail["pg"], trail["marker"]
    a = trail["hosts"][0]
    store_id = duplicate_store(pg, a.store_id)
    records = f"jupyter_audit.records WHERE store_id = '{store_id}'"
    checkpoints = f"jupyter_audit.checkpoints WHERE store_id = '{store_id}'"
    newest = int(pg.scalar(f"SELECT max(sequence) FROM {checkpoints}"))
    # A checkpoint with records on both sides.
    inner = int(pg.scalar(f"SELECT max(sequence) FROM {checkpoints} AND sequence < {newest - 2}")
                or 0)
    try:
        if tampering == "edit":
            code = sequence_of(pg, store_id, f"line LIKE '%alpha {marker}%'")
            pg.psql(f"UPDATE jupyter_audit.records SET line = replace(line, 'hello a', 'hello z') "
                    f"WHERE store_id = '{store_id}' AND sequence = {code}")
            expected = [f"sequence {code}: record changed"]
        elif tampering == "delete":
            gone = sequence_of(pg, store_id, "action = 'execute_reply'")
            pg.psql(f"DELETE FROM {records} AND sequence = {gone}")
            expected = [f"sequence {gone + 1}: record {gone} deleted"]
        elif tampering == "drop_newest":
            pg.psql(f"DELETE FROM {records} AND sequence > {newest - 2}")
            expected = [f"truncated: the store ends at sequence {newest - 2}, "
                        f"but the checkpoint covers up to {newest}"]
        else:
            assert inner > 3, "the store has a checkpoint with records on both sides"
            pg.psql(f"DELETE FROM {records} AND sequence BETWEEN {inner - 1} AND {inner}")
            expected = [f"sequence {inner + 1}: records {inner - 1} to {inner} deleted",
                        f"sequence {inner}: the signed checkpoint at sequence {inner} proves"]
        result = verify(pg, "--store-id", store_id)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"store {store_id} (host copy-of-{a.name}): TAMPERED" in result.stdout
        for text in expected:
            assert text in result.stdout, result.stdout
    finally:
        pg.psql(f"DELETE FROM {records}; "
                f"DELETE FROM jupyter_audit.checkpoints WHERE store_id = '{store_id}'; "
                f"DELETE FROM jupyter_audit.stores WHERE store_id = '{store_id}'")
