"""Seeds for the zmtp fuzz target: the bytes real frontends (pyzmq/libzmq, with
jupyter_client's Session signing) send to a frontend-side socket. A plain TCP listener
answers with a ZMTP 3.0 NULL greeting and READY, and keeps what each client sent.

    python capture_zmtp.py CORPUS_DIR
"""

import socket
import sys
import threading
import time
from pathlib import Path

import zmq
from jupyter_client.session import Session


def greeting() -> bytes:
    g = bytearray(64)
    g[0], g[9], g[10], g[11] = 0xFF, 0x7F, 3, 0
    g[12:16] = b"NULL"
    return bytes(g)


def ready(socket_type: bytes) -> bytes:
    name = b"\x05READY"
    prop = b"\x0bSocket-Type" + len(socket_type).to_bytes(4, "big") + socket_type
    body = name + prop
    return bytes([0x04, len(body)]) + body


def capture(socket_type: bytes, client_type: int, send) -> bytes:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    got = bytearray()

    def serve():
        conn, _ = listener.accept()
        conn.sendall(greeting() + ready(socket_type))
        conn.settimeout(0.5)
        try:
            while chunk := conn.recv(65536):
                got.extend(chunk)
        except socket.timeout:
            pass
        conn.close()

    server = threading.Thread(target=serve)
    server.start()
    ctx = zmq.Context.instance()
    client = ctx.socket(client_type)
    client.linger = 1000
    client.connect(f"tcp://127.0.0.1:{port}")
    send(client)
    server.join()
    client.close()
    listener.close()
    return bytes(got)


def main() -> None:
    corpus = Path(sys.argv[1]) / "zmtp"
    corpus.mkdir(parents=True, exist_ok=True)
    session = Session(key=b"fuzz-seed-key", username="alice")

    def execute(client):
        session.send(client, "execute_request", {"code": "print('hello')", "silent": False,
                                                 "store_history": True, "user_expressions": {},
                                                 "allow_stdin": True, "stop_on_error": True})
        session.send(client, "kernel_info_request", {})

    def subscribe(client):
        client.subscribe(b"")
        time.sleep(0.2)

    def big(client):
        session.send(client, "comm_msg", {"comm_id": "c1", "data": {}},
                     buffers=[b"x" * 300, b"y" * 5000])

    seeds = {
        "dealer-execute": capture(b"ROUTER", zmq.DEALER, execute),
        "sub-subscribe": capture(b"XPUB", zmq.SUB, subscribe),
        "dealer-buffers": capture(b"ROUTER", zmq.DEALER, big),
    }
    for name, stream in seeds.items():
        for cut in (0, 7):
            (corpus / f"seed-{name}-cut{cut}").write_bytes(bytes([cut]) + stream)


if __name__ == "__main__":
    main()
