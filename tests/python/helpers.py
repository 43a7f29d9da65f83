"""Shared helpers: starting kernels, independent clients, executing code, raw wire messages."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import pwd
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from queue import Empty
from typing import Any, Callable

from jupyter_client import BlockingKernelClient, KernelManager

DIRECT = "python3-direct"
DIRECT_MESSAGE = "python3-direct-message"
AUDITED = "python3-audited"
AUDITED_MESSAGE = "python3-audited-message"
AUDITED_KERNELS = (AUDITED, AUDITED_MESSAGE)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("JUPYTER_AUDIT_BIN") or REPO / "target" / "release" / "jupyter-audit")


def proxy_argv(socket: Path | str | None = None, *flags: str) -> list[str]:
    """The proxy's command line up to `--`, recording to the suite's collector (or to
    `socket`). The admin config file is pointed at a path that does not exist, so the
    machine's /etc/jupyter-audit/config.toml cannot change what a test means."""
    socket = socket or os.environ["JUPYTER_AUDIT_TEST_SOCKET"]
    config = os.environ.get("JUPYTER_AUDIT_TEST_CONFIG", "/nonexistent/jupyter-audit.toml")
    return [str(BIN), "kernel", "--socket", str(socket), "--config", config, *flags,
            "-f", "{connection_file}", "--"]


STARTUP_TIMEOUT = 60
TIMEOUT = 30
DELIMITER = b"<IDS|MSG>"


def new_client(km: KernelManager) -> BlockingKernelClient:
    """A client with its own Session (and so its own duplicate-signature history).

    Never use km.client() twice: such clients share one Session.
    """
    kc = BlockingKernelClient()
    kc.load_connection_file(km.connection_file)
    kc.start_channels()
    return kc


class KernelPool:
    """Starts kernels and shuts every one of them down at the end of a test."""

    def __init__(self) -> None:
        self.managers: list[KernelManager] = []
        self.clients: list[BlockingKernelClient] = []

    def start(
        self, name: str, configure: Callable[[KernelManager], None] | None = None, **kwargs: Any
    ) -> tuple[KernelManager, BlockingKernelClient]:
        """Start kernel `name` (KernelManager(**kwargs), then configure(km)) and a client."""
        km = KernelManager(kernel_name=name, **kwargs)
        if configure:
            configure(km)
        self.managers.append(km)
        km.start_kernel()
        kc = self.client(km)
        return km, kc

    def client(self, km: KernelManager) -> BlockingKernelClient:
        kc = new_client(km)
        self.clients.append(kc)
        kc.wait_for_ready(timeout=STARTUP_TIMEOUT)
        return kc

    def shutdown_all(self) -> None:
        for kc in self.clients:
            try:
                kc.stop_channels()
            except Exception:
                pass
        for km in self.managers:
            try:
                if km.has_kernel:
                    km.shutdown_kernel(now=True)
            except Exception:
                pass
            km.cleanup_resources()


def iopub_for(kc: BlockingKernelClient, msg_id: str, timeout: float = TIMEOUT) -> list[dict]:
    """All iopub messages caused by request msg_id, up to and including status idle."""
    deadline = time.monotonic() + timeout
    msgs = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no idle status for {msg_id} on iopub; got {summary(msgs)}")
        try:
            msg = kc.get_iopub_msg(timeout=remaining)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(msg)
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return msgs


def summary(msgs: list[dict], width: int = 80) -> str:
    """A short description of messages for failure reports (contents can be huge)."""
    lines = [f"{m['msg_type']} {str(m['content'])[:width]}" for m in msgs[:20]]
    if len(msgs) > 20:
        lines.append(f"... and {len(msgs) - 20} more")
    return f"{len(msgs)} messages:\n  " + "\n  ".join(lines)


def reply_for(channel_get: Callable[..., dict], msg_id: str, timeout: float = TIMEOUT) -> dict:
    """The reply to msg_id from a channel (kc.get_shell_msg or kc.get_control_msg)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no reply to {msg_id}")
        try:
            msg = channel_get(timeout=remaining)
        except Empty:
            continue
        if msg["parent_header"].get("msg_id") == msg_id:
            return msg


def execute(
    kc: BlockingKernelClient, code: str, timeout: float = TIMEOUT, **kwargs: Any
) -> tuple[dict, list[dict]]:
    """Execute code; return the execute_reply and the iopub messages it caused."""
    msg_id = kc.execute(code, **kwargs)
    msgs = iopub_for(kc, msg_id, timeout)
    reply = reply_for(kc.get_shell_msg, msg_id, timeout)
    return reply, msgs


def stdout_of(msgs: list[dict]) -> str:
    return "".join(
        m["content"]["text"]
        for m in msgs
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


def run_ok(kc: BlockingKernelClient, code: str, timeout: float = TIMEOUT) -> str:
    """Execute code that must succeed; return its stdout."""
    reply, msgs = execute(kc, code, timeout)
    assert reply["content"]["status"] == "ok", reply["content"]
    return stdout_of(msgs)


def kernel_pid(kc: BlockingKernelClient) -> int:
    """The pid of the process that really runs the code."""
    return int(run_ok(kc, "import os; print(os.getpid())").strip())


def process_gone(pid: int) -> bool:
    """True when pid no longer runs (absent, or a zombie nobody has reaped yet)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    for line in status.splitlines():
        if line.startswith("State:"):
            return line.split()[1] in ("Z", "X")
    return False


def proc_status_mib(pid: int, key: str) -> float:
    """A memory figure of pid's /proc status in MiB (key "VmRSS", "VmHWM" for the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {key} for {pid}")


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# --- raw wire messages (for talking to a proxy port with pyzmq directly) -------------


def connection_info(km: KernelManager) -> dict:
    return json.loads(Path(km.connection_file).read_text())


def channel_url(info: dict, channel: str) -> str:
    port = info[f"{channel}_port"]
    if info.get("transport", "tcp") == "ipc":
        return f"ipc://{info['ip']}-{port}"
    return f"tcp://{info['ip']}:{port}"


class Signer:
    """Builds and signs Jupyter wire messages like a frontend does, by hand."""

    def __init__(self, info: dict) -> None:
        self.key = info["key"].encode()
        scheme = info.get("signature_scheme", "hmac-sha256")
        assert scheme.startswith("hmac-"), scheme
        self.digest = getattr(hashlib, scheme[len("hmac-") :])
        self.session = uuid.uuid4().hex

    def sign(self, parts: list[bytes]) -> bytes:
        if not self.key:
            return b""
        mac = hmac.new(self.key, digestmod=self.digest)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def parts(self, msg_type: str, content: dict) -> tuple[str, list[bytes]]:
        """(msg_id, [header, parent_header, metadata, content]) as JSON bytes."""
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": msg_type,
            "username": "test",
            "session": self.session,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": "5.3",
        }
        parts = [json.dumps(p).encode() for p in (header, {}, {}, content)]
        return msg_id, parts

    def message(self, msg_type: str, content: dict) -> tuple[str, list[bytes]]:
        """(msg_id, frames) of a correctly signed message for a DEALER socket."""
        msg_id, parts = self.parts(msg_type, content)
        return msg_id, [DELIMITER, self.sign(parts), *parts]

    @staticmethod
    def execute_content(code: str) -> dict:
        return {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }

    def execute_request(self, code: str) -> tuple[str, list[bytes]]:
        """(msg_id, frames) of a signed execute_request."""
        return self.message("execute_request", self.execute_content(code))

    @staticmethod
    def decode(frames: list[bytes]) -> dict:
        """Parse a received message (routing frames are skipped, signature not checked)."""
        i = frames.index(DELIMITER)
        header, parent, metadata, content = (json.loads(f) for f in frames[i + 2 : i + 6])
        return {"header": header, "parent_header": parent, "metadata": metadata, "content": content}


def unique_marker(directory: Path, name: str) -> Path:
    return directory / f"{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --- system users (root-only tests) --------------------------------------------------------


def system_user(name: str, home: Path | None = None) -> pwd.struct_passwd:
    """The system user `name`, created if missing (with `home`, made afresh, mode 0700)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        argv = ["useradd", "--system", "--user-group"]
        if home is None:
            argv += ["--no-create-home", "--shell", "/usr/sbin/nologin"]
        else:
            argv += ["--home-dir", str(home), "--shell", "/bin/bash"]
        subprocess.run([*argv, name], check=True, capture_output=True, timeout=60)
    user = pwd.getpwnam(name)
    if home is not None:
        # A fresh home each run (leftover notebooks would rename the new ones), and
        # private: Debian's default home mode is 0755, readable by every other user.
        shutil.rmtree(user.pw_dir, ignore_errors=True)
        os.makedirs(user.pw_dir, mode=0o700)
        os.chown(user.pw_dir, user.pw_uid, user.pw_gid)
        os.chmod(user.pw_dir, 0o700)
    return user


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True,
                          timeout=120)
