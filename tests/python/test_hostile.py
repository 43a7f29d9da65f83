"""Hostile frontends, talking pyzmq directly to the kernel's ports.

Forged signatures and replayed messages must never execute; garbage must not bring the
proxy down. Each case runs against ipykernel too: it must behave the same.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import stat
import sys
import time
import uuid
from pathlib import Path

import pytest
import zmq

from helpers import (
    AUDITED,
    DELIMITER,
    TIMEOUT,
    Signer,
    as_user,
    channel_url,
    connection_info,
    proc_status_mib,
    proxy_argv,
    run_ok,
    system_user,
    unique_marker,
)
from test_audit import (  # the audit tests' store readers and kernelspecs
    NOTEBOOK_USER,
    LoggedKernel,
    action,
    describe,
    field,
    wait_for_records,
    write_kernelspec,
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


# --- floods, oversized and malformed content, other local users (audited kernel) -------

FLOOD_GARBAGE = 100_000
FLOOD_FORGED = 10_000
# Generous: the proxy idles at ~9 MiB; a flood must not make it hold what it rejects.
RSS_BOUND_MIB = 200
# Liveness only: how long the proxy may take to work through a flood.
FLOOD_TIMEOUT = 120
# What the proxy writes as `reason` for each kind (rejections_suppressed counts by kind).
REASON_KINDS = {
    "no <IDS|MSG> delimiter frame": "missing_delimiter",
    "frames after the delimiter": "too_few_frames",
    "signature does not match": "bad_signature",
    "over the limit of": "oversized",
    "header is not valid JSON": "bad_header",
    "content is not JSON the audit can read": "unreadable_content",
}


def reason_kind(record: dict) -> str:
    reason = field(record, "jupyter.reason", "")
    return next((kind for text, kind in REASON_KINDS.items() if text in reason), reason)


def session_start(store: Path, km) -> dict:
    """The session_start record of the kernel km runs (matched by connection file)."""

    def mine(r: dict) -> bool:
        return (action(r) == "session_start"
                and field(r, "jupyter.connection_file") == str(km.connection_file))

    records = wait_for_records(store, lambda rs: any(map(mine, rs)),
                               f"session_start of {km.connection_file}")
    return next(filter(mine, records))


def rejection_counts(records: list[dict], channel: str = "shell") -> dict[str, int]:
    """Rejected frontend messages on channel by kind: one per message_rejected record,
    plus the counts of rejections_suppressed records."""
    counts: dict[str, int] = {}
    for r in records:
        if field(r, "jupyter.channel") != channel or field(r, "jupyter.from") != "frontend":
            continue
        if action(r) == "message_rejected":
            counts[reason_kind(r)] = counts.get(reason_kind(r), 0) + 1
        elif action(r) == "rejections_suppressed":
            reasons = field(r, "jupyter.reasons")
            assert sum(reasons.values()) == field(r, "jupyter.rejected_count"), r
            for kind, n in reasons.items():
                counts[kind] = counts.get(kind, 0) + n
    return counts


def test_flood_of_garbage_and_forgeries_is_survived_and_counted_not_stored(
    kernels, suite_store, tmp_dir
):
    kernel = LoggedKernel(kernels, AUDITED, tmp_dir)
    km, kc = kernel.km, kernel.kc
    start = session_start(suite_store, km)
    session, proxy_pid = field(start, "jupyter.session_id"), field(start, "jupyter.proxy_pid")
    fe = RawFrontend(km)
    fe.sock.sndhwm = 0  # no drops on our side: every message sent is one the proxy gets
    marker = unique_marker(tmp_dir, "flood")
    _, parts = fe.signer.parts("execute_request",
                               Signer.execute_content(f"open({str(marker)!r}, 'w').close()"))
    forged = hmac.new(b"not the key", digestmod=fe.signer.digest)
    for p in parts:
        forged.update(p)
    forged_sig = forged.hexdigest().encode()
    peak = proc_status_mib(proxy_pid, "VmRSS")
    try:
        for i in range(FLOOD_GARBAGE):
            if i % 2:
                fe.send([b"junk %d" % i, b"\x00\xff" * 8])  # no delimiter
            else:
                fe.send([DELIMITER, b"%064d" % i])  # too few frames
            if i % 5000 == 0:
                peak = max(peak, proc_status_mib(proxy_pid, "VmRSS"))
        for i in range(FLOOD_FORGED):
            fe.send([DELIMITER, forged_sig, *parts])
            if i % 2000 == 0:
                peak = max(peak, proc_status_mib(proxy_pid, "VmRSS"))
        # Shell requests are handled in order: this reply comes after the whole flood.
        msg_id, frames = fe.signer.execute_request("print('after the flood')")
        fe.send(frames)
        deadline = time.monotonic() + FLOOD_TIMEOUT
        while time.monotonic() < deadline:
            peak = max(peak, proc_status_mib(proxy_pid, "VmRSS"))
            if fe.sock.poll(500):
                reply, _ = fe.reply_to(msg_id, timeout=FLOOD_TIMEOUT)
                break
        else:
            pytest.fail(f"no reply after the flood\n{kernel.log()}")
        assert reply["content"]["status"] == "ok", reply
    finally:
        fe.close()
    assert km.is_alive()
    assert run_ok(kc, "print('ok')") == "ok\n"
    assert not marker.exists(), "a forged request ran"
    assert peak < RSS_BOUND_MIB, f"proxy RSS peaked at {peak:.0f} MiB during the flood"

    sent = {"missing_delimiter": FLOOD_GARBAGE // 2, "too_few_frames": FLOOD_GARBAGE // 2,
            "bad_signature": FLOOD_FORGED}
    records = wait_for_records(
        suite_store,
        lambda rs: rejection_counts([r for r in rs if field(r, "jupyter.session_id") == session])
        == sent,
        f"{sum(sent.values())} rejections accounted for", kernel.log())
    mine = [r for r in records if field(r, "jupyter.session_id") == session]
    summaries = [r for r in mine if action(r) == "rejections_suppressed"]
    assert summaries, describe(mine)
    # The flood is on the record as counts: a handful of records, not one per message.
    assert len(mine) < 1000, describe(mine)
    assert not [r for r in mine if action(r) == "audit_gap"], describe(mine)
    # And the proxy's stderr is not flooded either.
    warnings = kernel.log_path.read_text().count("message rejected")
    assert warnings < 1000, f"{warnings} 'message rejected' lines on stderr"


OVERSIZE_LIMIT = 1 << 20


def limited_kernelspec() -> str:
    ipykernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    return write_kernelspec(
        proxy_argv(None, "--max-message-bytes", str(OVERSIZE_LIMIT)) + ipykernel,
        prefix="ja-hostile-limit")


def test_oversized_messages_are_rejected_on_the_record_and_smaller_ones_relayed(
    kernels, suite_store, tmp_dir
):
    km, kc = kernels.start(limited_kernelspec())
    session = field(session_start(suite_store, km), "jupyter.session_id")
    fe = RawFrontend(km)
    marker = unique_marker(tmp_dir, "oversized")
    try:
        # One huge frame, and many frames that are only too big together; both signed.
        code = f"open({str(marker)!r}, 'w').close()  # " + "x" * (2 * OVERSIZE_LIMIT)
        big_id, big = fe.signer.execute_request(code)
        fe.send(big)
        many_id, parts = fe.signer.parts("comm_info_request", {})
        fe.send([DELIMITER, fe.signer.sign(parts), *parts, *([b"b" * 65536] * 20)])
        # Just under the limit, with buffers: relayed, and runs.
        fits = "x = " + repr("y" * (OVERSIZE_LIMIT // 2)) + "\nprint(len(x))"
        fits_id, frames = fe.signer.execute_request(fits)
        fe.send([*frames, b"z" * (OVERSIZE_LIMIT // 4)])
        reply, others = fe.reply_to(fits_id)
        assert reply["content"]["status"] == "ok", reply["content"]
        assert not [m for m in others if m["parent_header"].get("msg_id") == many_id], others
        assert fe.execute_ok("pass") is not None
    finally:
        fe.close()
    assert not marker.exists(), "an oversized request ran"
    assert run_ok(kc, "print('ok')") == "ok\n"

    def rejected(rs: list[dict], msg_id: str) -> list[dict]:
        return [r for r in rs if field(r, "jupyter.session_id") == session
                and action(r) == "message_rejected" and field(r, "jupyter.msg_id") == msg_id]

    records = wait_for_records(
        suite_store, lambda rs: rejected(rs, big_id) and rejected(rs, many_id),
        "both oversized messages rejected on the record")
    big_record, many_record = rejected(records, big_id)[0], rejected(records, many_id)[0]
    assert field(big_record, "jupyter.rejected_msg_type") == "execute_request"
    assert field(many_record, "jupyter.rejected_msg_type") == "comm_info_request"
    for r in (big_record, many_record):
        assert reason_kind(r) == "oversized", r
        assert f"limit of {OVERSIZE_LIMIT} bytes" in field(r, "jupyter.reason"), r
        assert field(r, "jupyter.channel") == "shell" and field(r, "jupyter.from") == "frontend"
    relayed = [r for r in records if field(r, "jupyter.msg_id") == fits_id
               and action(r) == "execute_request"]
    assert relayed and field(relayed[0], "jupyter.code") == fits, "the request that fits"
    assert not [r for r in records if field(r, "jupyter.msg_id") == big_id
                and action(r) != "message_rejected"], "the oversized request was recorded as run"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_content_the_audit_cannot_read_never_runs(kernels, suite_store, tmp_dir):
    """Content that Python's json reads but the audit's parser does not (nesting deeper
    than serde_json's limit, NaN, a lone surrogate, invalid UTF-8, which Jupyter decodes
    as U+FFFD) must not run code that is not on the record: it is rejected, on the record.
    Found by this test: such requests were relayed with only `content_error` recorded,
    and ipykernel ran their code."""
    km, kc = kernels.start(AUDITED)
    session = field(session_start(suite_store, km), "jupyter.session_id")
    fe = RawFrontend(km)
    markers = {}
    sent = {}

    def content_with(label: str, extra: bytes) -> bytes:
        marker = markers[label] = unique_marker(tmp_dir, label.replace(" ", "-"))
        code = json.dumps(f"open({str(marker)!r}, 'w').close()")
        return (b'{"code": ' + code.encode() + b', "silent": false, "store_history": false, '
                b'"user_expressions": {}, "allow_stdin": false, "stop_on_error": true'
                + extra + b"}")

    cases = {
        "deep nesting 200": b', "x": ' + nested(200),
        "deep nesting 100000": b', "x": ' + nested(100_000),
        "NaN": b', "x": NaN',
        "lone surrogate": b', "x": "\\ud800"',
        "invalid UTF-8": b', "x": "\xff\xfe"',
    }
    try:
        for label, extra in cases.items():
            msg_id, parts = fe.signer.parts("execute_request", {})
            parts[3] = content_with(label, extra)
            sent[label] = msg_id
            fe.send([DELIMITER, fe.signer.sign(parts), *parts])
        # Deep nesting and bad UTF-8 where the audit must parse: the header.
        header_id, parts = fe.signer.parts("kernel_info_request", {})
        header = json.loads(parts[0])
        parts[0] = json.dumps(header).encode()[:-1] + b', "x": ' + nested(100_000) + b"}"
        fe.send([DELIMITER, fe.signer.sign(parts), *parts])
        utf8_id, parts = fe.signer.parts("kernel_info_request", {})
        parts[0] = parts[0][:-1] + b', "x": "\xff"}'
        fe.send([DELIMITER, fe.signer.sign(parts), *parts])
        # Deep nesting in a request that runs no code: not relayed either, since the
        # record of every request holds it whole.
        info_id, parts = fe.signer.parts("kernel_info_request", {})
        parts[3] = b'{"x": ' + nested(100_000) + b"}"
        fe.send([DELIMITER, fe.signer.sign(parts), *parts])
        fe.execute_ok("pass")
    finally:
        fe.close()
    ran = [label for label, marker in markers.items() if marker.exists()]
    assert not ran, f"code off the record ran: {ran}"
    assert run_ok(kc, "print('ok')") == "ok\n"

    def mine(rs: list[dict]) -> list[dict]:
        return [r for r in rs if field(r, "jupyter.session_id") == session]

    wanted = {*sent.values(), header_id, utf8_id, info_id}
    records = mine(wait_for_records(
        suite_store,
        lambda rs: wanted <= {field(r, "jupyter.msg_id") for r in mine(rs)
                              if action(r) == "message_rejected"},
        "every unreadable request rejected on the record"))
    sent["kernel_info_request deep nesting"] = info_id
    for label, msg_id in sent.items():
        got = [r for r in records if field(r, "jupyter.msg_id") == msg_id]
        assert [action(r) for r in got] == ["message_rejected"], (label, describe(got))
        assert reason_kind(got[0]) == "unreadable_content", (label, got[0])
        expected_type = label.split()[0] if label.startswith("kernel_info") else "execute_request"
        assert field(got[0], "jupyter.rejected_msg_type") == expected_type, got[0]
    for msg_id in (header_id, utf8_id):
        got = [r for r in records if field(r, "jupyter.msg_id") == msg_id]
        assert [reason_kind(r) for r in got] == ["bad_header"], describe(got)


def test_buffers_are_relayed_whole_or_refused(kernels, suite_store):
    """Buffers are not signed, and the kernel acts on them: a comm message with 24 MiB of
    them reaches the kernel whole and its record holds them (size, SHA-256, the bytes);
    one with 64 MiB cannot be one record, so it is refused and never reaches the comm."""
    km, kc = kernels.start(AUDITED)
    session = field(session_start(suite_store, km), "jupyter.session_id")
    run_ok(kc, "import comm\nseen = []\n"
               "def target(c, msg):\n"
               "    c.on_msg(lambda m: seen.append([len(b) for b in m['buffers']]))\n"
               "comm.get_comm_manager().register_target('sizes', target)")
    fe = RawFrontend(km)
    try:
        comm_id = uuid.uuid4().hex
        _, open_ = fe.signer.message("comm_open", {"comm_id": comm_id, "target_name": "sizes",
                                                   "data": {}})
        fe.send(open_)
        fitting = [bytes([i]) * (8 << 20) for i in range(3)] + [b""] * 1000
        msg_id, frames = fe.signer.message("comm_msg", {"comm_id": comm_id, "data": {"n": 1}})
        fe.send([*frames, *fitting])
        too_large = [bytes([i]) * (16 << 20) for i in range(4)]
        refused_id, frames = fe.signer.message("comm_msg", {"comm_id": comm_id, "data": {}})
        fe.send([*frames, *too_large])
        fe.execute_ok("pass")
    finally:
        fe.close()
    out = run_ok(kc, "print(seen)")
    assert out == repr([[8 << 20] * 3 + [0] * 1000]) + "\n", "only the fitting one arrived"

    def mine(rs: list[dict]) -> list[dict]:
        return [r for r in rs if field(r, "jupyter.session_id") == session]

    records = mine(wait_for_records(
        suite_store,
        lambda rs: {msg_id, refused_id} <= {field(r, "jupyter.msg_id") for r in mine(rs)},
        "the comm_msg with buffers and the refusal of the one too large"))
    record = next(r for r in records if field(r, "jupyter.msg_id") == msg_id)
    assert action(record) == "comm_msg" and field(record, "jupyter.comm_id") == comm_id, record
    buffers = field(record, "jupyter.request.buffers")
    assert [b["size"] for b in buffers] == [8 << 20] * 3 + [0] * 1000
    assert base64.b64decode(buffers[2]["base64"]) == fitting[2]
    refusal = [r for r in records if field(r, "jupyter.msg_id") == refused_id]
    assert [action(r) for r in refusal] == ["execution_refused"], describe(refusal)
    assert "too large" in field(refusal[0], "jupyter.reason")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: runs a second local user "
                    "(jupyter-audit-nbuser) against a kernel that root owns")
def test_another_local_user_cannot_reach_the_private_kernel_side(kernels, suite_store):
    km, kc = kernels.start(AUDITED)
    start = session_start(suite_store, km)
    argv = field(start, "jupyter.kernel_argv")
    private_file = Path(argv[argv.index("-f") + 1])
    private_dir = private_file.parent
    info = private_dir.stat()
    assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)
    sockets = [p for p in private_dir.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]
    assert len(sockets) == 5, sockets
    system_user(NOTEBOOK_USER)
    for argv in (["ls", str(private_dir)], ["cat", str(private_file)],
                 ["cat", str(sockets[0])]):
        result = as_user(NOTEBOOK_USER, *argv)
        assert result.returncode != 0 and "Permission denied" in result.stderr, result
    probe = ("import socket, sys\nfor path in sys.argv[1:]:\n"
             "    s = socket.socket(socket.AF_UNIX)\n"
             "    try:\n        s.connect(path)\n        print('connected', path)\n"
             "    except PermissionError:\n        print('denied')\n")
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    result = as_user(NOTEBOOK_USER, python, "-c", probe, *map(str, sockets))
    assert result.stdout == "denied\n" * len(sockets), result
    assert run_ok(kc, "print('ok')") == "ok\n"
