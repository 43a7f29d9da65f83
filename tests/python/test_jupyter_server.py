"""The audited kernel behind a real jupyter_server (the backend of JupyterLab).

One jupyter_server runs for the whole module, as a subprocess on 127.0.0.1 with a token,
private Jupyter directories and two kernelspecs: `srv-audited` (ipykernel behind
`jupyter-audit kernel` recording to the suite's collector, proxy logging at debug level)
and `srv-direct` (ipykernel itself, the reference: a failure on both is the test's or the
server's, not the proxy's).

The tests talk to it the way JupyterLab does: REST for sessions, interrupt, restart and
delete; the kernel websocket (/api/kernels/<id>/channels, default JSON protocol: one JSON
message per websocket frame, with a "channel" field) for kernel_info, execute and stdin.
On failure, the assertion message shows the websocket message sequence and the tail of
the server's log (which holds the proxy's stderr).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from helpers import process_gone, proxy_argv, wait_until

# Each test stays well under this; the module (server start-up included) under ~60 s.
pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("JUPYTER_AUDIT_BIN") or REPO / "target" / "release" / "jupyter-audit")

AUDITED = "srv-audited"
DIRECT = "srv-direct"
NOTEBOOK = "audited.ipynb"

# Generous liveness bounds only; timings are never what a test asserts.
SERVER_START_TIMEOUT = 30
REPLY_TIMEOUT = 20
DEATH_TIMEOUT = 15


# --- the server -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A jupyter_server subprocess with private directories and our kernelspecs."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ja-server-"))
        self.token = uuid.uuid4().hex
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "server.log"
        self.notebooks = self.root / "notebooks"
        self.notebooks.mkdir()
        self.env = self._environment()
        self._write_kernelspecs()
        self.proc: subprocess.Popen | None = None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("JPY_SESSION_NAME", "JPY_PARENT_PID", "JUPYTER_TOKEN"):
            env.pop(var, None)
        dirs = {
            "JUPYTER_PATH": self.root / "share",
            "JUPYTER_RUNTIME_DIR": self.root / "runtime",
            "JUPYTER_DATA_DIR": self.root / "data",
            "JUPYTER_CONFIG_DIR": self.root / "config",
            "IPYTHONDIR": self.root / "ipython",
        }
        for name, path in dirs.items():
            path.mkdir(parents=True, exist_ok=True)
            env[name] = str(path)
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        return env

    def _write_kernelspecs(self) -> None:
        ipykernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        specs = {
            AUDITED: {
                "argv": [*proxy_argv(), *ipykernel],
                "env": {"RUST_LOG": "jupyter_audit=debug"},
            },
            DIRECT: {"argv": ipykernel},
        }
        for name, spec in specs.items():
            spec_dir = Path(self.env["JUPYTER_PATH"]) / "kernels" / name
            spec_dir.mkdir(parents=True)
            spec = {"display_name": name, "language": "python", **spec}
            (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))

    def start(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={self.notebooks}",
            "--ServerApp.log_level=DEBUG",
        ]
        if os.geteuid() == 0:
            cmd.append("--ServerApp.allow_root=True")  # a CI container runs as root
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.root
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter_server exited at start-up\n{self.log_tail()}")
            try:
                return self.request("GET", "/api/status", timeout=2)[0] == 200
            except (OSError, urllib.error.URLError):
                return False

        assert wait_until(ready, SERVER_START_TIMEOUT, 0.2), (
            f"jupyter_server did not answer /api/status\n{self.log_tail()}"
        )

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        """A REST call with the token; returns (status, parsed JSON body or None)."""
        data = json.dumps(body).encode() if body is not None else None
        if data is None and method in ("POST", "PATCH", "PUT"):
            data = b""
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Authorization", f"token {self.token}")
        if body is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no server log)"
        return "--- server log (tail) ---\n" + "\n".join(text[-lines:])

    def stop(self) -> int | None:
        """Stop the server the way an admin does (POST /api/shutdown); returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        try:
            self.request("POST", "/api/shutdown", timeout=10)
        except (OSError, urllib.error.URLError):
            pass
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()

    def leftover_processes(self) -> list[str]:
        """Processes whose command line mentions this server's private directories."""
        found = []
        needle = str(self.root)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if needle in cmdline and not process_gone(int(entry.name)):
                found.append(f"{entry.name}: {cmdline}")
        return found

    def cleanup(self) -> None:
        self.stop()
        if hasattr(self, "log"):
            self.log.close()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    if not (BIN.is_file() and os.access(BIN, os.X_OK)):
        pytest.fail(f"jupyter-audit binary not found at {BIN}")
    srv = Server()
    try:
        srv.start()
        yield srv
    finally:
        srv.cleanup()


# --- a JupyterLab-like kernel connection ---------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


class KernelSocket:
    """The kernel websocket of one session, driven synchronously from the test."""

    def __init__(self, server: Server, kernel_id: str) -> None:
        self.server = server
        self.kernel_id = kernel_id
        self.session_id = uuid.uuid4().hex  # JupyterLab's client session id
        self.loop = asyncio.new_event_loop()
        self.seen: list[dict] = []  # every message received, for diagnostics
        self.pending: list[dict] = []  # received but not yet consumed
        self.conn = self.loop.run_until_complete(self._connect())

    async def _connect(self):
        url = (
            f"ws://127.0.0.1:{self.server.port}/api/kernels/{self.kernel_id}/channels"
            f"?session_id={self.session_id}"
        )
        req = HTTPRequest(url, headers={"Authorization": f"token {self.server.token}"})
        return await asyncio.wait_for(websocket_connect(req), REPLY_TIMEOUT)

    def _run(self, awaitable_factory):
        """Run an awaitable on this socket's own event loop (created inside the loop)."""

        async def inner():
            return await awaitable_factory()

        return self.loop.run_until_complete(inner())

    def close(self) -> None:
        try:
            self.conn.close()
            self.loop.run_until_complete(asyncio.sleep(0.1))
        finally:
            self.loop.close()

    def send(self, channel: str, msg_type: str, content: dict, parent: dict | None = None) -> str:
        msg_id = uuid.uuid4().hex
        msg = {
            "channel": channel,
            "header": {
                "msg_id": msg_id,
                "msg_type": msg_type,
                "username": "jupyter-audit-test",
                "session": self.session_id,
                "date": _now(),
                "version": "5.3",
            },
            "parent_header": parent or {},
            "metadata": {},
            "content": content,
            "buffers": [],
        }
        self._run(lambda: self.conn.write_message(json.dumps(msg)))
        return msg_id

    def _recv(self, timeout: float) -> dict:
        raw = self._run(lambda: asyncio.wait_for(self.conn.read_message(), timeout))
        if raw is None:
            raise AssertionError(f"the kernel websocket closed\n{self.diagnostics()}")
        msg = json.loads(raw)
        self.seen.append(msg)
        return msg

    def wait_for(self, predicate, timeout: float = REPLY_TIMEOUT, what: str = "message") -> dict:
        """The first message (pending or new) that satisfies predicate."""
        for i, msg in enumerate(self.pending):
            if predicate(msg):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                msg = self._recv(remaining)
            except asyncio.TimeoutError:
                raise AssertionError(
                    f"no {what} within {timeout} s\n{self.diagnostics()}"
                ) from None
            if predicate(msg):
                return msg
            self.pending.append(msg)

    def reply_to(self, msg_id: str, msg_type: str, timeout: float = REPLY_TIMEOUT) -> dict:
        return self.wait_for(
            lambda m: m.get("msg_type") == msg_type
            and m.get("parent_header", {}).get("msg_id") == msg_id,
            timeout,
            f"{msg_type} to {msg_id}",
        )

    def kernel_info(self, timeout: float = REPLY_TIMEOUT) -> dict:
        msg_id = self.send("shell", "kernel_info_request", {})
        return self.reply_to(msg_id, "kernel_info_reply", timeout)

    def await_iopub(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Ask for kernel_info until one of the requests shows up on iopub.

        After a restart the websocket's iopub subscription reconnects on its own schedule
        (ZMQ's slow joiner), so a reply on shell does not mean iopub flows yet: a direct
        ipykernel loses the first outputs the same way. jupyter_server's nudge does this
        for a new websocket; the test does it after a restart.
        """
        deadline = time.monotonic() + timeout
        while True:
            msg_id = self.send("shell", "kernel_info_request", {})
            try:
                self.wait_for(
                    lambda m: m.get("channel") == "iopub"
                    and m.get("parent_header", {}).get("msg_id") == msg_id,
                    min(1.0, max(0.1, deadline - time.monotonic())),
                    f"iopub status of kernel_info {msg_id}",
                )
                return
            except AssertionError:
                if time.monotonic() >= deadline:
                    raise

    def execute(self, code: str, allow_stdin: bool = False) -> str:
        return self.send(
            "shell",
            "execute_request",
            {
                "code": code,
                "silent": False,
                "store_history": True,
                "user_expressions": {},
                "allow_stdin": allow_stdin,
                "stop_on_error": True,
            },
        )

    def outputs(self, msg_id: str, timeout: float = REPLY_TIMEOUT) -> tuple[dict, list[dict]]:
        """(execute_reply, iopub messages of the request up to status idle)."""
        reply = self.reply_to(msg_id, "execute_reply", timeout)
        iopub = []
        while True:
            msg = self.wait_for(
                lambda m: m.get("channel") == "iopub"
                and m.get("parent_header", {}).get("msg_id") == msg_id,
                timeout,
                f"iopub status idle of {msg_id}",
            )
            iopub.append(msg)
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return reply, iopub

    def run(self, code: str) -> str:
        """Execute code; assert it succeeded; return its stdout."""
        reply, iopub = self.outputs(self.execute(code))
        assert reply["content"]["status"] == "ok", f"{reply['content']}\n{self.diagnostics()}"
        return stdout_of(iopub)

    def diagnostics(self, last: int = 40) -> str:
        lines = ["--- websocket messages received (oldest first) ---"]
        for m in self.seen[-last:]:
            content = m.get("content", {})
            detail = ""
            if m.get("msg_type") == "status":
                detail = content.get("execution_state", "")
            elif m.get("msg_type") == "stream":
                detail = repr(content.get("text", ""))[:80]
            elif "status" in content:
                detail = f"status={content['status']}"
            if m.get("msg_type") == "error":
                detail = f"{content.get('ename')}: {content.get('evalue')}"
            lines.append(
                f"{m.get('channel')}/{m.get('msg_type')} "
                f"parent={m.get('parent_header', {}).get('msg_id')} {detail}"
            )
        return "\n".join(lines) + "\n" + self.server.log_tail()


def stdout_of(iopub: list[dict]) -> str:
    return "".join(
        m["content"]["text"]
        for m in iopub
        if m["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


class NotebookSession:
    """A notebook session as JupyterLab opens it: POST /api/sessions, then the websocket."""

    def __init__(self, server: Server, kernel_name: str, path: str = NOTEBOOK) -> None:
        self.server = server
        self.kernel_name = kernel_name
        status, model = server.request(
            "POST",
            "/api/sessions",
            {"path": path, "name": path, "type": "notebook", "kernel": {"name": kernel_name}},
        )
        assert status == 201, f"POST /api/sessions: {status} {model}\n{server.log_tail()}"
        self.session_id = model["id"]
        self.kernel_id = model["kernel"]["id"]
        assert model["kernel"]["name"] == kernel_name
        self.ws = KernelSocket(server, self.kernel_id)
        self.deleted = False

    def pids(self) -> dict[str, int]:
        """The pid of the process running the code, and of the proxy in front of it."""
        out = self.ws.run("import os; print(os.getpid(), os.getppid())").split()
        kernel, parent = int(out[0]), int(out[1])
        pids = {"kernel": kernel}
        parent_cmd = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
        if self.kernel_name == AUDITED:
            assert Path(parent_cmd[0].decode()).name == "jupyter-audit", parent_cmd
            assert b"kernel" in parent_cmd, parent_cmd
            pids["proxy"] = parent
        return pids

    def delete(self) -> int:
        self.ws.close()
        self.deleted = True
        status, body = self.server.request("DELETE", f"/api/sessions/{self.session_id}")
        return status

    def close(self) -> None:
        if not self.deleted:
            try:
                self.delete()
            except Exception:
                pass


@pytest.fixture(params=[DIRECT, AUDITED])
def session(request, server):
    nb = NotebookSession(server, request.param)
    try:
        yield nb
    finally:
        nb.close()


# --- tests -------------------------------------------------------------------------------


def test_kernel_info_and_print(session):
    info = session.ws.kernel_info()
    content = info["content"]
    assert content["status"] == "ok", content
    assert content["language_info"]["name"] == "python", content
    assert content["implementation"] == "ipython", content

    msg_id = session.ws.execute('print("hello")')
    reply, iopub = session.ws.outputs(msg_id)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert reply["content"]["execution_count"] >= 1
    assert stdout_of(iopub) == "hello\n", session.ws.diagnostics()
    types = [m["msg_type"] for m in iopub]
    assert types[0] == "status" and iopub[0]["content"]["execution_state"] == "busy", types
    assert "execute_input" in types, types
    execute_input = next(m for m in iopub if m["msg_type"] == "execute_input")
    assert execute_input["content"]["code"] == 'print("hello")'


def test_session_name_in_kernel_environment(session):
    out = session.ws.run('import os; print(os.environ.get("JPY_SESSION_NAME"))').strip()
    assert out.endswith(NOTEBOOK), out


def test_input_round_trip(session):
    msg_id = session.ws.execute('name = input("Who? ")\nprint("hi " + name)', allow_stdin=True)
    request = session.ws.wait_for(
        lambda m: m.get("channel") == "stdin" and m.get("msg_type") == "input_request",
        what="input_request on stdin",
    )
    assert request["parent_header"]["msg_id"] == msg_id
    assert request["content"]["prompt"] == "Who? "
    assert request["content"]["password"] is False
    session.ws.send("stdin", "input_reply", {"value": "Ada"}, parent=request["header"])
    reply, iopub = session.ws.outputs(msg_id)
    assert reply["content"]["status"] == "ok", reply["content"]
    assert "hi Ada\n" in stdout_of(iopub), session.ws.diagnostics()


def test_interrupt(session):
    ws = session.ws
    msg_id = ws.execute('import time\nprint("sleeping", flush=True)\ntime.sleep(60)')
    ws.wait_for(
        lambda m: m.get("msg_type") == "stream"
        and m.get("parent_header", {}).get("msg_id") == msg_id
        and "sleeping" in m["content"]["text"],
        what='"sleeping" on stdout',
    )
    status, body = session.server.request("POST", f"/api/kernels/{session.kernel_id}/interrupt")
    assert status == 204, (status, body)
    reply, iopub = ws.outputs(msg_id)
    assert reply["content"]["status"] == "error", reply["content"]
    assert reply["content"]["ename"] == "KeyboardInterrupt", reply["content"]
    errors = [m for m in iopub if m["msg_type"] == "error"]
    assert [e["content"]["ename"] for e in errors] == ["KeyboardInterrupt"], ws.diagnostics()
    # The kernel is still usable on the same connection.
    assert ws.run("print(1 + 1)") == "2\n"


def test_restart(session):
    ws = session.ws
    before = session.pids()
    ws.run("x = 41")
    status, model = session.server.request("POST", f"/api/kernels/{session.kernel_id}/restart")
    assert status == 200, (status, model, session.server.log_tail())
    assert model["id"] == session.kernel_id

    # As JupyterLab does after a restart: ask for kernel_info on the same websocket.
    info = ws.kernel_info(timeout=REPLY_TIMEOUT)
    assert info["content"]["status"] == "ok"
    ws.await_iopub()
    after = session.pids()
    assert after["kernel"] != before["kernel"]
    for role, pid in before.items():
        assert wait_until(lambda: process_gone(pid), DEATH_TIMEOUT), f"old {role} {pid} still runs"
    # A fresh namespace, and the kernel runs code.
    assert ws.run('print("x" in globals(), 6 * 7)') == "False 42\n"
    assert ws.run('import os; print(os.environ.get("JPY_SESSION_NAME"))').strip().endswith(
        NOTEBOOK
    )


def test_delete_session_ends_processes(session):
    pids = session.pids()
    status = session.delete()
    assert status == 204, status
    for role, pid in pids.items():
        assert wait_until(lambda: process_gone(pid), DEATH_TIMEOUT), (
            f"{role} pid {pid} still runs after DELETE\n{session.server.log_tail()}"
        )
    status, kernels = session.server.request("GET", "/api/kernels")
    assert session.kernel_id not in [k["id"] for k in kernels]


def test_server_stop_ends_kernels(server):
    """Last: stopping the server with kernels running leaves no process behind."""
    sessions = [NotebookSession(server, name, f"{name}.ipynb") for name in (DIRECT, AUDITED)]
    pids = [s.pids() for s in sessions]
    for s in sessions:
        s.ws.close()
    code = server.stop()
    assert code == 0, f"server exit code {code}\n{server.log_tail()}"
    for p in pids:
        for role, pid in p.items():
            assert wait_until(lambda: process_gone(pid), DEATH_TIMEOUT), (
                f"{role} pid {pid} still runs after the server stopped\n{server.log_tail()}"
            )
    assert wait_until(lambda: not server.leftover_processes(), DEATH_TIMEOUT), (
        server.leftover_processes()
    )
