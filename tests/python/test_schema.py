"""schema/audit-record.schema.json describes the stored records, and `log --json` prints
the stored lines byte for byte.

- One session of a collector of the test's own exercises every kind of record: cells with
  streams, rich and binary outputs (kept in full), shortened texts, errors, clear_output
  and display updates, widgets (comms), input() and getpass(), an interrupt, a forged
  message, a message whose content is not JSON, a refusal while the collector is down
  and the collector's restart; every record of that store must validate, and `log
  --json` must print the segments exactly.
- Every record of the suite's store (all audited kernels of the run so far) validates.
- The schema is strict where it matters: records with a missing chain, identity, session
  or code, a raw image, both `jupyter` and `collector`, … are rejected.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import zmq
from jsonschema import Draft202012Validator

from helpers import (
    BIN,
    DELIMITER,
    REPO,
    TIMEOUT,
    Signer,
    channel_url,
    connection_info,
    execute,
    proxy_argv,
    reply_for,
    run_ok,
    wait_until,
)

SCHEMA_PATH = REPO / "schema" / "audit-record.schema.json"
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


@pytest.fixture(scope="module")
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def log_json(store: Path) -> bytes:
    result = subprocess.run(
        [str(BIN), "log", "--store", str(store), "--json"], capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def segments(store: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((store / "segments").glob("*.jsonl")))


def problems(validator: Draft202012Validator, record: dict) -> list[str]:
    return [
        f"{error.json_path}: {error.message[:300]}"
        for error in sorted(validator.iter_errors(record), key=lambda e: e.json_path)
    ]


def validate_all(validator: Draft202012Validator, printed: bytes) -> list[dict]:
    records = [json.loads(line) for line in printed.splitlines()]
    failures = []
    for record in records:
        found = problems(validator, record)
        if found:
            event = record.get("event", {})
            failures.append(f"#{event.get('sequence')} {event.get('action')}: {found}")
    assert not failures, f"{len(failures)} of {len(records)} records invalid:\n" + "\n".join(
        failures[:20])
    return records


class Collector:
    """A collector of the test's own."""

    def __init__(self, root: Path) -> None:
        self.store = root / "store"
        self.socket = root / "collector.sock"
        self.log = root / "collector.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN), "collector", "--store", str(self.store), "--socket", str(self.socket)],
                stdin=subprocess.DEVNULL, stderr=log,
            )
        assert wait_until(self.socket.exists, 20), self.log.read_text()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            assert self.process.wait(timeout=20) == 0, self.log.read_text()


@pytest.fixture
def collector(tmp_dir):
    collector = Collector(tmp_dir)
    yield collector
    if collector.process and collector.process.poll() is None:
        collector.process.kill()
        collector.process.wait()


def audited_spec(socket: Path, *flags: str) -> str:
    name = f"ja-schema-{uuid.uuid4().hex[:8]}"
    spec_dir = Path(os.environ["JUPYTER_PATH"]) / "kernels" / name
    spec_dir.mkdir(parents=True)
    argv = proxy_argv(socket, *flags) + [
        sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec = {"argv": argv, "display_name": name, "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return name


def send_raw(km, frames: list[bytes]) -> None:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 1000
    sock.connect(channel_url(connection_info(km), "shell"))
    sock.send_multipart(frames)
    sock.close()


def answer(kc, msg_id: str, value: str) -> None:
    request = kc.get_stdin_msg(timeout=TIMEOUT)
    assert request["parent_header"]["msg_id"] == msg_id
    kc.input(value)


def test_every_kind_of_record_matches_the_schema(kernels, collector, validator):
    collector.start()
    km, kc = kernels.start(audited_spec(collector.socket, "--text-cap-bytes", "200",
                                        "--keep-binary"))
    cells = [
        "print('x' * 1000)",
        f"import base64\nfrom IPython.display import Image, HTML, JSON, display\n"
        f"display(Image(data=base64.b64decode({base64.b64encode(PNG).decode()!r}), format='png'))\n"
        "display(HTML('<b>' + 'y' * 500 + '</b>'))\ndisplay(JSON({'a': [1, 2]}))",
        "from IPython.display import clear_output\nh = display('first', display_id=True)\n"
        "clear_output(wait=True)\nh.update('second')\nprint('after')",
        "6 * 7",
        "import ipywidgets\nslider = ipywidgets.IntSlider(value=1)\ndisplay(slider)\n"
        "slider.value = 2",
    ]
    for code in cells:
        run_ok(kc, code)
    reply, _ = execute(kc, "1 / 0")
    assert reply["content"]["status"] == "error"

    for code, value in [("import getpass\nprint(len(getpass.getpass('Password: ')))", "hunter2"),
                        ("print(input('Name: '))", "Ada")]:
        msg_id = kc.execute(code, allow_stdin=True)
        answer(kc, msg_id, value)
        assert reply_for(kc.get_shell_msg, msg_id)["content"]["status"] == "ok"

    msg_id = kc.execute("import time\ntime.sleep(30)")
    time.sleep(1)
    km.interrupt_kernel()
    assert reply_for(kc.get_shell_msg, msg_id)["content"]["status"] == "error"

    # A forged signature and content that is not JSON: both rejected, on the record.
    signer = Signer(connection_info(km))
    _, parts = signer.parts("execute_request", Signer.execute_content("print('forged')"))
    send_raw(km, [DELIMITER, b"0" * 64, *parts])
    _, parts = signer.parts("comm_info_request", {})
    parts[3] = b"{not json"
    send_raw(km, [DELIMITER, signer.sign(parts), *parts])
    assert run_ok(kc, "print('still here')") == "still here\n"

    # Fail-closed: refused while the collector is down, recorded once it is back.
    collector.stop()
    reply, _ = execute(kc, "print('refused')")
    assert reply["content"]["status"] == "error", reply["content"]
    collector.start()
    assert wait_until(lambda: execute(kc, "print('back')")[0]["content"]["status"] == "ok",
                      TIMEOUT, 0.5)

    kc.stop_channels()
    km.shutdown_kernel()
    # The proxy flushes its last records before it exits.
    assert wait_until(lambda: b'"action":"session_end"' in segments(collector.store), TIMEOUT)
    collector.stop()

    printed = log_json(collector.store)
    assert printed == segments(collector.store), "log --json is the stored lines, byte for byte"
    records = validate_all(validator, printed)

    actions = {r["event"]["action"] for r in records}
    expected = {
        "collector_start", "collector_stop", "session_start", "session_end",
        "kernel_info_request", "kernel_info_reply", "execute_request", "execute_input",
        "execute_reply", "stream", "display_data", "update_display_data", "execute_result",
        "clear_output", "error", "comm_open", "comm_msg", "input_request", "input_reply",
        "interrupt", "message_rejected", "execution_refused", "shutdown_request",
        "shutdown_reply",
    }
    assert expected <= actions, f"not exercised: {sorted(expected - actions)}"
    jupyter = [r["jupyter"] for r in records if "jupyter" in r]
    assert any(isinstance(j.get("text"), dict) for j in jupyter), "a shortened stream text"
    assert any("base64" in j.get("data", {}).get("image/png", {}) for j in jupyter
               if isinstance(j.get("data"), dict)), "a binary kept in full"
    assert any(j.get("write_ahead_failed") for j in jupyter), "a late write-ahead record"
    assert any(j.get("rejected_msg_type") == "comm_info_request"
               and "not JSON" in j.get("reason", "") for j in jupyter), "content that is not JSON"
    assert any(isinstance(j.get("request", {}).get("buffers"), list) or
               "user_expressions" in j.get("request", {}).get("content", {})
               for j in jupyter), "a request recorded whole"
    assert any(j.get("value_dropped") for j in jupyter), "a password reply"
    assert not any("hunter2" in json.dumps(r) for r in records)


def test_suite_store_matches_the_schema(suite_store, validator):
    """All records of the suite's collector so far (it is still running: the stored lines
    may have grown after `log` read them, never changed)."""
    printed = log_json(suite_store)
    assert segments(suite_store).startswith(printed)
    assert printed.endswith(b"\n")
    records = validate_all(validator, printed)
    assert records[0]["event"]["action"] == "collector_start"


def valid_record() -> dict:
    return {
        "@timestamp": "2024-05-01T12:00:00.123456789Z",
        "event": {"action": "execute_request", "sequence": 5, "kind": "event",
                  "created": "2024-05-01T12:00:00Z", "ingested": "2024-05-01T12:00:00Z"},
        "user": {"id": "1000", "name": "alice"},
        "group": {"id": "1000"},
        "process": {"pid": 42},
        "host": {"name": "h"},
        "jupyter": {"session_id": "s", "kernel_id": "k", "msg_id": "m", "channel": "shell",
                    "from": "frontend", "claimed_username": "root", "client_session": "c",
                    "code": "print(1)"},
        "chain": {"prev": "0" * 64, "hash": "a" * 64},
    }


def collector_record() -> dict:
    record = valid_record()
    del record["jupyter"]
    record["event"]["action"] = "collector_start"
    record["collector"] = {"store": "/s", "socket": "/c.sock", "last_sequence": 0,
                           "store_created": True, "version": "0.1.0"}
    return record


def mutated(change) -> dict:
    record = valid_record()
    change(record)
    return record


INVALID = {
    "no chain": lambda r: r.pop("chain"),
    "chain hash not hex": lambda r: r["chain"].update(hash="xyz"),
    "no sequence": lambda r: r["event"].pop("sequence"),
    "no user id": lambda r: r["user"].pop("id"),
    "no user id, verified by peer credentials": lambda r: (
        r["user"].pop("id"), r["user"].update(verified_by="peercred")),
    "a Hub user without a name": lambda r: r.update(user={"verified_by": "jupyterhub"}),
    "a Hub user with a uid for an id": lambda r: r["user"].update(verified_by="jupyterhub"),
    "Hub details on an OS account": lambda r: r["user"].update(hub={"groups": []}),
    "verified by something else": lambda r: r["user"].update(verified_by="header"),
    "process.user without its uid": lambda r: r["process"].update(user={"name": "jovyan"}),
    "user id not a uid": lambda r: r["user"].update(id="root"),
    "no host": lambda r: r.pop("host"),
    "timestamp not RFC 3339": lambda r: r.update({"@timestamp": "yesterday"}),
    "no session id": lambda r: r["jupyter"].pop("session_id"),
    "execute_request without code": lambda r: r["jupyter"].pop("code"),
    "frontend message without the claimed user": lambda r: r["jupyter"].pop("claimed_username"),
    "both jupyter and collector": lambda r: r.update(collector={}),
    "neither jupyter nor collector": lambda r: r.pop("jupyter"),
    "unknown top-level key": lambda r: r.update(labels={}),
    "image stored raw": lambda r: (
        r["event"].update(action="display_data"),
        r["jupyter"].update(data={"image/png": "iVBORw0KGgo="})),
    "shortened text without its head": lambda r: (
        r["event"].update(action="stream"),
        r["jupyter"].update(text={"truncated": True, "size": 9, "sha256": "a" * 64,
                                  "tail": "x"})),
    "password reply with its value": lambda r: (
        r["event"].update(action="input_reply"),
        r["jupyter"].update(value="hunter2", value_dropped=True)),
    "session_end without its exit status": lambda r: r["event"].update(action="session_end"),
}


def test_schema_is_strict_where_it_matters(validator):
    assert problems(validator, valid_record()) == []
    assert problems(validator, collector_record()) == []
    image = mutated(lambda r: (r["event"].update(action="display_data"), r["jupyter"].update(
        data={"image/png": {"sha256": "b" * 64, "size": 3}, "text/plain": "<Image>"})))
    assert problems(validator, image) == []
    attested = mutated(lambda r: r.update(
        user={"name": "alice", "verified_by": "jupyterhub", "roles": ["user"],
              "hub": {"groups": ["lab"], "admin": False, "server": "", "token_id": "a1"}},
        process={"pid": 42, "user": {"id": "1000", "name": "jovyan"}}))
    assert problems(validator, attested) == []
    for name, change in INVALID.items():
        assert problems(validator, mutated(change)), f"accepted: {name}"
    forged = collector_record()
    forged["event"]["action"] = "execute_request"
    assert problems(validator, forged), "a collector record must be the collector's"
