"""The review is audited too: the console's records (`review_access`, `review_mark`) are
taken by the collector only from the OS account it names with `--console-user`, and that
account writes nothing else.

- The console's account, speaking the collector protocol as `serve`'s trail does, puts a
  view and a mark on the record: stored with the `review` object, stamped with the
  console's verified account, valid against the schema, listed by `log --action`.
- The same account's `execute_request` is refused (answered and recorded).
- Code in a notebook kernel (another account) that writes a `review_access` for its own
  made-up reviewer is refused, answered with why, and recorded as `record_refused` under
  the kernel's verified identity; no review record is stored.

Root only: the console, the collector and the notebook user must be three OS accounts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from helpers import BIN, KernelPool, system_user
from test_audit import (
    LoggedKernel,
    action,
    audited_kernelspec,
    collectors,  # noqa: F401 (a fixture)
    describe,
    field,
    logs,
    own_collector,
    read_store,
    wait_for_records,
)
from test_forgery import SENDER, assert_refused, in_kernel
from test_schema import problems, validator  # noqa: F401 (a fixture)

COLLECTOR_USER = "jupyter-audit-collector"
CONSOLE_USER = "jupyter-audit-review"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root: the console, the collector and the notebook user must be distinct OS "
           "accounts (the collector tells the console by its peer credentials)",
)


@pytest.fixture
def console_collector(collectors, tmp_dir):  # noqa: F811
    """A collector as deployed (its own user, socket 0666) that names CONSOLE_USER as the
    review console's account."""
    owner = system_user(COLLECTOR_USER)
    system_user(CONSOLE_USER)
    base = Path(tempfile.mkdtemp(prefix="ja-review-trail-"))
    try:
        base.chmod(0o755)
        for sub in ("collector", "run"):
            (base / sub).mkdir()
            os.chown(base / sub, owner.pw_uid, owner.pw_gid)
            (base / sub).chmod(0o755)
        yield own_collector(collectors, base, "--socket-mode", "666",
                            "--console-user", CONSOLE_USER,
                            store=base / "collector" / "store",
                            socket=base / "run" / "collector.sock",
                            run_as=(owner.pw_uid, owner.pw_gid))
    finally:
        for collector in collectors:
            collector.kill()
        shutil.rmtree(base, ignore_errors=True)


def review_access(console_session: str, reviewer: str, viewed_session: str) -> dict:
    """A `review_access` record as the console's trail writes it."""
    return {
        "event": {"action": "review_access", "kind": "event", "outcome": "success"},
        "jupyter": {"session_id": console_session},
        "review": {"reviewer": {"name": reviewer, "scopes": ["custom:jupyter-audit:read"]},
                   "view": "session", "session_id": viewed_session, "outputs": False},
    }


def as_console(socket: Path, records: list[dict]) -> tuple[int, list[dict]]:
    """Sends `records` from a process of the console's account; its pid and the answers."""
    code = (SENDER + "\nimport os, sys\n"
            "answers = send_records(sys.argv[1], _json.loads(sys.argv[2]))\n"
            "print(os.getpid(), _json.dumps(answers))\n")
    result = subprocess.run(
        ["runuser", "-u", CONSOLE_USER, "--", "/usr/bin/python3", "-c", code, str(socket),
         json.dumps(records)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    pid, answers = result.stdout.split(" ", 1)
    return int(pid), json.loads(answers)


def test_only_the_console_account_writes_review_records(console_collector, tmp_dir,
                                                        validator):  # noqa: F811
    collector = console_collector
    store, socket = collector.store, collector.socket
    console_session = f"console-{uuid.uuid4()}"
    mark = {
        "event": {"action": "review_mark", "kind": "event", "outcome": "success"},
        "jupyter": {"session_id": console_session},
        "review": {"reviewer": {"name": "auditor", "scopes": ["custom:jupyter-audit:read"]},
                   "view": "mark", "session_id": "alice-session", "mark": "flagged",
                   "note": "reads ~/.ssh"},
    }
    execute = {
        "event": {"action": "execute_request", "kind": "event"},
        "jupyter": {"session_id": console_session, "msg_id": "m1", "code": "print(1)"},
    }
    console_pid, answers = as_console(
        socket, [review_access(console_session, "auditor", "alice-session"), mark, execute])
    assert [a["type"] for a in answers] == ["ack", "ack", "nack"], answers
    assert_refused(answers[2], "review console")

    # A notebook's code, as another account, says a reviewer looked at its session.
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(socket), tmp_dir)
        kc = kernel.kc
        forged = review_access(f"console-{uuid.uuid4()}", "auditor", "someone-else")
        kernel_pid, kernel_answers = in_kernel(
            kc, SENDER + f"\nresult = send_records({str(socket)!r}, "
                         f"json.loads({json.dumps([forged])!r}))")
        assert_refused(kernel_answers[0], "--console-user")

        records = wait_for_records(
            store, lambda rs: sum(action(r) == "record_refused" for r in rs) >= 2,
            "the two refusals", logs(collector, kernel))
    finally:
        pool.shutdown_all()
    listing = describe(records)

    reviews = [r for r in records if "review" in r]
    assert [action(r) for r in reviews] == ["review_access", "review_mark"], listing
    for record in reviews:
        # Stamped by the collector with the console's verified account and process.
        assert field(record, "user.name") == CONSOLE_USER, record
        assert field(record, "user.verified_by") == "peercred", record
        assert field(record, "process.pid") == console_pid, record
        assert field(record, "jupyter.session_id") == console_session, record
    assert reviews[0]["review"] == review_access(console_session, "auditor",
                                                 "alice-session")["review"]
    assert reviews[1]["review"]["mark"] == "flagged"
    assert reviews[1]["review"]["note"] == "reads ~/.ssh"

    refusals = [r for r in records if action(r) == "record_refused"]
    [from_console] = [r for r in refusals if field(r, "process.pid") == console_pid]
    assert field(from_console, "collector.refused.action") == "execute_request", from_console
    assert field(from_console, "user.name") == CONSOLE_USER
    [from_kernel] = [r for r in refusals if field(r, "process.pid") == kernel_pid]
    assert field(from_kernel, "collector.refused.action") == "review_access", from_kernel
    assert field(from_kernel, "user.id") == "0", from_kernel
    assert "--console-user" in field(from_kernel, "collector.reason"), from_kernel
    assert not any(action(r) == "execute_request" and field(r, "process.pid") == console_pid
                   for r in records), listing

    [start] = [r for r in records if action(r) == "collector_start"]
    assert field(start, "collector.console_users") == [CONSOLE_USER], start
    failures = [(action(r), found) for r in read_store(store) if (found := problems(validator, r))]
    assert not failures, failures[:5]

    # The review tools say who looked at what.
    listed = subprocess.run(
        [str(BIN), "log", "--store", str(store), "--action", "review_access"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert listed.returncode == 0, listed.stderr
    assert "auditor viewed session alice-session without outputs" in listed.stdout, listed.stdout
    assert "someone-else" not in listed.stdout, listed.stdout
    marks = subprocess.run(
        [str(BIN), "log", "--store", str(store), "--action", "review_mark"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert "auditor marked session alice-session flagged: reads ~/.ssh" in marks.stdout, \
        marks.stdout
    sessions = subprocess.run(
        [str(BIN), "sessions", "--store", str(store), "--json"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert console_session not in sessions.stdout, "the console's records are no kernel session"


def test_serve_records_views_through_the_collector_socket():
    usage = subprocess.run([str(BIN), "serve", "--help"], capture_output=True, text=True,
                           timeout=60)
    assert "--collector-socket" in usage.stdout, usage.stdout
