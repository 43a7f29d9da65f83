"""`jupyter console` on the audited kernel, typed into a real terminal (tmux).

A user runs `jupyter console --kernel <audited spec>` in a terminal, types code, presses
Ctrl-C while a cell sleeps and finally types `exit`. The terminal is a detached tmux
session on a private tmux server (`tmux -L <unique name>`, killed at the end); the test
types with `send-keys` and reads the screen with `capture-pane`. The same scenario runs
on ipykernel itself (the reference), so a failure can be told apart from the proxy's.

tmux is the Debian package `tmux`: installed here when missing and running as root,
otherwise the module is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from helpers import process_gone, proxy_argv, wait_until

# Each test stays well under this; the module under ~60 s.
pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("JUPYTER_AUDIT_BIN") or REPO / "target" / "release" / "jupyter-audit")

AUDITED = "console-audited"
DIRECT = "console-direct"

# Generous liveness bounds only.
SCREEN_TIMEOUT = 30
DEATH_TIMEOUT = 15
EXITED = "CONSOLE-EXITED rc="


def _tmux_available() -> str | None:
    """None when tmux can be used, else the reason it cannot."""
    if shutil.which("tmux"):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "tmux is not installed (Debian: apt-get install tmux) and we are not root"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "tmux"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0 and cmd[1] == "install":
            return f"apt-get install tmux failed: {r.stderr.strip()[-300:]}"
    return None if shutil.which("tmux") else "tmux could not be installed"


@pytest.fixture(scope="module")
def tmux_ok():
    reason = _tmux_available()
    if reason:
        pytest.skip(reason)


class Terminal:
    """`jupyter console --kernel NAME` running in a detached tmux session."""

    def __init__(self, kernel_name: str) -> None:
        self.kernel_name = kernel_name
        self.root = Path(tempfile.mkdtemp(prefix="ja-console-"))
        self.socket = f"ja-console-{uuid.uuid4().hex[:12]}"
        self.socket_path: str | None = None
        # pid -> command line of the processes the console started (see identify()).
        self.started: dict[int, bytes] = {}
        env = self._environment()
        self._write_kernelspecs(Path(env["JUPYTER_PATH"]))
        console = Path(sys.executable).parent / "jupyter-console"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        script = self.root / "run.sh"
        # The wrapper shell ignores the Ctrl-C meant for the console (a trap, so the console
        # itself gets the default disposition), and reports how the console ended. The pane
        # stays after that (remain-on-exit), so the test can read the screen.
        script.write_text(
            "#!/bin/sh\n"
            + exports
            + "trap true INT\n"
            + f"cd {shlex.quote(str(self.root))}\n"
            + f"{shlex.quote(str(console))} --kernel {kernel_name}\n"
            + f'echo "{EXITED}$?"\n'
        )
        script.chmod(0o755)
        self.tmux(
            "new-session", "-d", "-s", "console", "-x", "160", "-y", "50", str(script),
            ";", "set-option", "-t", "console", "remain-on-exit", "on",
        )
        self.socket_path = self.tmux("display-message", "-p", "#{socket_path}").strip()

    def _environment(self) -> dict[str, str]:
        env = {}
        for name in ("JUPYTER_PATH", "JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR",
                     "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
            path = self.root / name.lower()
            path.mkdir()
            env[name] = str(path)
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        env["HOME"] = os.environ.get("HOME", str(self.root))
        env["TERM"] = "xterm-256color"
        env["LANG"] = os.environ.get("LANG", "C.UTF-8")
        return env

    @staticmethod
    def _write_kernelspecs(jupyter_path: Path) -> None:
        ipykernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        specs = {
            AUDITED: {"argv": [*proxy_argv(), *ipykernel]},
            DIRECT: {"argv": ipykernel},
        }
        for name, spec in specs.items():
            spec_dir = jupyter_path / "kernels" / name
            spec_dir.mkdir(parents=True)
            spec = {"display_name": name, "language": "python", **spec}
            (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))

    def tmux(self, *args: str) -> str:
        r = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm-256color"},
        )
        assert r.returncode == 0, f"tmux {args}: {r.stderr}"
        return r.stdout

    def screen(self) -> str:
        """What the user sees, including the scrollback (without the blank rows below)."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-1000", "-t", "console")
        return text.rstrip() + "\n"

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "console", "-l", text)
        self.tmux("send-keys", "-t", "console", "Enter")

    def key(self, key: str) -> None:
        self.tmux("send-keys", "-t", "console", key)

    def wait_for(self, pattern: str, timeout: float = SCREEN_TIMEOUT, after: int = 0) -> re.Match:
        """Wait until a screen line (from line index `after` on) matches pattern."""
        found: list[re.Match] = []

        def seen() -> bool:
            for line in self.screen().splitlines()[after:]:
                m = re.search(pattern, line)
                if m:
                    found.append(m)
                    return True
            return False

        assert wait_until(seen, timeout, 0.2), (
            f"{pattern!r} not on the screen within {timeout} s\n--- screen ---\n{self.screen()}"
        )
        return found[0]

    def lines(self) -> int:
        return len(self.screen().splitlines())

    def console_pid(self) -> int:
        """The pid of `jupyter console` (the child of the wrapper shell in the pane)."""
        shell = self.tmux("display-message", "-p", "-t", "console", "#{pane_pid}").strip()
        children = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def identify(self) -> dict[str, int]:
        """Ask the kernel for its pid: {"kernel": pid} and, when audited, {"proxy": pid}."""
        self.type('import os; print("PI" + "DS", os.getpid(), os.getppid())')
        m = self.wait_for(r"^PIDS (\d+) (\d+)\s*$")
        kernel_pid, parent_pid = int(m.group(1)), int(m.group(2))
        pids = {"kernel": kernel_pid}
        if self.kernel_name == AUDITED:
            cmd = Path(f"/proc/{parent_pid}/cmdline").read_bytes().split(b"\0")
            assert Path(cmd[0].decode()).name == "jupyter-audit" and b"kernel" in cmd, cmd
            pids["proxy"] = parent_pid
        for pid in pids.values():
            self.started[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
        return pids

    def close(self) -> None:
        try:
            self.tmux("kill-server")
        except Exception:
            pass
        if self.socket_path:
            Path(self.socket_path).unlink(missing_ok=True)
        # Whatever the console started and a failed test left running: end it, by pid,
        # after checking that the pid still names the same process.
        for pid, cmdline in self.started.items():
            try:
                if not process_gone(pid) and Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(params=[DIRECT, AUDITED])
def terminal(request, tmux_ok):
    if not (BIN.is_file() and os.access(BIN, os.X_OK)):
        pytest.fail(f"jupyter-audit binary not found at {BIN}")
    term = Terminal(request.param)
    try:
        yield term
    finally:
        term.close()


def test_console_session(terminal):
    t = terminal
    t.wait_for(r"In \[1\]:")

    # Which processes run: the kernel, and (audited) the proxy in front of it.
    pids = t.identify()

    t.wait_for(r"In \[2\]:")
    t.type("print(6*7)")
    t.wait_for(r"^42\s*$")

    t.wait_for(r"In \[3\]:")
    start = t.lines()
    t.type('import time; print("SLE" + "EPING", flush=True); time.sleep(30)')
    t.wait_for(r"^SLEEPING\s*$", after=start - 1)
    t.key("C-c")
    t.wait_for(r"KeyboardInterrupt", after=start - 1)

    # The kernel survived the interrupt and still runs code.
    t.wait_for(r"In \[4\]:")
    t.type("print(6*7+1)")
    t.wait_for(r"^43\s*$")
    for role, pid in pids.items():
        assert not process_gone(pid), f"{role} {pid} died\n{t.screen()}"

    t.wait_for(r"In \[5\]:")
    t.type("exit")
    m = t.wait_for(re.escape(EXITED) + r"(\d+)")
    assert m.group(1) == "0", t.screen()
    for role, pid in pids.items():
        assert wait_until(lambda: process_gone(pid), DEATH_TIMEOUT), (
            f"{role} pid {pid} still runs after `exit`\n--- screen ---\n{t.screen()}"
        )
    screen = t.screen()
    assert "Traceback" not in screen.split("KeyboardInterrupt")[-1], screen


def test_closing_the_terminal_ends_the_kernel(terminal):
    """The user closes the terminal window while the console runs: nothing stays behind.

    Closing the window hangs up the console (SIGHUP), which dies without shutting the
    kernel down. jupyter_client gave the kernel JPY_PARENT_PID (the console's pid); ipykernel
    exits when that parent is gone. An audited kernel must not outlive its console either.
    """
    t = terminal
    t.wait_for(r"In \[1\]:")
    pids = t.identify()
    console = t.console_pid()
    t.tmux("kill-server")  # the terminal window closes
    assert wait_until(lambda: process_gone(console), DEATH_TIMEOUT), "console survived SIGHUP"
    survivors = {}
    for role, pid in pids.items():
        if not wait_until(lambda: process_gone(pid), DEATH_TIMEOUT):
            survivors[role] = pid
    assert not survivors, (
        f"still running {DEATH_TIMEOUT} s after the console (pid {console}) died: {survivors}"
    )
