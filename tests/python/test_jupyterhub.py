"""JupyterHub end to end: a real Hub, real users, JupyterLab in a real browser.

As root only (it creates system users, runs the Hub as root and each user's server as
that user). What runs, all real:

- the collector as its own system user `jupyter-audit`, store and socket in directories
  that pass its unsafe-path checks;
- the audited kernel installed the way the README says
  (`jupyter-audit install --wrap python3 --replace --socket ...`), on a copy of the venv's
  python3 kernelspec in a dedicated prefix that only the users' servers see
  (JUPYTER_PATH in the spawner's environment), so the suite's other tests keep theirs;
- JupyterHub (PAMAuthenticator, LocalProcessSpawner) on 127.0.0.1 behind
  configurable-http-proxy (npm, in .node/), with the README's Spawner.args plus
  `disable_user_config`, for two system users `jupyter-audit-alice` and
  `jupyter-audit-bob` (passwords set by chpasswd, homes 0700);
- Debian's chromium driven by Playwright: each user logs in on the Hub's login page,
  creates a notebook from the JupyterLab launcher and runs cells that print, show a
  matplotlib figure, raise, read input() (answered in the UI) and write a file.

Then the trail is read as root with the review tools (`log --json`, `sessions --json`,
`replay`): each user's cells under that user's verified name, with the notebook path,
JupyterLab's cell ids, code and outputs in order; replay rebuilds each notebook. From a
cell, alice can neither read nor write the store or the collector's files, nor find bob's
records; a python3 kernelspec and a config file she writes into her home change nothing
(still only the audited python3, no terminals). With the collector stopped, a cell does
not run and the notebook shows the refusal; once it is back, the next cell runs, and
`verify` passes on the whole store.

When the users cannot run the venv's interpreter (pyenv's Python under /root, say), their
servers and kernels run the system's same-version Python in a small venv that loads the
project venv's packages (see users_python).

Screenshots go to test-artifacts/jupyterhub/ at the repo root (paths are printed).
The tools come from scripts/python-env.sh (Python packages) and scripts/hub-env.sh
(configurable-http-proxy, chromium).
"""

from __future__ import annotations

import json
import os
import re
import secrets
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
from typing import Any, Callable

import pytest

from helpers import BIN, REPO, as_user, system_user, wait_until
from test_audit import Collector, field

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates system users and runs "
                       "JupyterHub as root with each user's server as that user"),
    pytest.mark.timeout(600),
]

VENV_BIN = Path(sys.executable).parent
CHP = REPO / ".node" / "node_modules" / ".bin" / "configurable-http-proxy"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "jupyterhub"

COLLECTOR_USER = "jupyter-audit"
ALICE = "jupyter-audit-alice"
BOB = "jupyter-audit-bob"

# Liveness bounds only; no timing is asserted.
HUB_START_TIMEOUT = 60
SPAWN_TIMEOUT = 90_000  # ms (Playwright)
CELL_TIMEOUT = 60_000  # ms
RECORD_TIMEOUT = 30

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
REFUSAL = "Execution refused: the audit log is unavailable"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


# --- the collector, as its own user ---------------------------------------------------------


def hub_collector(base: Path, *flags: str) -> Collector:
    """test_audit's Collector (with `flags`), run as its own system user, with its store
    and socket in directories of that user's (they pass its unsafe-path checks); not
    started."""
    user = system_user(COLLECTOR_USER)
    state, runtime = base / "collector", base / "run"
    for path in (state, runtime):
        path.mkdir(mode=0o755)
        os.chown(path, user.pw_uid, user.pw_gid)
    state.chmod(0o700)
    return Collector(base, *flags, store=state / "store", socket=runtime / "collector.sock",
                     run_as=(user.pw_uid, user.pw_gid))


# --- the review tools -----------------------------------------------------------------------


def review(*argv: str) -> str:
    return run(str(BIN), *argv).stdout


def records(store: Path, *filters: str) -> list[dict]:
    out = review("log", "--store", str(store), "--json", *filters)
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def describe(recs: list[dict], limit: int = 80) -> str:
    lines = []
    for r in recs[-limit:]:
        j = r.get("jupyter", {})
        extra = {k: j[k] for k in ("code", "text", "ename", "cell_id") if k in j}
        lines.append(f"#{field(r, 'event.sequence')} {field(r, 'event.action')} "
                     f"user={field(r, 'user.name')} {json.dumps(extra)[:140]}")
    return f"{len(recs)} records:\n  " + "\n  ".join(lines)


# --- the Hub ----------------------------------------------------------------------------------


def hub_config_head(base: Path, port: int, hub_port: int, api_port: int) -> str:
    """Where a test's Hub listens and keeps its state, its proxy started by the Hub."""
    return f"""\
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.JupyterHub.db_url = "sqlite:///{base}/hub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{base}/hub/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{base}/hub/jupyterhub.pid"

"""


def hub_config(base: Path, port: int, hub_port: int, api_port: int, kernels: Path,
               python: Path) -> str:
    """The jupyterhub_config.py of this test (printed in the report as it is)."""
    return hub_config_head(base, port, hub_port, api_port) + f"""\
c.JupyterHub.authenticator_class = "pam"
c.Authenticator.allowed_users = {{{ALICE!r}, {BOB!r}}}
# Authentication is PAM's ("login" service, pam_unix). No PAM session: without a logind
# (containers, CI) opening one fails; the Hub would log "Failed to open PAM session" and
# disable sessions by itself, so this only keeps the log clean.
c.PAMAuthenticator.open_sessions = False

c.JupyterHub.spawner_class = "localprocess"
c.Spawner.cmd = [{str(python)!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.default_url = "/lab"
c.Spawner.notebook_dir = "~"
# Ignore what the user controls in their home: ~/.jupyter config files, kernelspecs and
# extensions under ~/.local/share/jupyter, ~/.local Python packages.
c.Spawner.disable_user_config = True
c.Spawner.start_timeout = 90
c.Spawner.http_timeout = 90
# README "JupyterHub": command-line options outrank the user's own config files.
c.Spawner.args = [
    "--KernelSpecManager.allowed_kernelspecs={{'python3'}}",
    "--KernelSpecManager.ensure_native_kernel=False",
    "--ServerApp.terminals_enabled=False",
]
# The audited python3 lives in this prefix; it comes first in the search path.
c.Spawner.environment = {{"JUPYTER_PATH": {str(kernels)!r}}}
"""


class Hub:
    """A JupyterHub of the test's own; `config` builds its jupyterhub_config.py from
    (base, port, hub_port, proxy_api_port, kernels, python) (test_hub_identity has its own)."""

    def __init__(self, base: Path, kernels: Path, python: Path,
                 config: Callable[..., str] = hub_config) -> None:
        self.base = base
        (base / "hub").mkdir(mode=0o700)
        self.port, self.hub_port, self.proxy_api_port = _free_port(), _free_port(), _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config(base, self.port, self.hub_port, self.proxy_api_port, kernels,
                             python)
        self.config_path = base / "hub" / "jupyterhub_config.py"
        self.config_path.write_text(self.config)
        self.log_path = base / "hub" / "jupyterhub.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER", "JPY_", "IPYTHON"))}
        env["PATH"] = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "jupyterhub"), "-f", str(self.config_path)],
                cwd=self.base / "hub", env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT,
            )

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyterhub exited at start-up\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/hub/api/", timeout=2) as resp:
                    return resp.status == 200
            except (OSError, urllib.error.URLError):
                return False

        assert wait_until(ready, HUB_START_TIMEOUT, 0.3), f"the hub did not answer\n{self.log()}"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # stops the users' servers too
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no hub log)"
        return "--- hub log (tail) ---\n" + "\n".join(text[-lines:])


# --- the browser ------------------------------------------------------------------------------


class Lab:
    """One user's JupyterLab in its own Chromium (fresh profile)."""

    def __init__(self, playwright, hub: Hub, user: str, password: str, profile: Path) -> None:
        self.hub, self.user, self.password = hub, user, password
        self.context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 2000},
        )
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.set_default_timeout(CELL_TIMEOUT)
        self.console: list[str] = []
        self.page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        self.cells_typed: list[str] = []

    def close(self) -> None:
        try:
            self.context.close()
        except Exception:
            pass

    def login(self) -> None:
        page = self.page
        page.goto(f"{self.hub.url}/hub/login")
        page.fill("#username_input", self.user)
        page.fill("#password_input", self.password)
        page.click("#login_submit")
        page.wait_for_url(re.compile(rf"/user/{re.escape(self.user)}/lab"), timeout=SPAWN_TIMEOUT)
        page.wait_for_selector(".jp-Launcher", timeout=SPAWN_TIMEOUT)

    def api(self, path: str) -> Any:
        """GET on the user's server through the hub, with the browser's session."""
        response = self.context.request.get(f"{self.hub.url}/user/{self.user}{path}")
        assert response.ok, f"{path}: {response.status} {response.text()[:500]}"
        return response.json()

    def new_notebook(self) -> None:
        cards = self.page.locator('.jp-LauncherCard[data-category="Notebook"]')
        assert cards.count() == 1, f"{cards.count()} notebook cards in the launcher"
        cards.first.click()
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Cell .cm-content")
        self.page.wait_for_selector(".jp-NotebookPanel .jp-Notebook-ExecutionIndicator"
                                    "[data-status='idle']", timeout=SPAWN_TIMEOUT)
        # JupyterLab may start a second kernel for a new notebook and shut the first one
        # down at once; type nothing until one kernel is left and idle.
        def settled() -> bool:
            kernels = self.api("/api/kernels")
            return len(kernels) == 1 and kernels[0]["execution_state"] == "idle"

        assert wait_until(settled, 60, 0.5), self.api("/api/kernels")
        time.sleep(1)
        # The "official Jupyter news?" question would sit on every screenshot.
        no = self.page.locator(".jp-Notification-Toast-Close, .jp-toast-button", has_text="No")
        if no.count():
            no.first.click()

    def cells(self):
        return self.page.locator(".jp-NotebookPanel .jp-Notebook .jp-Cell")

    def run_cell(self, code: str, stdin: str | None = None, refused: bool = False):
        """Type code into the last (empty) cell, run it with Shift+Enter, wait for the end;
        returns the cell's locator."""
        cells = self.cells()
        cell = cells.nth(cells.count() - 1)
        editor = cell.locator(".cm-content")
        editor.click()
        assert editor.inner_text().strip() == "", "the last cell is not empty"
        # insert_text: no key events, so no auto-indent or bracket closing rewrites the code.
        self.page.keyboard.insert_text(code)
        self.page.keyboard.press("Shift+Enter")
        self.cells_typed.append(code)
        if stdin is not None:
            box = cell.locator(".jp-Stdin-input")
            box.wait_for()
            box.fill(stdin)
            box.press("Enter")
        prompt = cell.locator(".jp-InputArea-prompt")
        if refused:
            # A refused cell keeps its empty prompt; it shows the refusal instead.
            cell.locator(".jp-OutputArea-output", has_text=REFUSAL).wait_for()
        else:
            started = wait_until(lambda: prompt.inner_text().strip() != "[ ]:", 20, 0.2)
            assert started, f"JupyterLab did not send the cell: {code!r}"
            deadline = time.monotonic() + CELL_TIMEOUT / 1000
            while not re.fullmatch(r"\[\d+\]:", prompt.inner_text().strip()):
                assert time.monotonic() < deadline, f"cell did not finish: {code!r}"
                time.sleep(0.2)
        return cell

    def save(self, path: Path) -> dict:
        """Save the notebook (Ctrl+S) and return it as stored on disk once it has every
        typed cell."""
        self.cells().first.click()
        self.page.keyboard.press("Escape")
        self.page.keyboard.press("Control+s")
        # First save of an untitled notebook: JupyterLab offers a rename; keep the name.
        rename = self.page.get_by_role("button", name="Rename and Save")
        try:
            rename.click(timeout=5000)
        except Exception:
            pass

        def saved() -> bool:
            try:
                nb = json.loads(path.read_text())
            except (OSError, ValueError):
                return False
            sources = ["".join(c["source"]) for c in nb["cells"]]
            return sources[: len(self.cells_typed)] == self.cells_typed

        assert wait_until(saved, 30, 0.3), f"{path} was not saved with the typed cells"
        return json.loads(path.read_text())

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path


# --- the module's environment -----------------------------------------------------------------


class Env:
    pass


USERS_PROBE = "import jupyterhub.singleuser, jupyterlab, ipykernel, matplotlib"


def users_python(base: Path, user: str = ALICE) -> tuple[Path, Path]:
    """(interpreter, prefix) that the users' servers and kernels run: the venv's own if the
    users can run it; else (the venv's interpreter may live under a home they cannot
    enter, e.g. pyenv's in /root) a small venv of the system's same-version Python in the
    test's directory that loads the project venv's packages (a .pth file) and shares its
    share/ and etc/ (JupyterLab's assets, the server extensions' config)."""
    if as_user(user, sys.executable, "-c", USERS_PROBE).returncode == 0:
        return Path(sys.executable), Path(sys.prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    system = next((Path(p) for p in (f"/usr/bin/{version}", f"/usr/local/bin/{version}")
                   if os.access(p, os.X_OK)), None)
    if system is None:
        pytest.skip(f"the users cannot run {sys.executable} and there is no /usr/bin/{version}")
    prefix = base / "users-venv"
    run(str(system), "-m", "venv", "--without-pip", str(prefix))
    site_packages = next(p for p in sys.path
                         if p.endswith("site-packages") and p.startswith(sys.prefix))
    target = prefix / "lib" / version / "site-packages" / "ja-project-venv.pth"
    target.write_text(f"import site; site.addsitedir({site_packages!r})\n")
    for shared in ("share", "etc"):
        (prefix / shared).symlink_to(Path(sys.prefix) / shared)
    python = prefix / "bin" / "python"
    probe = as_user(user, str(python), "-c", USERS_PROBE)
    if probe.returncode != 0:
        pytest.skip(f"the users cannot run {sys.executable}, nor {python}: {probe.stderr}")
    return python, prefix


@pytest.fixture(scope="module")
def hub_env():
    for tool, why in ((CHP, "configurable-http-proxy"), (CHROMIUM, "chromium")):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{why} not found at {tool}: run scripts/hub-env.sh (as root)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: run scripts/python-env.sh")
    if not (BIN.is_file() and os.access(BIN, os.X_OK)):
        pytest.fail(f"jupyter-audit binary not found at {BIN}")

    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # no screenshot of an earlier run
    env = Env()
    env.base = Path(tempfile.mkdtemp(prefix="ja-hub-"))
    env.base.chmod(0o755)
    env.passwords = {}
    env.users = {}
    collector = hub = playwright = None
    env.labs = {}
    try:
        for name in (ALICE, BOB):
            env.users[name] = system_user(name, home=Path("/home") / name)
            env.passwords[name] = secrets.token_urlsafe(16)
            subprocess.run(["chpasswd"], input=f"{name}:{env.passwords[name]}\n", text=True,
                           check=True, capture_output=True, timeout=60)
        env.python, env.prefix = users_python(env.base)
        for name in (ALICE, BOB):
            if as_user(name, str(BIN), "--version").returncode != 0:
                pytest.skip(f"{name} cannot run {BIN} (the repo must be in directories "
                            "other users can enter)")

        collector = env.collector = hub_collector(env.base)
        collector.start()

        kernels_root, env.kernelspec = install_audited_kernelspec(env.base, collector.socket,
                                                                  env.prefix)

        hub = env.hub = Hub(env.base, kernels_root, env.python)
        hub.start()
        print(f"jupyterhub_config.py:\n{hub.config}")

        playwright = sync_playwright().start()
        env.playwright = playwright
        yield env
    finally:
        for lab in env.labs.values():
            lab.close()
        if playwright is not None:
            playwright.stop()
        if hub is not None:
            hub.stop()
        if collector is not None:
            collector.kill()
        # The logs go with the screenshots (the directory itself is removed).
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        logs = [env.base / "hub" / "jupyterhub.log"]
        if collector is not None:
            logs.append(collector.log_path)
        for log in logs:
            if log.exists():
                shutil.copy(log, ARTIFACTS / log.name)
        for name in (ALICE, BOB):
            subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=60)
        shutil.rmtree(env.base, ignore_errors=True)


def install_audited_kernelspec(base: Path, socket: Path, prefix: Path) -> tuple[Path, dict]:
    """The audited kernel, installed as the README says, on a copy of the venv's python3
    kernelspec in a prefix of its own under `base` (the suite's other tests keep the
    venv's); returns (the JUPYTER_PATH entry to give the users' servers, kernel.json)."""
    kernels_root = base / "share" / "jupyter"
    source = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3"
    assert (source / "kernel.json").is_file(), f"no python3 kernelspec at {source}"
    shutil.copytree(source, kernels_root / "kernels" / "python3")
    install_env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    install_env.update(JUPYTER_PATH=str(kernels_root), VIRTUAL_ENV=str(prefix))
    run(str(BIN), "install", "--wrap", "python3", "--replace", "--socket", str(socket),
        "--config", str(base / "no-admin-config.toml"), env=install_env)
    kernelspec = json.loads((kernels_root / "kernels" / "python3" / "kernel.json").read_text())
    assert kernelspec["argv"][0] == str(BIN), kernelspec
    for path in [base / "share", *(base / "share").rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return kernels_root, kernelspec


def lab_for(env: Env, user: str) -> Lab:
    if user not in env.labs:
        profile = env.base / f"chromium-{user}"
        profile.mkdir()
        env.labs[user] = Lab(env.playwright, env.hub, user, env.passwords[user], profile)
    return env.labs[user]


def diagnostics(env: Env) -> str:
    try:
        trail = review("log", "--store", str(env.collector.store))[-6000:]
    except AssertionError as e:
        trail = str(e)
    return f"{env.hub.log()}\n{env.collector.log()}\n--- the trail ---\n{trail}"


# --- the users' work -----------------------------------------------------------------------


def user_cells(user: str, token: str) -> list[tuple[str, str | None]]:
    """(code, stdin answer) of the cells each user runs."""
    return [
        (f'print("hello from {user} {token}")', None),
        ("import matplotlib.pyplot as plt\n"
         f"plt.plot([0, 1, 2, 3], [0, 1, 4, 9])\nplt.title({user!r})\nplt.show()", None),
        (f"raise ValueError('deliberate error of {user}')", None),
        ("answer = input('your answer? ')\nprint('answered:', answer)", f"{user}-says-{token}"),
        (f"with open('written-by-{user}.txt', 'w') as f:\n"
         f"    f.write('{token}')\nprint('wrote the file')", None),
    ]


@pytest.fixture(scope="module")
def work(hub_env):
    """Bob, then alice, log in, create a notebook and run their cells; both notebooks are
    saved and screenshotted. Returns per user: token, typed cells, the saved notebook."""
    done = {}
    for user in (BOB, ALICE):
        token = uuid.uuid4().hex
        lab = lab_for(hub_env, user)
        try:
            lab.login()
            lab.new_notebook()
            for code, answer in user_cells(user, token):
                lab.run_cell(code, stdin=answer)
            home = Path(hub_env.users[user].pw_dir)
            notebook = lab.save(home / "Untitled.ipynb")
            lab.screenshot(f"{user}-notebook")
        except Exception as e:
            lab.screenshot(f"{user}-failure")
            console = "\n".join(lab.console[-60:])
            raise AssertionError(f"{user}'s browser session failed: {e}\n{diagnostics(hub_env)}"
                                 f"\n--- browser console ---\n{console}")
        done[user] = {"token": token, "cells": list(lab.cells_typed), "notebook": notebook}
    return done


# --- the tests ----------------------------------------------------------------------------


def test_users_servers_offer_only_the_audited_kernelspec(hub_env, work):
    for user in (ALICE, BOB):
        specs = lab_for(hub_env, user).api("/api/kernelspecs")
        assert set(specs["kernelspecs"]) == {"python3"}, specs
        spec = specs["kernelspecs"]["python3"]["spec"]
        assert "jupyter_audit" in spec.get("metadata", {}), spec
        # The proxy runs with the collector's socket (the spec's argv is not in the API;
        # the installed file is the one the server found first).
        assert str(hub_env.collector.socket) in hub_env.kernelspec["argv"]


def test_cells_are_on_the_record_under_each_users_verified_name(hub_env, work):
    store = hub_env.collector.store
    for user in (ALICE, BOB):
        token = work[user]["token"]
        typed = work[user]["cells"]
        nb_cells = [c for c in work[user]["notebook"]["cells"] if "".join(c["source"])]

        def complete() -> bool:
            recs = records(store, "--user", user)
            replies = [r for r in recs if field(r, "event.action") == "execute_reply"]
            return len(replies) >= len(typed)

        assert wait_until(complete, RECORD_TIMEOUT, 0.5), describe(records(store))
        everything = records(store, "--user", user)
        assert {field(r, "user.name") for r in everything} == {user}, describe(everything)
        assert {field(r, "user.id") for r in everything} == {str(hub_env.users[user].pw_uid)}
        # The notebook's session (JupyterLab may have started and stopped another kernel).
        session = session_of(everything, token)
        mine = [r for r in everything if field(r, "jupyter.session_id") == session]
        listing = describe(mine)
        start = [r for r in mine if field(r, "event.action") == "session_start"]
        assert len(start) == 1, listing
        assert field(start[0], "jupyter.hub_user") == user, start[0]
        notebook_path = field(start[0], "jupyter.notebook_path") or ""
        assert notebook_path.endswith("Untitled.ipynb"), start[0]

        requests = [r for r in mine if field(r, "event.action") == "execute_request"
                    and not field(r, "jupyter.silent", False)]
        user_requests = [r for r in requests if field(r, "jupyter.cell_id")]
        assert [field(r, "jupyter.code") for r in user_requests] == typed, listing
        assert [field(r, "jupyter.cell_id") for r in user_requests] == [
            c["id"] for c in nb_cells], listing

        def outputs(request: dict) -> list[dict]:
            msg_id = field(request, "jupyter.msg_id")
            return [r for r in mine if field(r, "jupyter.parent_msg_id") == msg_id]

        def text_of(request: dict) -> str:
            return "".join(field(r, "jupyter.text", "") for r in outputs(request)
                           if field(r, "event.action") == "stream")

        hello, figure, error, prompt, writer = user_requests
        assert text_of(hello) == f"hello from {user} {token}\n", describe(outputs(hello))
        images = [r for r in outputs(figure) if field(r, "event.action") == "display_data"]
        assert len(images) == 1, describe(outputs(figure))
        png = field(images[0], "jupyter.data", {}).get("image/png")
        assert isinstance(png, dict) and png.get("size", 0) > 1000, images[0]
        errors = [r for r in outputs(error) if field(r, "event.action") == "error"]
        assert [field(r, "jupyter.ename") for r in errors] == ["ValueError"], describe(mine)
        assert f"deliberate error of {user}" in field(errors[0], "jupyter.evalue", "")
        asked = [r for r in outputs(prompt) if field(r, "event.action") == "input_request"]
        assert len(asked) == 1, describe(outputs(prompt))
        assert field(asked[0], "jupyter.prompt") == "your answer? ", asked[0]
        # JupyterLab answers with the prompt as the reply's parent.
        answers = [r for r in mine if field(r, "event.action") == "input_reply"
                   and field(r, "jupyter.parent_msg_id") == field(asked[0], "jupyter.msg_id")]
        assert [field(r, "jupyter.value") for r in answers] == [f"{user}-says-{token}"], listing
        assert text_of(prompt) == f"answered: {user}-says-{token}\n"
        assert text_of(writer) == "wrote the file\n"
        written = Path(hub_env.users[user].pw_dir) / f"written-by-{user}.txt"
        assert written.read_text() == token
        assert written.stat().st_uid == hub_env.users[user].pw_uid

        # In order: every output sits between its request and the next request.
        sequences = [field(r, "event.sequence") for r in user_requests]
        for i, request in enumerate(user_requests):
            upper = sequences[i + 1] if i + 1 < len(sequences) else float("inf")
            for out in outputs(request):
                assert sequences[i] < field(out, "event.sequence") < upper, listing


def session_of(recs: list[dict], token: str) -> str:
    """The session id of the notebook whose first cell printed `token`."""
    sessions = {field(r, "jupyter.session_id") for r in recs
                if field(r, "event.action") == "execute_request"
                and token in field(r, "jupyter.code", "")}
    assert len(sessions) == 1, describe(recs)
    return sessions.pop()


def test_sessions_and_replay_rebuild_each_notebook(hub_env, work, tmp_path):
    store = hub_env.collector.store
    out = review("sessions", "--store", str(store), "--json")
    sessions = [json.loads(line) for line in out.splitlines() if line.strip()]
    for user in (ALICE, BOB):
        typed = work[user]["cells"]
        session = session_of(records(store, "--user", user), work[user]["token"])
        listed = [s for s in sessions if s["session_id"] == session]
        assert len(listed) == 1, out
        entry = listed[0]
        assert entry["user"] == user and entry["hub_user"] == user, entry
        assert entry["user_id"] == str(hub_env.users[user].pw_uid), entry
        assert (entry["notebook"] or "").endswith("Untitled.ipynb"), entry
        assert entry["cells"] >= len(typed) and entry["errors"] >= 1, entry
        assert entry["state"] == "running", entry
        out = tmp_path / f"{user}.ipynb"
        review("replay", "--store", str(store), "--session", session, "--user", user,
               "-o", str(out))
        rebuilt = json.loads(out.read_text())
        sources = ["".join(c["source"]) for c in rebuilt["cells"]]
        assert [s for s in sources if s in typed] == typed, sources
        ids = {c["id"] for c in rebuilt["cells"]}
        saved_ids = [c["id"] for c in work[user]["notebook"]["cells"] if "".join(c["source"])]
        assert set(saved_ids) <= ids, (saved_ids, ids)
        answered = next(c for c in rebuilt["cells"] if "input(" in "".join(c["source"]))
        assert any("answered:" in "".join(o.get("text", "")) for o in answered["outputs"])


def test_a_user_cannot_reach_the_store_or_the_other_users_work(hub_env, work):
    store = hub_env.collector.store
    segments = sorted((store / "segments").glob("*.jsonl"))
    assert segments, "no segment in the store"
    bob_home = hub_env.users[BOB].pw_dir
    bob_token = work[BOB]["token"]
    attempts = {
        "read segment": f"open({str(segments[0])!r}).read()",
        "append segment": f"open({str(segments[0])!r}, 'a').write('x')",
        "list store": f"os.listdir({str(store)!r})",
        "create in store": f"open({str(store / 'segments' / 'x.jsonl')!r}, 'w')",
        "read checkpoints": f"open({str(store / 'checkpoints.jsonl')!r}).read()",
        "signal collector": f"os.kill({hub_env.collector.process.pid}, signal.SIGTERM)",
        "list bob home": f"os.listdir({bob_home!r})",
        "read bob notebook": f"open({bob_home + '/Untitled.ipynb'!r}).read()",
        "list bob runtime": f"os.listdir({bob_home + '/.local/share/jupyter/runtime'!r})",
    }
    code = "import os, signal\n"
    for label, attempt in attempts.items():
        code += (f"try:\n    {attempt}\n    print({label!r}, 'allowed')\n"
                 f"except Exception as e:\n    print({label!r}, type(e).__name__)\n")
    # Look for bob's token anywhere alice can read under the test's directories and /home
    # (spelled in hex here, or her own history would hold it).
    code += (
        f"needle = bytes.fromhex({bob_token.encode().hex()!r})\n"
        "found = []\n"
        f"for top in ({str(hub_env.base)!r}, '/home'):\n"
        "    for d, _, files in os.walk(top):\n"
        "        for f in files:\n"
        "            try:\n"
        "                with open(os.path.join(d, f), 'rb') as fh:\n"
        "                    if needle in fh.read(50_000_000):\n"
        "                        found.append(os.path.join(d, f))\n"
        "            except OSError:\n"
        "                pass\n"
        "print('bob token found in', found)"
    )
    lab = lab_for(hub_env, ALICE)
    cell = lab.run_cell(code)
    output = cell.locator(".jp-OutputArea").inner_text()
    lab.screenshot(f"{ALICE}-permissions")
    for label in attempts:
        assert f"{label} PermissionError" in output, output
    assert "bob token found in []" in output, output
    assert hub_env.collector.process.poll() is None


def test_a_kernelspec_of_the_users_own_is_not_offered(hub_env, work):
    """A user who writes an unaudited `python3` (and another spec) into their own data
    dir, and a config file that would allow everything, still gets only the audited one,
    cannot start the other one by name, and has no terminals."""
    lab = lab_for(hub_env, ALICE)
    rogue = {"argv": [str(hub_env.python), "-m", "ipykernel_launcher", "-f",
                      "{connection_file}"], "display_name": "rogue", "language": "python"}
    code = (
        "import json, os\n"
        "data = os.path.expanduser('~/.local/share/jupyter/kernels')\n"
        "for name in ('python3', 'rogue'):\n"
        "    os.makedirs(os.path.join(data, name), exist_ok=True)\n"
        "    with open(os.path.join(data, name, 'kernel.json'), 'w') as f:\n"
        f"        json.dump({rogue!r}, f)\n"
        "os.makedirs(os.path.expanduser('~/.jupyter'), exist_ok=True)\n"
        "with open(os.path.expanduser('~/.jupyter/jupyter_server_config.json'), 'w') as f:\n"
        "    json.dump({'KernelSpecManager': {'allowed_kernelspecs': []}}, f)\n"
        "print(sorted(os.listdir(data)))"
    )
    cell = lab.run_cell(code)
    assert "['python3', 'rogue']" in cell.locator(".jp-OutputArea").inner_text()
    specs = lab.api("/api/kernelspecs")
    assert set(specs["kernelspecs"]) == {"python3"}, specs
    spec = specs["kernelspecs"]["python3"]["spec"]
    assert spec["display_name"] != "rogue" and "jupyter_audit" in spec["metadata"], spec
    terminals = lab.context.request.get(f"{hub_env.hub.url}/user/{ALICE}/api/terminals")
    assert terminals.status == 404, terminals.status
    # Asked for by name (as a script in the browser could), it does not start either.
    started = lab.page.evaluate(
        """async (url) => {
            const xsrf = (document.cookie.match(/_xsrf=([^;]+)/) || [])[1] || "";
            const response = await fetch(url, {
                method: "POST",
                headers: {"X-XSRFToken": decodeURIComponent(xsrf),
                          "Content-Type": "application/json"},
                body: JSON.stringify({name: "rogue"}),
            });
            return [response.status, await response.text()];
        }""",
        f"/user/{ALICE}/api/kernels",
    )
    # The server answers a bare 500 and logs why.
    assert started[0] >= 400, started
    assert wait_until(lambda: "No such kernel named rogue" in hub_env.hub.log(10_000), 10), \
        hub_env.hub.log()
    assert len(lab.api("/api/kernels")) == 1, lab.api("/api/kernels")


def test_collector_down_refuses_the_cell_and_it_runs_once_back(hub_env, work):
    collector = hub_env.collector
    lab = lab_for(hub_env, ALICE)
    home = Path(hub_env.users[ALICE].pw_dir)
    marker = home / f"refused-{uuid.uuid4().hex[:8]}"
    collector.stop()
    cell = lab.run_cell(f"open({str(marker)!r}, 'w').write('this cell ran')\nprint('ran')",
                        refused=True)
    output = cell.locator(".jp-OutputArea").inner_text()
    lab.screenshot(f"{ALICE}-refused")
    assert "AuditLogUnavailable" in output and REFUSAL in output, output
    assert not marker.exists(), "a refused cell ran"

    collector.start()  # the same store and socket

    def refusal_stored() -> bool:
        return any(field(r, "event.action") == "execution_refused"
                   for r in records(collector.store, "--user", ALICE))

    assert wait_until(refusal_stored, RECORD_TIMEOUT, 0.5), diagnostics(hub_env)
    cell = lab.run_cell(f"import os\nprint('resumed', os.path.exists({str(marker)!r}))")
    output = cell.locator(".jp-OutputArea").inner_text()
    lab.screenshot(f"{ALICE}-resumed")
    assert "resumed False" in output, output

    # The trail of the whole module is intact.
    verified = run(str(BIN), "verify", "--store", str(collector.store), check=False)
    assert verified.returncode == 0, f"{verified.stdout}\n{verified.stderr}"
