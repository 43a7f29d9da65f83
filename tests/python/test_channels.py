"""The five channels with several frontends: routing, broadcast, comms, big messages."""

from __future__ import annotations

import time
import uuid
from queue import Empty

import pytest
import zmq

from helpers import (
    AUDITED,
    TIMEOUT,
    channel_url,
    connection_info,
    iopub_for,
    new_client,
    reply_for,
    run_ok,
    stdout_of,
)


def wait_subscribed(sender, listener) -> None:
    """Execute prints on `sender` until `listener` sees one on iopub (SUB joins late)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        token = uuid.uuid4().hex
        sender.execute(f"print({token!r})")
        end = time.monotonic() + 1
        while time.monotonic() < end:
            try:
                msg = listener.get_iopub_msg(timeout=0.2)
            except Empty:
                continue
            if msg["msg_type"] == "stream" and token in msg["content"]["text"]:
                return
    raise TimeoutError("second client never received iopub messages")


def drain(kc) -> None:
    for get in (kc.get_iopub_msg, kc.get_shell_msg):
        while True:
            try:
                get(timeout=0.3)
            except Empty:
                break


def test_iopub_welcome_for_each_client(kernels):
    """Every new subscriber gets an iopub_welcome as its first iopub message.

    Audited kernel only: ipykernel's XPUB hears of a topic only once, so behind libzmq
    just the first subscriber is welcomed; the proxy welcomes each frontend itself.
    """
    km, _ = kernels.start(AUDITED)
    for _ in range(2):
        kc = new_client(km)
        kernels.clients.append(kc)
        first = kc.get_iopub_msg(timeout=TIMEOUT)
        assert first["msg_type"] == "iopub_welcome"
        assert first["content"]["subscription"] == ""
        assert first["parent_header"] == {}


def test_two_clients_share_iopub(kernels, kernel_name):
    km, a = kernels.start(kernel_name)
    b = kernels.client(km)
    wait_subscribed(a, b)
    drain(a)
    drain(b)

    msg_id = a.execute("print('from client A')")
    seen_by_a = iopub_for(a, msg_id)
    seen_by_b = iopub_for(b, msg_id)
    assert "from client A\n" in stdout_of(seen_by_a)
    assert "from client A\n" in stdout_of(seen_by_b)
    assert [m["msg_type"] for m in seen_by_a] == [m["msg_type"] for m in seen_by_b]
    assert all(m["parent_header"]["session"] == a.session.session for m in seen_by_b)
    assert reply_for(a.get_shell_msg, msg_id)["content"]["status"] == "ok"
    # The reply went to A only.
    with pytest.raises(Empty):
        b.get_shell_msg(timeout=0.5)


def test_replies_are_routed_to_their_client(kernels, kernel_name):
    km, a = kernels.start(kernel_name)
    b = kernels.client(km)
    ids_a = [a.execute(f"print('a{i}')") for i in range(5)]
    ids_b = [b.execute(f"print('b{i}')") for i in range(5)]
    ids_b.append(b.kernel_info())
    ids_a.append(a.kernel_info())
    got_a = [a.get_shell_msg(timeout=TIMEOUT)["parent_header"]["msg_id"] for _ in ids_a]
    got_b = [b.get_shell_msg(timeout=TIMEOUT)["parent_header"]["msg_id"] for _ in ids_b]
    assert got_a == ids_a
    assert got_b == ids_b


def test_input_request_goes_to_the_asking_client(kernels, kernel_name):
    km, a = kernels.start(kernel_name)
    b = kernels.client(km)
    msg_id = b.execute("print('B typed', input('B? '))", allow_stdin=True)
    request = b.get_stdin_msg(timeout=TIMEOUT)
    assert request["content"]["prompt"] == "B? "
    with pytest.raises(Empty):
        a.get_stdin_msg(timeout=0.5)
    b.input("yes")
    assert reply_for(b.get_shell_msg, msg_id)["content"]["status"] == "ok"
    assert "B typed yes\n" in stdout_of(iopub_for(b, msg_id))


def test_control_channel(kernels, kernel_name):
    _, kc = kernels.start(kernel_name)
    msg = kc.session.msg("kernel_info_request", {})
    kc.control_channel.send(msg)
    reply = reply_for(kc.get_control_msg, msg["header"]["msg_id"])
    assert reply["msg_type"] == "kernel_info_reply"
    assert reply["content"]["language_info"]["name"] == "python"


def test_heartbeat_echo(kernels, kernel_name):
    km, kc = kernels.start(kernel_name)
    assert kc.hb_channel.is_beating()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    sock.connect(channel_url(connection_info(km), "hb"))
    try:
        for payload in (b"ping", b"\x00" * 100, uuid.uuid4().bytes):
            sock.send(payload)
            assert sock.poll(TIMEOUT * 1000), "no heartbeat echo"
            assert sock.recv() == payload
    finally:
        sock.close()


def test_comm_from_frontend(kernels, kernel_name):
    """comm_open / comm_msg from the frontend on shell, answered on iopub."""
    _, kc = kernels.start(kernel_name)
    run_ok(
        kc,
        "import comm\n"
        "def target(c, open_msg):\n"
        "    c.send({'opened_with': open_msg['content']['data']})\n"
        "    c.on_msg(lambda m: c.send({'echo': m['content']['data']}))\n"
        "comm.get_comm_manager().register_target('echo-target', target)\n",
    )
    comm_id = uuid.uuid4().hex

    def send_shell(msg_type, content):
        msg = kc.session.msg(msg_type, content)
        kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def comm_msgs(parent):
        return [m for m in iopub_for(kc, parent) if m["msg_type"] == "comm_msg"]

    parent = send_shell(
        "comm_open", {"comm_id": comm_id, "target_name": "echo-target", "data": {"x": 1}}
    )
    [opened] = comm_msgs(parent)
    assert opened["content"] == {"comm_id": comm_id, "data": {"opened_with": {"x": 1}}}

    parent = send_shell("comm_msg", {"comm_id": comm_id, "data": {"hello": [1, 2, 3]}})
    [echo] = comm_msgs(parent)
    assert echo["content"]["data"] == {"echo": {"hello": [1, 2, 3]}}

    info_id = kc.comm_info(target_name="echo-target")
    info = reply_for(kc.get_shell_msg, info_id)
    assert comm_id in info["content"]["comms"]
    send_shell("comm_close", {"comm_id": comm_id, "data": {}})


def test_big_request_and_big_output(kernels, kernel_name):
    _, kc = kernels.start(kernel_name)
    payload = "z" * (8 * 1024 * 1024)
    out = run_ok(kc, f"s = {payload!r}\nprint(len(s))", timeout=120)
    assert out == f"{len(payload)}\n"
    msg_id = kc.execute("print('w' * (8 * 1024 * 1024))")
    text = stdout_of(iopub_for(kc, msg_id, timeout=120))
    assert len(text) == 8 * 1024 * 1024 + 1, len(text)
    assert text == "w" * (8 * 1024 * 1024) + "\n", "output corrupted"


@pytest.mark.timeout(150)
def test_slow_subscriber_does_not_stall_others(kernels, kernel_name):
    """A frontend that subscribes to iopub and never reads must not block the others."""
    km, kc = kernels.start(kernel_name)
    ctx = zmq.Context.instance()
    idle = ctx.socket(zmq.SUB)
    idle.linger = 0
    idle.rcvhwm = 1
    idle.setsockopt(zmq.RCVBUF, 4096)
    idle.subscribe(b"")
    idle.connect(channel_url(connection_info(km), "iopub"))
    try:
        time.sleep(1)  # let the subscription arrive; it is not a pass/fail timing
        chunk, count = 64 * 1024, 400  # 25 MiB of output in 400 messages
        msg_id = kc.execute(
            f"import sys\nfor i in range({count}):\n"
            f"    sys.stdout.write('%06d' % i + 'q' * {chunk - 6})\n    sys.stdout.flush()"
        )
        text = stdout_of(iopub_for(kc, msg_id, timeout=90))
        assert len(text) == chunk * count, f"{len(text)} of {chunk * count} characters"
        assert reply_for(kc.get_shell_msg, msg_id)["content"]["status"] == "ok"
        assert run_ok(kc, "print('still responsive')") == "still responsive\n"
    finally:
        idle.close()
