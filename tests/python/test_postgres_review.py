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
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import BIN, TIMEOUT, KernelPool, run_ok
from pgcluster import pg  # noqa: F401 (a fixture)
from test_audit import Collector, LoggedKernel, audited_kernelspec

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    return result


def init_schema(pg) -> None:
    """The tables and indexes, as `jupyter-audit postgres init` creates them."""
    result = cli("postgres", "init", "--url", pg.url(), "--writer", "ja_writer",
                 "--reader", "ja_reader", check=False)
    if result.returncode != 0 and "unrecognized subcommand" not in result.stderr:
        pytest.fail(f"postgres init: {result.stderr}")
    if result.returncode != 0:
        # Before `postgres init` exists: the tables and indexes of the contract.
        schema = (REPO / "src" / "postgres" / "schema.rs").read_text()
        for name in ("TABLES", "INDEXES"):
            sql = re.search(rf'pub const {name}: &str = r#"(.*?)"#;', schema, re.S).group(1)
            pg.psql(sql)


def store_lines(store: Path) -> list[str]:
    lines: list[str] = []
    for segment in sorted((store / "segments").glob("*.jsonl")):
        lines += segment.read_text().splitlines()
    return lines


def copy_store(pg, store: Path, store_id: str, host: str) -> None:
    """Loads a stopped store's lines, checkpoints and key like the forwarder would."""
    key = (store / "checkpoint.pub").read_text().strip()
    pg.psql(f"INSERT INTO jupyter_audit.stores (store_id, host, public_key, key_id) VALUES "
            f"('{store_id}', '{host}', '{key}', 'k') ON CONFLICT DO NOTHING")
    rows = []
    for line in store_lines(store):
        r = json.loads(line)
        j = r.get("jupyter", {})
        u = r.get("user", {})
        text = lambda v: v if isinstance(v, str) else None  # noqa: E731
        rows.append([store_id, r["event"]["sequence"], text(r.get("@timestamp")),
                     r["event"].get("action", ""), text(u.get("name")), text(u.get("id")),
                     text(j.get("session_id")), text(j.get("kernel_id")), text(j.get("msg_id")),
                     text(j.get("parent_msg_id")), line,
                     "\\x" + r["chain"]["prev"], "\\x" + r["chain"]["hash"]])
    copy(pg, "records (store_id, sequence, time, action, user_name, user_id, session_id, "
             "kernel_id, msg_id, parent_msg_id, line, prev, hash)", rows)
    checkpoints = [json.loads(line) for line in (store / "checkpoints.jsonl").read_text().splitlines()]
    copy(pg, "checkpoints (store_id, sequence, chain_hash, time, segment, key_id, signature)",
         [[store_id, c["sequence"], c["chain_hash"], c["time"], c["segment"], c["key_id"],
           c["signature"]] for c in checkpoints])


def copy(pg, table: str, rows: list[list]) -> None:
    import csv
    import io
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    # An empty CSV field is NULL; an empty quoted string would be ''.
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-h", str(pg.sockets), "-p", str(pg.port),
            "-U", "postgres", "-d", "postgres", "-c",
            f"COPY jupyter_audit.{table} FROM STDIN WITH (FORMAT csv)"]
    subprocess.run(argv, input=buffer.getvalue(), text=True, check=True, capture_output=True,
                   timeout=120)


class Host:
    """A collector with its store, and the sessions run through it."""

    def __init__(self, root: Path, name: str) -> None:
        root.mkdir(parents=True)
        self.name = name
        self.collector = Collector(root, "--checkpoint-interval-secs", "1").start()
        self.kernelspec = audited_kernelspec(self.collector.socket)
        self.store = self.collector.store
        self.store_id = str(uuid.uuid4())


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
    """Two stores with sessions in them, forwarded to PostgreSQL."""
    init_schema(pg)
    root = tmp_path_factory.mktemp("pg-review")
    hosts = [Host(root / "a", "host-a"), Host(root / "b", "host-b")]
    marker = uuid.uuid4().hex[:12]
    pool = KernelPool()
    try:
        run_session(pool, hosts[0], root, [f"# alpha {marker}\nprint('hello a')",
                                           "raise ValueError('on purpose')", "6 * 7"])
        run_session(pool, hosts[0], root, ["import os\nprint(len(os.environ) > 0)"])
        run_session(pool, hosts[1], root, [f"# beta {marker}\nprint('hello b')"])
    finally:
        pool.shutdown_all()
    for host in hosts:
        host.collector.stop()
        copy_store(pg, host.store, host.store_id, host.name)
    return {"pg": pg, "hosts": hosts, "marker": marker}


def without_store_path(notebook: str) -> dict:
    """A replayed notebook without the one field that names where it was read from."""
    nb = json.loads(notebook)
    nb["metadata"]["jupyter_audit"].pop("store")
    return nb


def test_log_sessions_and_replay_from_postgresql_match_the_store(trail):
    pg, marker = trail["pg"], trail["marker"]
    a = trail["hosts"][0]
    from_store = ["--store", str(a.store)]
    from_pg = ["--postgres", pg.url(), "--store-id", a.store_id]
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
    both = [json.loads(line) for line in cli("log", "--postgres", pg.url(), *grep).stdout.splitlines()]
    assert [r["jupyter"]["code"].split("\n")[0] for r in both] == [
        f"# alpha {marker}", f"# beta {marker}"]
    times = [r["@timestamp"] for r in cli_json("log", "--postgres", pg.url())]
    assert times == sorted(times), "records of several stores come in time order"
    for host in (a, b):
        by_host = cli("log", "--postgres", pg.url(), "--host", host.name, "--json").stdout
        by_id = cli("log", "--postgres", pg.url(), "--store-id", host.store_id, "--json").stdout
        assert by_host == by_id == "".join(line + "\n" for line in store_lines(host.store))
    every = cli("sessions", "--postgres", pg.url(), "--json").stdout.splitlines()
    assert len(every) == 3
    none = cli("log", "--postgres", pg.url(), "--host", "no-such-host", "--json")
    assert none.stdout == "" and "no forwarded store" in none.stderr


def cli_json(*args: str) -> list[dict]:
    return [json.loads(line) for line in cli(*args, "--json").stdout.splitlines()]


def duplicate_store(pg, store_id: str) -> str:
    """A copy of a forwarded store under a new id, to tamper with."""
    copy_id = str(uuid.uuid4())
    pg.psql(f"""
        INSERT INTO jupyter_audit.stores (store_id, host, public_key, key_id)
            SELECT '{copy_id}', host || '-copy', public_key, key_id
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
    return cli("verify", "--postgres", pg.url(), *args, check=False)


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
            expected = [f"sequence {inner + 1}: records {inner - 1} to {inner} deleted"]
        result = verify(pg, "--store-id", store_id)
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"store {store_id} (host {a.name}-copy): TAMPERED" in result.stdout
        for text in expected:
            assert text in result.stdout, result.stdout
    finally:
        pg.psql(f"DELETE FROM {records}; "
                f"DELETE FROM jupyter_audit.checkpoints WHERE store_id = '{store_id}'; "
                f"DELETE FROM jupyter_audit.stores WHERE store_id = '{store_id}'")
