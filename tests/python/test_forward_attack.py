"""Forwarding to PostgreSQL under attack (issue 12).

A notebook user on the collector host speaks the collector protocol directly (as code
in a cell could) and sends records built to trip the forwarder: review fields larger
than a btree index entry can hold, text PostgreSQL cannot keep in a `text` column (NUL),
escapes of lone surrogates, odd Unicode (BOM, U+2028, non-characters, astral). Whatever
the collector stores reaches PostgreSQL byte for byte (compared by hash in SQL) and
forwarding goes on past it. A password file that others can read is refused, and the
password shows in no log, status or argv.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

from helpers import BIN
from pgcluster import pg  # noqa: F401 (a fixture)
from test_audit import collectors, logs  # noqa: F401 (a fixture)
from test_forgery import send_records
from test_forward import (
    WRITER,
    db,  # noqa: F401 (a fixture)
    forwarding_collector,
    local_records,
    rows,
    status,
    store_id,
    wait_forwarded,
)


def hostile(session: str, **jupyter: object) -> dict:
    return {"event": {"action": "stream"},
            "jupyter": {"session_id": session, "name": "stdout", **jupyter}}


def assert_same_bytes(pg, store: Path) -> None:  # noqa: F811
    """PostgreSQL's `line` of every record hashes (in SQL, over its UTF-8 bytes) to the
    SHA-256 of the stored line."""
    sid = store_id(store)
    local = {seq: hashlib.sha256(line.encode()).hexdigest()
             for seq, line, _prev, _hash in local_records(store)}
    remote = {int(seq): digest for seq, digest in rows(
        pg, "SELECT sequence, encode(sha256(convert_to(line, 'UTF8')), 'hex') "
            f"FROM jupyter_audit.records WHERE store_id = '{sid}'")}
    assert remote == local


def test_hostile_records_are_forwarded_exactly_and_do_not_stop_forwarding(
        collectors, db, tmp_dir):  # noqa: F811
    collector = forwarding_collector(collectors, tmp_dir, db)
    socket = str(collector.socket)
    odd = "\ufeff bom \u2028 sep \uffff \U0001f600 \u0301e \x7f \x01 \\u0000 \"q\""
    answers = send_records(socket, [
        # A session id and a message id far past a btree entry's 2704 bytes (random, so
        # that compression cannot shrink them).
        hostile(os.urandom(6000).hex(), msg_id=os.urandom(6000).hex(), text="big ids"),
        hostile("s-nul\u0000", msg_id="m\u0000", text="nul \u0000 inside"),
        hostile("s-odd", msg_id=odd, parent_msg_id=odd, text=odd),
    ])
    assert all(a.get("type") != "error" for a in answers), answers
    # A lone surrogate: the collector either refuses the record or stores it; either
    # way forwarding must go on. (json.dumps writes it as the escape \ud800.)
    try:
        send_records(socket, [hostile("s-surrogate", text="\ud800 lone")])
    except EOFError:
        pass  # refused as malformed JSON: the connection is closed
    # After them, an ordinary record: forwarding went past the hostile ones.
    send_records(socket, [hostile("s-after", text="after")])
    wait_forwarded(db, collector.store, logs(collector))
    assert_same_bytes(db, collector.store)
    sid = store_id(collector.store)
    # The review columns hold what fits an index entry, and the line holds all.
    lengths = rows(db, "SELECT octet_length(session_id), octet_length(msg_id), "
                       "octet_length(line) FROM jupyter_audit.records WHERE store_id = "
                       f"'{sid}' AND line LIKE '%big ids%'")
    assert len(lengths) == 1
    session_len, msg_len, line_len = map(int, lengths[0])
    assert session_len <= 2048 and msg_len <= 2048 and line_len > 24000
    collector.stop()
    wait_forwarded(db, collector.store, logs(collector))
    assert_same_bytes(db, collector.store)


def test_a_password_file_others_can_read_is_refused(collectors, db, tmp_dir):  # noqa: F811
    secret = "s3cret-Pa55word-never-shown"
    db.psql(f"ALTER ROLE {WRITER} PASSWORD '{secret}'")
    password_file = tmp_dir / "pg-password"
    password_file.write_text(secret + "\n")
    password_file.chmod(0o644)
    url = db.url(WRITER)
    result = subprocess.run(
        [str(BIN), "collector", "--store", str(tmp_dir / "store"), "--socket",
         str(tmp_dir / "c.sock"), "--forward-postgres", url, "--postgres-password-file",
         str(password_file)], capture_output=True, text=True, timeout=30,
        stdin=subprocess.DEVNULL)
    assert result.returncode != 0, "the collector started with a world-readable password file"
    assert "pg-password" in result.stderr and "0600" in result.stderr, result.stderr
    assert secret not in result.stderr + result.stdout
    # At 0600 it is taken; the password is in no log, status, record or argv.
    password_file.chmod(0o600)
    collector = forwarding_collector_url(collectors, tmp_dir / "ok", url, password_file)
    send_records(str(collector.socket), [hostile("s-pw", text="x")])
    wait_forwarded(db, collector.store, logs(collector))
    argv = Path(f"/proc/{collector.process.pid}/cmdline").read_bytes()
    assert secret.encode() not in argv
    shown = json.dumps(status(collector.store))
    collector.stop()
    assert secret not in shown
    assert secret not in collector.log()
    for path in collector.store.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def forwarding_collector_url(collectors, root: Path, url: str, password_file: Path):
    from test_audit import own_collector
    root.mkdir()
    return own_collector(collectors, root, "--forward-postgres", url,
                         "--postgres-password-file", str(password_file))
