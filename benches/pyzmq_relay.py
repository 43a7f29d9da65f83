"""A minimal kernel relay in plain pyzmq: the comparison point of benches/relay.py.

Launched by a kernelspec like the audited proxy is:

    python benches/pyzmq_relay.py -f {connection_file} -- KERNEL_ARGV...

(Jupyter substitutes {connection_file} in the kernel argv too; the relay swaps it for its own.)

It binds the frontend side as the connection file says, writes a private connection file
for the real kernel (fresh key, ipc transport in a 0700 directory), starts the kernel and
relays the five channels: shell/control/stdin ROUTER ⇄ DEALER, iopub SUB → XPUB,
heartbeat ROUTER ⇄ DEALER. Every message is re-signed with the other side's key
(the HMAC covers header, parent_header, metadata and content). No auditing: it shows
what a simple relay costs, nothing more.
"""

import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile

import zmq

DELIM = b"<IDS|MSG>"


def signer(key, scheme):
    key = key.encode() if isinstance(key, str) else key
    if not key:
        return None
    digest = getattr(hashlib, scheme.split("-", 1)[1])

    def sign(frames):
        mac = hmac.new(key, digestmod=digest)
        for frame in frames:
            mac.update(frame)
        return mac.hexdigest().encode()

    return sign


def resign(frames, sign):
    """frames: [ids..., DELIM, sig, header, parent, metadata, content, buffers...]."""
    try:
        i = frames.index(DELIM)
    except ValueError:
        return frames
    if len(frames) < i + 6:
        return frames
    frames[i + 1] = sign(frames[i + 2 : i + 6]) if sign else b""
    return frames


def main(argv):
    if len(argv) < 4 or argv[0] != "-f" or "--" not in argv:
        sys.exit("usage: pyzmq_relay.py -f CONNECTION_FILE -- KERNEL_ARGV...")
    outer_file = argv[1]
    kernel_argv = argv[argv.index("--") + 1 :]
    with open(outer_file) as f:
        outer = json.load(f)
    scheme = outer.get("signature_scheme", "hmac-sha256")

    private = tempfile.mkdtemp(prefix="pyzmq-relay-")
    os.chmod(private, 0o700)
    inner = {
        "transport": "ipc",
        "ip": os.path.join(private, "k"),
        "key": secrets.token_hex(32),
        "signature_scheme": scheme,
        "kernel_name": outer.get("kernel_name", ""),
    }
    for n, name in enumerate(["shell", "iopub", "stdin", "control", "hb"]):
        inner[f"{name}_port"] = n + 1
    inner_file = os.path.join(private, "kernel.json")
    with open(inner_file, "w") as f:
        json.dump(inner, f)

    def outer_url(name):
        if outer.get("transport", "tcp") == "ipc":
            return f"ipc://{outer['ip']}-{outer[name + '_port']}"
        return f"tcp://{outer['ip']}:{outer[name + '_port']}"

    def inner_url(name):
        return f"ipc://{inner['ip']}-{inner[name + '_port']}"

    ctx = zmq.Context()
    to_kernel = signer(inner["key"], scheme)
    to_frontend = signer(outer.get("key", ""), scheme)
    pairs = []  # (frontend socket, kernel socket, re-sign?)
    # stdin's DEALER carries the same routing id as shell's: the kernel sends
    # input_request to the identity of the shell request's sender.
    routing_id = secrets.token_bytes(8)
    for name in ["shell", "control", "stdin", "hb"]:
        front = ctx.socket(zmq.ROUTER)
        front.bind(outer_url(name))
        back = ctx.socket(zmq.DEALER)
        if name in ("shell", "stdin"):
            back.setsockopt(zmq.ROUTING_ID, routing_id)
        back.connect(inner_url(name))
        pairs.append((front, back, name != "hb"))
    pub = ctx.socket(zmq.XPUB)
    pub.bind(outer_url("iopub"))
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(inner_url("iopub"))
    for s in [pub, sub] + [s for p in pairs for s in p[:2]]:
        s.setsockopt(zmq.LINGER, 0)

    # Jupyter has already put the frontend's connection file into the kernel argv too.
    args = [inner_file if a in (outer_file, "{connection_file}") else a for a in kernel_argv]
    env = dict(os.environ, JPY_PARENT_PID=str(os.getpid()))
    kernel = subprocess.Popen(args, env=env)

    signal.signal(signal.SIGINT, lambda *_: kernel.send_signal(signal.SIGINT))

    def terminate(*_):
        kernel.terminate()
        sys.exit(0)

    signal.signal(signal.SIGTERM, terminate)

    poller = zmq.Poller()
    route = {}
    for front, back, sign in pairs:
        poller.register(front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        route[front] = (back, to_kernel if sign else False)
        route[back] = (front, to_frontend if sign else False)
    poller.register(sub, zmq.POLLIN)
    poller.register(pub, zmq.POLLIN)
    try:
        while kernel.poll() is None:
            for sock, _ in poller.poll(200):
                if sock is sub:
                    pub.send_multipart(resign(sub.recv_multipart(), to_frontend))
                elif sock is pub:
                    pub.recv_multipart()  # subscription notices: upstream is subscribed once
                else:
                    frames = sock.recv_multipart()
                    other, sign = route[sock]
                    if sign is not False:
                        frames = resign(frames, sign)
                    other.send_multipart(frames)
    finally:
        if kernel.poll() is None:
            kernel.terminate()
        for name in os.listdir(private):
            try:
                os.unlink(os.path.join(private, name))
            except OSError:
                pass
        try:
            os.rmdir(private)
        except OSError:
            pass
    return kernel.returncode or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
