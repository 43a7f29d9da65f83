"""Records a notebook user could forge, and the collector refusing them on the record.

- A session's records come from its proxy: code in a cell that connects to the collector
  socket and writes `execution_refused` for a cell that ran, in its own session, is
  refused; a `forged_record` record with the kernel's verified identity says so; the
  cell stays a cell that ran in `sessions` and `replay`. The same holds right after a
  collector restart (the forger tries before its proxy has reconnected), and the proxy
  itself carries on writing.
- Senders write only sender fields: flat dotted keys (`"user.name"`, `"host.name"`,
  `"process.pid"`), `@timestamp`, the collector's objects, the store's `event` fields
  and `jupyter` keys that are not plain names are refused and recorded
  (`record_refused`), never stored next to the stamped identity.

As root the collector runs as a user of its own (as deployed), the kernel as root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import nbformat
import pytest

from helpers import BIN, KernelPool, execute, run_ok, system_user
from test_schema import problems, validator  # noqa: F401 (a fixture)
from test_audit import (
    LoggedKernel,
    action,
    audited_kernelspec,
    by_msg_id,
    children,
    collectors,  # noqa: F401 (a fixture)
    describe,
    field,
    logs,
    own_collector,
    read_store,
    verify,
    verify_output,
    wait_for_records,
)

COLLECTOR_USER = "jupyter-audit-collector"

# The collector protocol by hand, as code in a notebook (or any local process) could
# speak it: a 4-byte big-endian length and a JSON body per frame.
SENDER = r'''
import json as _json, socket as _socket, struct as _struct

def _frame(sock, obj):
    body = _json.dumps(obj).encode()
    sock.sendall(_struct.pack(">I", len(body)) + body)

def _read(sock):
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("the collector closed the connection")
            data += chunk
        return data
    return _json.loads(exactly(_struct.unpack(">I", exactly(4))[0]))

def send_records(path, records):
    """Says hello, sends each record and returns the collector's answer to each."""
    with _socket.socket(_socket.AF_UNIX) as sock:
        sock.connect(path)
        _frame(sock, {"type": "hello", "version": 1})
        _read(sock)
        answers = []
        for number, record in enumerate(records, 1):
            _frame(sock, {"type": "record", "id": number, "record": record})
            answers.append(_read(sock))
        return answers
'''
_sender: dict = {}
exec(SENDER, _sender)
send_records = _sender["send_records"]


@pytest.fixture
def deployed_collector(collectors, tmp_dir):
    """A collector as deployed: as root, run as a user of its own with the socket open
    to everyone (0666), in a directory that user can reach; otherwise as this user."""
    if os.geteuid() != 0:
        yield own_collector(collectors, tmp_dir)
        return
    owner = system_user(COLLECTOR_USER)
    base = Path(tempfile.mkdtemp(prefix="ja-forgery-"))
    try:
        base.chmod(0o755)
        for sub in ("collector", "run"):
            (base / sub).mkdir()
            os.chown(base / sub, owner.pw_uid, owner.pw_gid)
            (base / sub).chmod(0o755)
        yield own_collector(collectors, base, "--socket-mode", "666",
                            store=base / "collector" / "store",
                            socket=base / "run" / "collector.sock",
                            run_as=(owner.pw_uid, owner.pw_gid))
    finally:
        for collector in collectors:
            collector.kill()
        shutil.rmtree(base, ignore_errors=True)


def review(*args: str) -> str:
    result = subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr}"
    return result.stdout


def refusal_for(request: dict, reason: str) -> dict:
    """An `execution_refused` record for the cell of `request`, as its proxy writes one."""
    jupyter = request["jupyter"]
    return {
        "event": {"action": "execution_refused", "created": request["event"]["created"],
                  "kind": "event"},
        "jupyter": {
            "session_id": jupyter["session_id"], "kernel_id": jupyter.get("kernel_id"),
            "kernel_name": jupyter.get("kernel_name"), "msg_id": jupyter["msg_id"],
            "refused_msg_type": "execute_request", "channel": "shell", "reason": reason,
        },
    }


def in_kernel(kc, code: str) -> tuple[int, object]:
    """Runs `code` (which sets `result`) in the kernel; returns the kernel's pid and result."""
    out = run_ok(kc, "import os, json\n" + code + "\nprint(os.getpid(), json.dumps(result))")
    pid, answer = out.split(" ", 1)
    return int(pid), json.loads(answer)


def assert_schema_valid(validator, store: Path) -> None:  # noqa: F811
    failures = [(action(r), found) for r in read_store(store) if (found := problems(validator, r))]
    assert not failures, failures[:5]


def assert_refused(answer: dict, *words: str) -> None:
    assert answer.get("type") == "nack" and answer.get("retry") is False, answer
    for word in words:
        assert word in answer.get("error", ""), answer


def test_a_kernel_cannot_write_records_into_its_own_session(deployed_collector, tmp_dir,
                                                            validator):  # noqa: F811
    collector = deployed_collector
    store, socket = collector.store, str(collector.socket)
    pool = KernelPool()
    try:
        kernel = LoggedKernel(pool, audited_kernelspec(collector.socket), tmp_dir)
        kc = kernel.kc
        reply, _ = execute(kc, "print('this cell ran')")
        assert reply["content"]["status"] == "ok", reply
        ran_id = reply["parent_header"]["msg_id"]
        records = wait_for_records(
            store, lambda rs: any(action(r) == "execute_reply" for r in children(rs, ran_id)),
            "the cell that ran", logs(collector, kernel))
        request = by_msg_id(records, ran_id, "execute_request")[0]
        session = field(request, "jupyter.session_id")
        proxy_pid = field(request, "process.pid")

        # The kernel knows its session id; it says the cell that ran was refused.
        run_ok(kc, SENDER)
        forged = refusal_for(request, "collector unavailable: forged by the kernel")
        kernel_pid, answers = in_kernel(
            kc, f"result = send_records({socket!r}, json.loads({json.dumps([forged])!r}))")
        assert kernel_pid != proxy_pid
        assert_refused(answers[0], session)

        records = wait_for_records(
            store, lambda rs: any(action(r) == "forged_record" for r in rs),
            "the forged_record record", logs(collector, kernel))
        listing = describe(records)
        assert by_msg_id(records, ran_id, "execution_refused") == [], listing
        [trace] = [r for r in records if action(r) == "forged_record"]
        # Who tried, verified by the collector: the kernel's process and user.
        assert field(trace, "process.pid") == kernel_pid, trace
        assert field(trace, "user.id") == str(os.getuid()), trace
        assert field(trace, "collector.refused.session_id") == session, trace
        assert field(trace, "collector.refused.action") == "execution_refused", trace
        assert field(trace, "collector.refused.msg_id") == ran_id, trace
        assert field(trace, "collector.session_owner.pid") == proxy_pid, trace
        assert field(trace, "event.outcome") == "failure", trace
        # Outside the session: not one of its records.
        assert "jupyter" not in trace, trace

        # The review tools still show the cell as one that ran.
        [listed] = [s for s in map(json.loads, review("sessions", "--store", str(store),
                                                       "--json").splitlines())
                    if s["session_id"] == session]
        assert listed["refused"] == 0, listed
        notebook = nbformat.reads(review("replay", "--store", str(store), "--session", session,
                                         "-o", "-"),
                                  as_version=4)
        assert [c.metadata.get("jupyter_audit", {}).get("refused") for c in notebook.cells] \
            == [None] * len(notebook.cells), notebook.cells
        assert notebook.cells[0].source == "print('this cell ran')"
        assert notebook.cells[0].outputs[0]["text"] == "this cell ran\n"

        # Across a restart: the forger waits for the collector to go away and writes the
        # moment it is back, before its proxy has anything to send.
        run_ok(kc, (
            "import os, threading, time\nrace = []\n"
            "def forge_after_restart(path, records):\n"
            "    deadline = time.monotonic() + 60\n"
            "    while os.path.exists(path) and time.monotonic() < deadline:\n"
            "        time.sleep(0.005)\n"
            "    while time.monotonic() < deadline:\n"
            "        try:\n"
            "            race.append(send_records(path, records))\n"
            "            return\n"
            "        except (OSError, EOFError):\n"
            "            time.sleep(0.005)\n"
            f"threading.Thread(target=forge_after_restart, args=({socket!r}, "
            f"json.loads({json.dumps([forged])!r})), daemon=True).start()"))
        collector.stop()
        collector.start()
        _, raced = in_kernel(kc, "import time\nwhile not race:\n    time.sleep(0.01)\n"
                                 "result = race[0]")
        assert_refused(raced[0], session)
        # The proxy's own records are still its own after the restart.
        reply, msgs = execute(kc, "print('after the restart')")
        assert reply["content"]["status"] == "ok", f"{reply}\n{logs(collector, kernel)}"
        after_id = reply["parent_header"]["msg_id"]
        records = wait_for_records(
            store, lambda rs: any(action(r) == "execute_reply" for r in children(rs, after_id))
            and len([r for r in rs if action(r) == "forged_record"]) == 2,
            "the cell after the restart and the second forged_record", logs(collector, kernel))
        listing = describe(records)
        after = by_msg_id(records, after_id, "execute_request")[0]
        assert field(after, "process.pid") == proxy_pid, after
        assert "write_ahead_failed" not in after["jupyter"], after
        assert by_msg_id(records, ran_id, "execution_refused") == [], listing
        assert all(field(r, "collector.refused.session_id") == session
                   for r in records if action(r) == "forged_record"), listing
    finally:
        pool.shutdown_all()
    collector.stop()
    result = verify(collector.store)
    assert result.returncode == 0, verify_output(result)
    assert_schema_valid(validator, collector.store)
    assert_schema_valid(validator, store)


# Fields a SIEM that flattens nested objects would merge with the stamped identity.
FORGED_FIELDS = {
    "user.name": lambda r: r.update({"user.name": "alice"}),
    "host.name": lambda r: r.update({"host.name": "elsewhere"}),
    "process.pid": lambda r: r.update({"process.pid": 1}),
    "@timestamp": lambda r: r.update({"@timestamp": "1970-01-01T00:00:00Z"}),
    "user": lambda r: r.update(user={"name": "root", "id": "0"}),
    "chain": lambda r: r.update(chain={"prev": "0" * 64, "hash": "0" * 64}),
    "event.sequence": lambda r: r["event"].update(sequence=1),
    "jupyter.user.name": lambda r: r["jupyter"].update({"user.name": "alice"}),
    "event.action": lambda r: r["event"].update(action="collector_start"),
}


def test_a_sender_writes_only_sender_fields(collectors, tmp_dir, validator):  # noqa: F811
    collector = own_collector(collectors, tmp_dir)
    session = str(uuid.uuid4())

    def record(code: str) -> dict:
        return {"event": {"action": "execute_request", "kind": "event",
                          "created": "2024-05-01T12:00:00Z"},
                "jupyter": {"session_id": session, "msg_id": uuid.uuid4().hex, "code": code}}

    forged = []
    for name, change in FORGED_FIELDS.items():
        r = record(f"forged {name}")
        change(r)
        forged.append(r)
    answers = send_records(str(collector.socket),
                           [record("before"), *forged, record("after")])
    assert answers[0]["type"] == "ack", answers[0]
    assert answers[-1]["type"] == "ack", answers[-1]
    for name, answer in zip(FORGED_FIELDS, answers[1:-1]):
        assert_refused(answer, name)

    records = wait_for_records(
        collector.store,
        lambda rs: len([r for r in rs if action(r) == "record_refused"]) == len(FORGED_FIELDS),
        "a record_refused per forged field", collector.log())
    listing = describe(records)
    codes = [field(r, "jupyter.code") for r in records if field(r, "jupyter.session_id") == session]
    assert codes == ["before", "after"], listing
    refusals = [r for r in records if action(r) == "record_refused"]
    for name, refusal in zip(FORGED_FIELDS, refusals):
        assert field(refusal, "process.pid") == os.getpid(), refusal
        assert field(refusal, "user.id") == str(os.getuid()), refusal
        assert field(refusal, "collector.refused.session_id") == session, refusal
        assert name in field(refusal, "collector.refused.fields", []), refusal
    # Nothing a sender wrote sits beside the stamped identity.
    allowed = {"@timestamp", "event", "user", "group", "process", "host", "chain", "jupyter",
               "collector"}
    assert all(set(r) <= allowed for r in records), listing
    assert all(set(r["jupyter"]) == {k for k in r["jupyter"] if k.isidentifier()}
               for r in records if "jupyter" in r), listing
    senders = [r for r in records if not action(r).startswith("collector_")]
    assert {field(r, "user.id") for r in senders} == {str(os.getuid())}, listing
    assert {field(r, "host.name") for r in records} == {os.uname().nodename}, listing
    collector.stop()
    result = verify(collector.store)
    assert result.returncode == 0, verify_output(result)
    assert_schema_valid(validator, collector.store)


def test_the_suites_proxies_had_no_record_refused(suite_store):
    """Everything the suite's audited kernels wrote so far was theirs to write: no record
    of theirs was refused (a proxy that writes a field outside the sender's fields, or
    for another session, would show here)."""
    refusals = [r for r in read_store(suite_store)
                if action(r) in ("forged_record", "record_refused", "refusals_suppressed")]
    assert refusals == [], describe(refusals)
