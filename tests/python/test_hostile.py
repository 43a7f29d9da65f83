"""Hostile frontends, talking pyzmq directly to the kernel's ports.

Forged signatures and replayed messages must never execute; garbage must not bring the
proxy down. Each case runs against ipykernel too: it must behave the same.
"""

from __future__ import annotations

import hmac
import json
import time
import uuid

import pytest
import zmq

from helpers import (
    DELIMITER,
    TIMEOUT,
    Signer,
    channel_url,
    connection_info,
    run_ok,
    unique_marker,
)


class RawFrontend:
    """A DEALER socket on one channel of the kernel, signing with the connection key."""

    def __init__(self, km, channel: str = "shell") -> None:
        info = connection_info(km)
        self.signer = Signer(info)
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.linger = 0
        self.sock.identity = f"hostile-{uuid.uuid4().hex[:8]}".encode()
        self.sock.connect(channel_url(info, channel))

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def reply_to(self, msg_id: str, timeout: float = TIMEOUT) -> tuple[dict, list[dict]]:
        """The reply to msg_id, and every other message received before it."""
        others = []
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no reply to {msg_id}; got {others}"
            if not self.sock.poll(int(remaining * 1000)):
                continue
            msg = Signer.decode(self.sock.recv_multipart())
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg, others
            others.append(msg)

    def request(self, msg_type: str, content: dict) -> tuple[dict, list[dict]]:
        msg_id, frames = self.signer.message(msg_type, content)
        self.send(frames)
        return self.reply_to(msg_id)

    def execute_ok(self, code: str) -> list[dict]:
        msg_id, frames = self.signer.execute_request(code)
        self.send(frames)
        reply, others = self.reply_to(msg_id)
        assert reply["header"]["msg_type"] == "execute_reply"
        assert reply["content"]["status"] == "ok", reply["content"]
        return others

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def frontend(kernels, kernel_name):
    km, _ = kernels.start(kernel_name)
    fe = RawFrontend(km)
    yield km, fe
    fe.close()


def forged_signatures(signer: Signer, parts: list[bytes]) -> dict[str, bytes]:
    wrong_key = hmac.new(b"not the key", digestmod=signer.digest)
    for p in parts:
        wrong_key.update(p)
    good = signer.sign(parts)
    return {
        "wrong key": wrong_key.hexdigest().encode(),
        "empty": b"",
        "zeros": b"0" * len(good),
        "truncated": good[:-2],
        "not hex": b"z" * len(good),
    }


def test_forged_signature_never_executes(frontend, tmp_dir):
    km, fe = frontend
    marker = unique_marker(tmp_dir, "forged")
    code = f"open({str(marker)!r}, 'w').close()"
    _, parts = fe.signer.parts("execute_request", Signer.execute_content(code))
    for sig in forged_signatures(fe.signer, parts).values():
        fe.send([DELIMITER, sig, *parts])
    # Tampered content under a signature that was valid for other content.
    _, honest = fe.signer.parts("execute_request", Signer.execute_content("pass"))
    fe.send([DELIMITER, fe.signer.sign(honest), *honest[:3], parts[3]])

    # Shell requests run in order: once this one is answered, the forged ones had their turn.
    others = fe.execute_ok("x = 1")
    assert not any(
        m["header"]["msg_type"] == "execute_reply" and m["content"].get("status") == "ok"
        for m in others
    ), others
    assert not marker.exists(), "a request with a forged signature was executed"
    fe.execute_ok("y = 2")
    assert not marker.exists()
    # The same request, signed correctly, does run (so the check above is not vacuous).
    fe.send([DELIMITER, fe.signer.sign(parts), *parts])
    fe.execute_ok("z = 3")
    assert marker.exists()


def test_replayed_message_runs_once(frontend, tmp_dir):
    km, fe = frontend
    log = unique_marker(tmp_dir, "replay")
    msg_id, frames = fe.signer.execute_request(f"open({str(log)!r}, 'a').write('ran\\n')")
    fe.send(frames)
    fe.send(list(frames))
    fe.execute_ok("pass")
    fe.send(list(frames))  # replayed again after other traffic
    fe.execute_ok("pass")
    assert log.read_text() == "ran\n", "a replayed message was executed again"


def test_replay_from_another_connection_runs_once(frontend, tmp_dir):
    """An eavesdropper re-sends a captured message on a connection of its own."""
    km, fe = frontend
    log = unique_marker(tmp_dir, "replay2")
    _, frames = fe.signer.execute_request(f"open({str(log)!r}, 'a').write('ran\\n')")
    fe.send(frames)
    fe.execute_ok("pass")
    thief = RawFrontend(km)
    try:
        thief.send(list(frames))
        thief.execute_ok("pass")
    finally:
        thief.close()
    assert log.read_text() == "ran\n"


def garbage(signer: Signer) -> dict[str, list[bytes]]:
    def signed(*parts: bytes) -> list[bytes]:
        return [DELIMITER, signer.sign(list(parts)), *parts]

    _, good = signer.parts("kernel_info_request", {})
    header_no_type = json.dumps({"msg_id": uuid.uuid4().hex, "session": "s"}).encode()
    unknown_type = json.dumps({**json.loads(good[0]), "msg_type": "no_such_request"}).encode()
    return {
        "empty frame": [b""],
        "single frame": [b"hello"],
        "no delimiter": [b"id", b"sig", *good],
        "delimiter only": [DELIMITER],
        "delimiter and signature": [DELIMITER, signer.sign(good)],
        "missing content": [DELIMITER, signer.sign(good[:3]), *good[:3]],
        "invalid JSON header": signed(b"{not json", b"{}", b"{}", b"{}"),
        "header is a list": signed(b"[]", b"{}", b"{}", b"{}"),
        "header is null": signed(b"null", b"{}", b"{}", b"{}"),
        "header without msg_type": signed(header_no_type, b"{}", b"{}", b"{}"),
        "content not JSON": signed(good[0], good[1], good[2], b"\xff\xfe"),
        "header not UTF-8": signed(b"\xff" * 10, b"{}", b"{}", b"{}"),
        "binary junk": [bytes(range(256)), DELIMITER, bytes(range(256))],
        "many frames": [DELIMITER, b"x" * 64] + [b"{}"] * 2000,
        "unknown msg_type": signed(unknown_type, b"{}", b"{}", b"{}"),
    }


@pytest.mark.parametrize("channel", ["shell", "control"])
def test_garbage_does_not_crash(kernels, kernel_name, channel):
    km, kc = kernels.start(kernel_name)
    fe = RawFrontend(km, channel)
    try:
        for name, frames in garbage(fe.signer).items():
            fe.send(frames)
            reply, _ = fe.request("kernel_info_request", {})
            assert reply["header"]["msg_type"] == "kernel_info_reply", name
        assert km.is_alive()
    finally:
        fe.close()
    # Ordinary clients are unaffected.
    assert run_ok(kc, "print('ok')") == "ok\n"
