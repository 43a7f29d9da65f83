"""What the trail says about frontend messages the proxy does not relay.

- A signed request sent again with its hex signature re-cased (upper or mixed case) is a
  replay: it runs once and is recorded once (the proxy re-signs what it relays, so
  ipykernel itself dropped the copies, but the proxy recorded each as run). Jupyter
  signs in lowercase hex and refuses any other spelling; a request never seen before
  with an upper-case signature does not run either, on ipykernel as behind the proxy.
- As root: a wrong-key request that another local user sends to the kernel's tcp shell
  port is on the record with what is known of the sender (peer address, that user's uid
  and name), marked as not the proxy's user, and `jupyter-audit log` says so.
"""

from __future__ import annotations

import hmac
import json
import os
import pwd
import subprocess
import sys

import pytest

from helpers import AUDITED, DELIMITER, TIMEOUT, Signer, connection_info, system_user, unique_marker
from test_audit import action, describe, field, wait_for_records
from test_hostile import RawFrontend, reason_kind, session_start
from test_review import review


def recased(signature: bytes) -> dict[str, bytes]:
    """The signature with its hex letters in upper case, and every other one of them."""
    mixed = bytearray(signature)
    letters = [i for i, byte in enumerate(mixed) if chr(byte) in "abcdef"]
    assert letters, signature  # (10/16)**64 odds of a digest without letters
    for i in letters[::2]:
        mixed[i] = ord(chr(mixed[i]).upper())
    return {"upper": signature.upper(), "mixed": bytes(mixed)}


def test_a_recased_signature_is_a_replay(kernels, kernel_name, suite_store, tmp_dir):
    km, _ = kernels.start(kernel_name)
    session = (field(session_start(suite_store, km), "jupyter.session_id")
               if kernel_name == AUDITED else None)
    fe = RawFrontend(km)
    log = unique_marker(tmp_dir, "recased")
    fresh_marker = unique_marker(tmp_dir, "uppercase")
    try:
        msg_id, frames = fe.signer.execute_request(f"open({str(log)!r}, 'a').write('ran\\n')")
        fe.send(frames)
        fe.execute_ok("pass")
        for signature in recased(frames[1]).values():
            fe.send([DELIMITER, signature, *frames[2:]])
        # Never sent before, but not signed the way Jupyter signs.
        fresh_id, fresh = fe.signer.execute_request(f"open({str(fresh_marker)!r}, 'w').close()")
        fe.send([DELIMITER, fresh[1].upper(), *fresh[2:]])
        # Shell requests run in order: once this is answered, the others had their turn.
        fe.execute_ok("pass")
    finally:
        fe.close()
    assert log.read_text() == "ran\n", "a re-cased copy of a request ran again"
    assert not fresh_marker.exists(), "an upper-case signature was accepted"
    if session is None:
        return

    def mine(rs: list[dict], msg: str) -> list[dict]:
        return [r for r in rs if field(r, "jupyter.session_id") == session
                and field(r, "jupyter.msg_id") == msg]

    records = wait_for_records(
        suite_store, lambda rs: len(mine(rs, msg_id)) >= 3 and mine(rs, fresh_id),
        "the request, its re-cased copies and the upper-case request on the record")
    copies = mine(records, msg_id)
    assert sorted(action(r) for r in copies) == [
        "execute_request", "message_rejected", "message_rejected"], describe(copies)
    assert all("replayed message" in field(r, "jupyter.reason") for r in copies
               if action(r) == "message_rejected"), describe(copies)
    rejected = mine(records, fresh_id)
    assert [action(r) for r in rejected] == ["message_rejected"], describe(rejected)
    assert "lowercase" in field(rejected[0], "jupyter.reason"), rejected[0]


OTHER_USER = "jupyter-audit-mallory"

# A ZeroMQ DEALER by hand (ZMTP 3.0, NULL): connects, reads the greeting and READY as
# ZeroMQ does before it sends, sends the frames given as JSON hex on stdin, prints the
# port it sent from, and closes at once (as a sender that hides would).
RAW_DEALER = r"""
import json, socket, struct, sys
def frame(flags, body):
    if len(body) > 255:
        return bytes([flags | 2]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body
frames = [bytes.fromhex(f) for f in json.loads(sys.stdin.readline())]
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\0") + bytes(32))
s.sendall(frame(4, b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"))
ready = frame(4, b"\x05READY\x0bSocket-Type" + struct.pack(">I", 6) + b"ROUTER")
got = b""
while len(got) < 64 + len(ready):
    chunk = s.recv(4096)
    if not chunk:
        sys.exit("closed during the handshake")
    got += chunk
for i, f in enumerate(frames):
    s.sendall(frame(1 if i < len(frames) - 1 else 0, f))
print(s.getsockname()[1], flush=True)
s.close()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs a second local user "
                    f"({OTHER_USER}) against a kernel that root owns")
def test_a_rejection_from_another_local_user_names_the_sender(kernels, suite_store):
    other = system_user(OTHER_USER)
    km, _ = kernels.start(AUDITED)
    session = field(session_start(suite_store, km), "jupyter.session_id")
    info = connection_info(km)
    assert info.get("transport", "tcp") == "tcp", info
    msg_id, parts = Signer(info).parts("execute_request",
                                       Signer.execute_content("print('not yours')"))
    wrong_key = hmac.new(b"a guessed key", digestmod="sha256")
    for part in parts:
        wrong_key.update(part)
    frames = [DELIMITER, wrong_key.hexdigest().encode(), *parts]
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    sender = subprocess.Popen(
        ["runuser", "-u", OTHER_USER, "--", python, "-c", RAW_DEALER, info["ip"],
         str(info["shell_port"])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def rejected(rs: list[dict]) -> list[dict]:
        return [r for r in rs if field(r, "jupyter.session_id") == session
                and field(r, "jupyter.msg_id") == msg_id]

    out, err = sender.communicate(json.dumps([f.hex() for f in frames]) + "\n",
                                  timeout=TIMEOUT)
    assert sender.returncode == 0, err
    port = int(out)
    records = wait_for_records(suite_store, rejected, "the other user's rejected request")
    [record] = rejected(records)
    assert action(record) == "message_rejected", record
    assert reason_kind(record) == "bad_signature", record
    # user.* is the proxy's owner (verified by the collector), not the sender.
    assert field(record, "user.name") == pwd.getpwuid(os.getuid()).pw_name, record
    assert field(record, "jupyter.sender") == {
        "transport": "tcp", "address": f"{info['ip']}:{port}", "local": True,
        "uid": other.pw_uid, "user_name": OTHER_USER}, record
    assert "not the sender" in field(record, "jupyter.identity_note", ""), record

    table = review("log", "--store", str(suite_store), "--session", session).stdout
    [line] = [row for row in table.splitlines() if "message_rejected" in row]
    assert f"{info['ip']}:{port} uid {other.pw_uid} ({OTHER_USER})" in line, line
    assert "not the proxy's user" in line, line
