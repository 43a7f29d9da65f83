"""Hub-attested identity (issue 13) against a real JupyterHub whose users share one uid.

As root only (it creates system users and runs the Hub as root). The situation of
containers (zero-to-jupyterhub, DockerSpawner): every Hub user's server runs as the same
OS account, here the system user `jaudit-jovyan`, so SO_PEERCRED cannot tell the users
apart. What runs, all real:

- JupyterHub 6 (DummyAuthenticator, Hub users `alice` and `bob`; alice is in the group
  `research`) with a LocalProcessSpawner whose user switch always goes to `jaudit-jovyan`
  (each Hub user has a notebook directory of their own in that account's home), behind a
  configurable-http-proxy the test starts itself, so that the Hub can be stopped and
  started again while the proxy and the users' servers keep running (`cleanup_servers`
  off), as a Hub pod restart does;
- two services: `audit-test-driver`, whose token the test uses to drive the Hub's REST API
  (start servers, create and revoke tokens, reach the users' servers), and
  `another-service`, whose token is a valid Hub token that is not a user's;
- the collector as its own system user (as test_jupyterhub runs it) with
  `--hub-api-url` pointing at the Hub's API and no policy given (so `required`, the
  default); the users' servers have the audited python3 kernelspec (installed as the
  README says) in a JUPYTER_PATH of their own; a second collector with
  `--hub-identity preferred` for the negative cases;
- cells run through each user's server's REST API and kernel websocket (no browser).

Bob's cell, with his own token, tries to write into alice's session through the
collector's socket (their uid is the same). Negative cases run kernels started directly
with jupyter_client, with a bogus, a revoked, another service's or no
JUPYTERHUB_API_TOKEN in their environment, against each policy. The Hub outage test
stops the Hub while alice's session runs, and starts it again; it first waits until the
collector's verification of alice's server token is older than the collector's fresh
cache (10 s), so that the token is accepted during the outage from what the collector
keeps for outages, not because it was just verified; then it restarts the collector,
still during the outage: the running session goes on as alice's (the collector saved
what the Hub verified). Both trails validate against the schema and `verify`.
Tokens must never reach the store or a log: the last test greps for every token used.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from jsonschema import Draft202012Validator

from helpers import (
    BIN,
    KernelPool,
    as_user,
    execute,
    proxy_argv,
    run_ok,
    system_user,
    unique_marker,
    wait_until,
)
from test_audit import (
    Collector,
    LoggedKernel,
    field,
    read_store,
    verify,
    verify_output,
    write_kernelspec,
)
from test_forgery import SENDER, refusal_for
from test_forgery import assert_refused as assert_nack
from test_jupyterhub import (
    CHP,
    Hub,
    describe,
    hub_collector,
    install_audited_kernelspec,
    records,
    review,
    users_python,
)
from test_schema import SCHEMA_PATH, log_json, validate_all

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: creates system users and runs "
                       "JupyterHub as root, every user's server as one shared account"),
    pytest.mark.timeout(300),
]

SHARED_ACCOUNT = "jaudit-jovyan"
HUB_USERS = ("alice", "bob")
GROUPS = {"research": ["alice"]}
DRIVER = "audit-test-driver"
OTHER_SERVICE = "another-service"

# Liveness bounds only; no timing is asserted.
SPAWN_TIMEOUT = 90
CELL_TIMEOUT = 60
RECORD_TIMEOUT = 30
# A proxy the collector refused connects again after a pause (15 s in the core).
REFUSED_RETRY_BOUND = 60
# For this long the collector takes a token it verified from its cache without asking
# the Hub (src/collector/hub.rs, FRESH).
FRESH_CACHE_SECS = 10

def assert_refused(reply: dict, msgs: list[dict], marker: Path, diagnostics: str) -> None:
    """A kernel the collector does not accept: an AuditLogUnavailable error that says so
    (not "unavailable": trying again does not help until the identity is fixed), and
    nothing ran."""
    content = reply["content"]
    assert content["status"] == "error", diagnostics
    assert content["ename"] == "AuditLogUnavailable", diagnostics
    assert content["evalue"].startswith(
        "Execution refused: the audit log does not accept this kernel, so nothing was run"), \
        diagnostics
    assert "execute_input" not in [m["msg_type"] for m in msgs], "the kernel saw the request"
    assert not marker.exists(), "a refused cell ran"


# The reasons of the interface (collector.reason of identity_refused/identity_unverified).
EXPECTED_REASON = {
    "bogus": "token_rejected",
    "revoked": "token_rejected",
    "service": "not_a_user",
    "absent": "missing_token",
}


class Token(str):
    """A Hub token that does not show in a failure report (pytest prints the values of a
    failing test's fixtures)."""

    def __repr__(self) -> str:
        return "<token>"


# --- the Hub ---------------------------------------------------------------------------------


def one_account_hub_config(base: Path, port: int, hub_port: int, proxy_api_port: int,
                           kernels: Path, python: Path, *, proxy_token: str, driver_token: str,
                           other_token: str) -> str:
    """The jupyterhub_config.py of this test (printed in the report as it is)."""
    return f"""\
import pwd

from jupyterhub.spawner import LocalProcessSpawner, set_user_setuid

c = get_config()  # noqa

SHARED_ACCOUNT = {SHARED_ACCOUNT!r}


class OneAccountSpawner(LocalProcessSpawner):
    \"\"\"Every Hub user's server runs as the one OS account, as in containers.\"\"\"

    def make_preexec_fn(self, name):
        return set_user_setuid(SHARED_ACCOUNT)

    def user_env(self, env):
        account = pwd.getpwnam(SHARED_ACCOUNT)
        env.update(USER=SHARED_ACCOUNT, HOME=account.pw_dir, SHELL=account.pw_shell)
        return env


c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
# The test runs the proxy, so that the Hub can stop and start again under running servers.
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = {str(proxy_token)!r}
c.JupyterHub.cleanup_servers = False
c.JupyterHub.db_url = "sqlite:///{base}/hub/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{base}/hub/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{base}/hub/jupyterhub.pid"

c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users = {set(HUB_USERS)!r}
c.JupyterHub.load_groups = {{name: {{"users": users}} for name, users in {GROUPS!r}.items()}}
c.JupyterHub.services = [
    {{"name": {DRIVER!r}, "api_token": {str(driver_token)!r}}},
    {{"name": {OTHER_SERVICE!r}, "api_token": {str(other_token)!r}}},
]
c.JupyterHub.load_roles = [{{
    "name": "audit-test-driver",
    "scopes": ["admin:users", "admin:servers", "tokens", "access:servers", "read:groups"],
    "services": [{DRIVER!r}],
}}]

c.JupyterHub.spawner_class = OneAccountSpawner
c.Spawner.cmd = [{str(python)!r}, "-m", "jupyterhub.singleuser"]
c.Spawner.notebook_dir = "~/{{username}}"
c.Spawner.disable_user_config = True
c.Spawner.start_timeout = {SPAWN_TIMEOUT}
c.Spawner.http_timeout = {SPAWN_TIMEOUT}
c.Spawner.args = [
    "--KernelSpecManager.allowed_kernelspecs={{'python3'}}",
    "--KernelSpecManager.ensure_native_kernel=False",
    "--ServerApp.terminals_enabled=False",
]
c.Spawner.environment = {{"JUPYTER_PATH": {str(kernels)!r}}}
"""


class HubApi:
    """The Hub's REST API and the users' servers, through the proxy, as the driver service."""

    def __init__(self, hub: Hub, token: str) -> None:
        self.hub = hub
        self.token = token
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def request(self, method: str, path: str, expect: tuple[int, ...] = (200,),
                **kwargs: Any) -> requests.Response:
        response = self.http.request(method, f"{self.hub.url}{path}", timeout=30, **kwargs)
        assert response.status_code in expect, (
            f"{method} {path}: {response.status_code} {response.text[:500]}\n{self.hub.log()}")
        return response

    def start_server(self, user: str) -> None:
        self.request("POST", f"/hub/api/users/{user}/server", expect=(201, 202))

        def ready() -> bool:
            model = self.request("GET", f"/hub/api/users/{user}").json()
            return bool(model.get("servers", {}).get("", {}).get("ready"))

        assert wait_until(ready, SPAWN_TIMEOUT, 0.5), f"{user}'s server did not start\n" \
            f"{self.hub.log()}"

    def stop_server(self, user: str) -> None:
        self.request("DELETE", f"/hub/api/users/{user}/server", expect=(202, 204, 400, 404))

        def stopped() -> bool:
            model = self.request("GET", f"/hub/api/users/{user}").json()
            return not model.get("servers")

        wait_until(stopped, 30, 0.5)

    def new_token(self, user: str) -> tuple[str, str]:
        """(token, token id) of a new API token of `user`."""
        body = self.request("POST", f"/hub/api/users/{user}/tokens", expect=(200, 201),
                            json={"note": "jupyter-audit test"}).json()
        return Token(body["token"]), body["id"]

    def revoke_token(self, user: str, token_id: str) -> None:
        self.request("DELETE", f"/hub/api/users/{user}/tokens/{token_id}", expect=(204,))

    def start_kernel(self, user: str) -> ServerKernel:
        model = self.request("POST", f"/user/{user}/api/kernels", expect=(201,),
                             json={"name": "python3"}).json()
        return ServerKernel(self, user, model["id"])


class ServerKernel:
    """A kernel of a Hub user's server, run through its websocket like a frontend does."""

    def __init__(self, api: HubApi, user: str, kernel_id: str) -> None:
        self.user = user
        self.session = uuid.uuid4().hex
        url = api.hub.url.replace("http://", "ws://")
        self.ws = websocket.create_connection(
            f"{url}/user/{user}/api/kernels/{kernel_id}/channels?session_id={self.session}",
            header=[f"Authorization: token {api.token}"], timeout=CELL_TIMEOUT)

    def execute(self, code: str) -> tuple[dict, str]:
        """(execute_reply content, stdout) of code run as a cell."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": self.user,
                       "session": self.session, "version": "5.3",
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": True,
                        "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
        }))
        reply, idle, stdout = None, False, []
        deadline = time.monotonic() + CELL_TIMEOUT
        while reply is None or not idle:
            assert time.monotonic() < deadline, f"no reply to {code!r}"
            msg = json.loads(self.ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
            elif kind == "stream" and msg["content"]["name"] == "stdout":
                stdout.append(msg["content"]["text"])
        return reply, "".join(stdout)

    def run(self, code: str) -> str:
        reply, stdout = self.execute(code)
        assert reply["status"] == "ok", reply
        return stdout

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass


class ExternalProxy:
    """configurable-http-proxy, run by the test rather than by the Hub."""

    def __init__(self, hub: Hub, token: str) -> None:
        self.log_path = hub.base / "hub" / "proxy.log"
        env = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": token}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(CHP), "--ip", "127.0.0.1", "--port", str(hub.port),
                 "--api-ip", "127.0.0.1", "--api-port", str(hub.proxy_api_port),
                 "--error-target", f"http://127.0.0.1:{hub.hub_port}/hub/error"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        api = f"http://127.0.0.1:{hub.proxy_api_port}/api/routes"

        def up() -> bool:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                return requests.get(api, headers={"Authorization": f"token {token}"},
                                    timeout=2).ok
            except requests.RequestException:
                return False

        assert wait_until(up, 30, 0.2), f"the proxy did not start\n{self.log_path.read_text()}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def processes_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


# --- the module's environment ---------------------------------------------------------------


class Env:
    pass


@pytest.fixture(scope="module")
def hub_env():
    if not os.access(CHP, os.X_OK):
        pytest.fail(f"configurable-http-proxy not found at {CHP}: "
                    "run scripts/hub-env.sh (as root)")
    if not (BIN.is_file() and os.access(BIN, os.X_OK)):
        pytest.fail(f"jupyter-audit binary not found at {BIN}")
    outer_token = os.environ.pop("JUPYTERHUB_API_TOKEN", None)  # "absent" means absent

    env = Env()
    env.base = Path(tempfile.mkdtemp(prefix="ja-hubid-"))
    env.base.chmod(0o755)
    env.tokens = {name: Token(secrets.token_hex(32)) for name in ("proxy", "driver", "service")}
    env.logs: list[Path] = []
    hub = proxy = None
    collectors: list[Collector] = []
    env.pool = KernelPool()
    try:
        env.account = system_user(SHARED_ACCOUNT, home=Path("/home") / SHARED_ACCOUNT)
        for user in HUB_USERS:
            notebooks = Path(env.account.pw_dir) / user
            notebooks.mkdir(mode=0o700)
            os.chown(notebooks, env.account.pw_uid, env.account.pw_gid)
        env.python, env.prefix = users_python(env.base, SHARED_ACCOUNT)
        if as_user(SHARED_ACCOUNT, str(BIN), "--version").returncode != 0:
            pytest.skip(f"{SHARED_ACCOUNT} cannot run {BIN} (the repo must be in directories "
                        "other users can enter)")

        kernels_root = env.base / "share" / "jupyter"
        config = partial(one_account_hub_config, proxy_token=env.tokens["proxy"],
                         driver_token=env.tokens["driver"], other_token=env.tokens["service"])
        hub = env.hub = Hub(env.base, kernels_root, env.python, config=config)
        env.hub_api_url = f"http://127.0.0.1:{hub.hub_port}/hub/api"
        for policy in ("required", "preferred"):
            (env.base / policy).mkdir(mode=0o755)
        env.required = hub_collector(env.base / "required", "--hub-api-url", env.hub_api_url)
        env.preferred = hub_collector(env.base / "preferred", "--hub-api-url",
                                      env.hub_api_url, "--hub-identity", "preferred")
        for collector in (env.required, env.preferred):
            collectors.append(collector)
            collector.start()
            env.logs.append(collector.log_path)
        _, env.kernelspec = install_audited_kernelspec(env.base, env.required.socket,
                                                       env.prefix)

        proxy = ExternalProxy(hub, env.tokens["proxy"])
        hub.start()
        env.logs += [hub.log_path, proxy.log_path]
        shown = hub.config
        for token in env.tokens.values():
            shown = shown.replace(token, "<token>")
        print(f"jupyterhub_config.py:\n{shown}")
        env.api = HubApi(hub, env.tokens["driver"])
        yield env
    finally:
        env.pool.shutdown_all()
        if hub is not None:
            if hub.process is not None and hub.process.poll() is None:
                for user in HUB_USERS:
                    try:
                        env.api.stop_server(user)
                    except Exception:
                        pass
            hub.stop()
        if proxy is not None:
            proxy.stop()
        for collector in collectors:
            collector.kill()
        if hasattr(env, "account"):
            # Whatever of the shared account's is left (a server the Hub could not stop).
            for pid in processes_of(env.account.pw_uid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        subprocess.run(["userdel", "--remove", SHARED_ACCOUNT], capture_output=True, timeout=60)
        shutil.rmtree(env.base, ignore_errors=True)
        if outer_token is not None:
            os.environ["JUPYTERHUB_API_TOKEN"] = outer_token


def diagnostics(env: Env) -> str:
    parts = [env.hub.log()]
    for collector in (env.required, env.preferred):
        parts.append(collector.log())
    return "\n".join(parts)


@pytest.fixture(scope="module")
def hub_work(hub_env):
    """Alice and bob start their servers through the Hub's API and each runs a cell on a
    kernel of their server. Returns per user: the kernel (its websocket stays open), the
    cell's nonce, the uid the kernel runs as, and the server's Hub token (read by root from
    the kernel's environment, for the leak check)."""
    done = {}
    for user in HUB_USERS:
        hub_env.api.start_server(user)
        asked_at = time.monotonic()  # the collector asks the Hub about the server's token
        kernel = hub_env.api.start_kernel(user)
        nonce = uuid.uuid4().hex
        out = kernel.run(f"import os\nprint('cell of {user} {nonce}', os.getuid(), os.getpid())")
        words = out.split()
        assert words[:3] == ["cell", "of", user], out
        uid, pid = int(words[4]), int(words[5])
        done[user] = {"kernel": kernel, "nonce": nonce, "uid": uid, "asked_at": asked_at,
                      "token": Token(environ_of(pid)["JUPYTERHUB_API_TOKEN"])}
    yield done
    for work in done.values():
        work["kernel"].close()


def cell_records(store: Path, needle: str) -> list[dict]:
    return [r for r in read_store(store) if field(r, "event.action") == "execute_request"
            and needle in (field(r, "jupyter.code") or "")]


def wait_for_cell(store: Path, needle: str, env: Env) -> dict:
    found: list[dict] = []

    def stored() -> bool:
        found[:] = cell_records(store, needle)
        return bool(found)

    assert wait_until(stored, RECORD_TIMEOUT, 0.3), \
        f"no execute_request with {needle!r}\n{describe(read_store(store))}\n{diagnostics(env)}"
    assert len(found) == 1, describe(found)
    return found[0]


def assert_attested(record: dict, user: str, env: Env) -> None:
    """The record names the Hub user, says the Hub vouched for it, and keeps the OS account
    the code really ran as."""
    assert field(record, "user.name") == user, record
    assert field(record, "user.verified_by") == "jupyterhub", record
    assert field(record, "user.hub.server") == "", record
    assert sorted(field(record, "user.hub.groups") or []) == sorted(
        g for g, members in GROUPS.items() if user in members), record
    assert field(record, "process.user.name") == SHARED_ACCOUNT, record
    assert field(record, "process.user.id") == str(env.account.pw_uid), record


# --- 1. two Hub users, one uid --------------------------------------------------------------


def test_each_cell_is_on_the_record_under_its_hub_user_though_the_uid_is_shared(
        hub_env, hub_work):
    store = hub_env.required.store
    assert {work["uid"] for work in hub_work.values()} == {hub_env.account.pw_uid}
    for user, work in hub_work.items():
        request = wait_for_cell(store, work["nonce"], hub_env)
        assert_attested(request, user, hub_env)
        # Every record of the connection carries the same identity, outputs included.
        session = field(request, "jupyter.session_id")
        mine = [r for r in read_store(store) if field(r, "jupyter.session_id") == session]
        assert any(field(r, "event.action") == "stream" for r in mine), describe(mine)
        assert {field(r, "user.name") for r in mine} == {user}, describe(mine)
        assert {field(r, "user.verified_by") for r in mine} == {"jupyterhub"}, describe(mine)


def test_log_user_shows_only_that_hub_users_cells(hub_env, hub_work):
    store = hub_env.required.store
    wait_for_cell(store, hub_work["bob"]["nonce"], hub_env)
    alices = records(store, "--user", "alice")
    assert alices, describe(read_store(store))
    assert {field(r, "user.name") for r in alices} == {"alice"}, describe(alices)
    codes = [field(r, "jupyter.code") or "" for r in alices]
    assert any(hub_work["alice"]["nonce"] in c for c in codes), describe(alices)
    assert not any(hub_work["bob"]["nonce"] in c for c in codes), describe(alices)
    # The shared OS account is nobody's name: no Hub user's cell is listed under it.
    shared = records(store, "--user", SHARED_ACCOUNT)
    assert not any(field(r, "event.action") == "execute_request" for r in shared), \
        describe(shared)
    # `sessions` lists each session under its Hub user, with the account it ran as.
    out = review("sessions", "--store", str(store), "--json")
    sessions = [json.loads(line) for line in out.splitlines() if line.strip()]
    for user, work in hub_work.items():
        session = field(wait_for_cell(store, work["nonce"], hub_env), "jupyter.session_id")
        listed = [s for s in sessions if s["session_id"] == session]
        assert len(listed) == 1, out
        assert listed[0]["user"] == user, listed[0]
        assert listed[0]["verified_by"] == "jupyterhub", listed[0]
        assert listed[0]["user_id"] == str(hub_env.account.pw_uid), listed[0]


def test_a_hub_user_cannot_write_into_another_users_session(hub_env, hub_work):
    """Bob's cell, same uid as alice's kernel, speaks the collector protocol with his own
    server token and writes an `execution_refused` for alice's cell that ran: refused,
    and the forged_record that says so names bob, attested by the Hub."""
    store, socket = hub_env.required.store, str(hub_env.required.socket)
    alices = wait_for_cell(store, hub_work["alice"]["nonce"], hub_env)
    session = field(alices, "jupyter.session_id")
    forged = refusal_for(alices, "collector unavailable: forged by bob")
    bob = hub_work["bob"]["kernel"]
    bob.run(SENDER)
    out = bob.run(
        "import os\n"
        "with _socket.socket(_socket.AF_UNIX) as sock:\n"
        f"    sock.connect({socket!r})\n"
        "    _frame(sock, {'type': 'hello', 'version': 1,\n"
        "                  'hub_token': os.environ['JUPYTERHUB_API_TOKEN']})\n"
        "    hello = _read(sock)\n"
        f"    _frame(sock, {{'type': 'record', 'id': 1, 'record': {forged!r}}})\n"
        "    print(_json.dumps([hello, _read(sock)]))")
    hello, answer = json.loads(out)
    assert hello.get("type") == "hello", hello
    assert_nack(answer, session)

    def traced() -> list[dict]:
        return [r for r in read_store(store) if field(r, "event.action") == "forged_record"
                and field(r, "collector.refused.session_id") == session]

    assert wait_until(traced, RECORD_TIMEOUT, 0.3), describe(read_store(store))
    [trace] = traced()
    assert field(trace, "user.name") == "bob", trace
    assert field(trace, "user.verified_by") == "jupyterhub", trace
    assert field(trace, "process.user.name") == SHARED_ACCOUNT, trace
    msg_id = field(alices, "jupyter.msg_id")
    assert not [r for r in read_store(store) if field(r, "event.action") == "execution_refused"
                and field(r, "jupyter.msg_id") == msg_id], "bob's forgery is in alice's session"


# --- 2. tokens the Hub does not vouch for, under each policy --------------------------------


def direct_kernel(env: Env, socket: Path, token: str | None) -> LoggedKernel:
    """A kernel started with jupyter_client (as root) behind the proxy, recording to
    `socket`, with `token` as its JUPYTERHUB_API_TOKEN (none if None)."""
    ipykernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_env = {"RUST_LOG": "jupyter_audit=info"}
    if token is not None:
        spec_env["JUPYTERHUB_API_TOKEN"] = token
    name = write_kernelspec(proxy_argv(socket) + ipykernel, env=spec_env)
    kernel = LoggedKernel(env.pool, name, env.base)
    env.logs.append(kernel.log_path)
    return kernel


def proxy_pid(kernel: LoggedKernel) -> int:
    return kernel.km.provisioner.process.pid


@pytest.fixture(scope="module")
def revoked_token(hub_env):
    """A token of alice's that the Hub accepted, then revoked. (The collector takes a
    token it verified less than a minute ago from its cache, so this one is never shown
    to it before it is revoked.)"""
    token, token_id = hub_env.api.new_token("alice")
    whoami = f"{hub_env.hub_api_url}/user"
    answer = requests.get(whoami, headers={"Authorization": f"token {token}"}, timeout=10)
    assert answer.ok and answer.json()["name"] == "alice", answer.status_code
    hub_env.api.revoke_token("alice", token_id)
    answer = requests.get(whoami, headers={"Authorization": f"token {token}"}, timeout=10)
    assert answer.status_code == 403, answer.status_code
    return token


def token_of(kind: str, hub_env: Env, revoked: str) -> str | None:
    return {"bogus": Token(secrets.token_hex(32)), "revoked": revoked,
            "service": hub_env.tokens["service"], "absent": None}[kind]


def identity_record(store: Path, act: str, pid: int, env: Env,
                    kernel: LoggedKernel) -> dict:
    found: list[dict] = []

    def stored() -> bool:
        found[:] = [r for r in read_store(store) if field(r, "event.action") == act
                    and field(r, "process.pid") == pid]
        return bool(found)

    assert wait_until(stored, RECORD_TIMEOUT, 0.3), (
        f"no {act} record of pid {pid}\n{describe(read_store(store))}\n{diagnostics(env)}\n"
        f"{kernel.log()}")
    return found[0]


@pytest.mark.parametrize("kind", list(EXPECTED_REASON))
def test_required_refuses_the_cells_of_a_token_the_hub_does_not_vouch_for(
        hub_env, revoked_token, kind):
    token = token_of(kind, hub_env, revoked_token)
    kernel = direct_kernel(hub_env, hub_env.required.socket, token)
    marker = unique_marker(hub_env.base, f"refused-{kind}")
    code = f"open({str(marker)!r}, 'w').write('ran')\nprint('ran')"
    reply, msgs = execute(kernel.kc, code)
    assert_refused(reply, msgs, marker, f"{reply}\n{kernel.log()}\n{diagnostics(hub_env)}")
    # The notebook says why (never with the token).
    evalue = reply["content"]["evalue"]
    assert "JupyterHub identity" in evalue, evalue
    assert token is None or token not in evalue
    refused = identity_record(hub_env.required.store, "identity_refused", proxy_pid(kernel),
                              hub_env, kernel)
    assert field(refused, "collector.reason") == EXPECTED_REASON[kind], refused
    assert field(refused, "collector.detail"), refused
    assert field(refused, "user.verified_by") == "peercred", refused
    assert field(refused, "user.name") == "root", refused


@pytest.mark.parametrize("kind", list(EXPECTED_REASON))
def test_preferred_runs_the_cells_under_the_os_account_marked_unverified(
        hub_env, revoked_token, kind):
    kernel = direct_kernel(hub_env, hub_env.preferred.socket,
                           token_of(kind, hub_env, revoked_token))
    nonce = uuid.uuid4().hex
    assert run_ok(kernel.kc, f"print('{nonce}')") == f"{nonce}\n"
    request = wait_for_cell(hub_env.preferred.store, nonce, hub_env)
    assert field(request, "user.verified_by") == "peercred", request
    assert field(request, "user.name") == "root", request
    assert field(request, "user.id") == "0", request
    assert field(request, "process.user.name") == "root", request
    unverified = identity_record(hub_env.preferred.store, "identity_unverified",
                                 proxy_pid(kernel), hub_env, kernel)
    assert field(unverified, "collector.reason") == EXPECTED_REASON[kind], unverified
    assert field(unverified, "collector.detail"), unverified
    # One such record for the connection, not one per cell.
    again = uuid.uuid4().hex
    run_ok(kernel.kc, f"print('{again}')")
    wait_for_cell(hub_env.preferred.store, again, hub_env)
    again = [r for r in read_store(hub_env.preferred.store)
             if field(r, "event.action") == "identity_unverified"
             and field(r, "process.pid") == proxy_pid(kernel)]
    assert len(again) == 1, describe(again)


# --- 3. the Hub stops while sessions run, and comes back ------------------------------------


def hub_answers(env: Env) -> bool:
    try:
        return requests.get(f"{env.hub_api_url}/", timeout=2).ok
    except requests.RequestException:
        return False


def test_a_hub_outage_keeps_sessions_and_verified_tokens_and_refuses_unseen_ones(
        hub_env, hub_work):
    api, store = hub_env.api, hub_env.required.store
    alice = hub_work["alice"]["kernel"]
    unseen, _ = api.new_token("alice")  # never shown to the collector before the outage
    hub_env.unseen_token = unseen
    # Past the collector's fresh cache (10 s, in which it does not ask the Hub again),
    # so that alice's server token is accepted below only because it was verified before
    # the outage (the log line proves that path).
    pause = hub_work["alice"]["asked_at"] + FRESH_CACHE_SECS + 2 - time.monotonic()
    if pause > 0:
        time.sleep(pause)

    hub_env.hub.stop()
    assert not hub_answers(hub_env), "the Hub still answers"
    try:
        # The running session: its cells keep running, still alice's.
        nonce = uuid.uuid4().hex
        assert alice.run(f"print('during the outage {nonce}')") == \
            f"during the outage {nonce}\n"
        assert_attested(wait_for_cell(store, nonce, hub_env), "alice", hub_env)

        # A new kernel on alice's server presents the server's token, verified before.
        fresh = api.start_kernel("alice")
        try:
            nonce = uuid.uuid4().hex
            assert fresh.run(f"print('new kernel {nonce}')") == f"new kernel {nonce}\n"
            assert_attested(wait_for_cell(store, nonce, hub_env), "alice", hub_env)
        finally:
            fresh.close()
        log = hub_env.required.log_path.read_text(errors="replace")
        assert "a token it verified before is accepted" in log and "user=alice" in log, \
            hub_env.required.log()

        # The collector restarts, the Hub still down: alice's proxy reconnects, and the
        # collector knows her token from what it saved.
        hub_env.required.stop()
        hub_env.required.start()
        nonce = uuid.uuid4().hex

        def alice_runs() -> bool:
            try:
                return alice.run(f"print('after the restart {nonce}')") == \
                    f"after the restart {nonce}\n"
            except Exception:  # refused while the proxy reconnects: try again
                return False

        assert wait_until(alice_runs, REFUSED_RETRY_BOUND, 1), \
            f"alice's session stopped after a collector restart\n{hub_env.required.log()}"
        assert_attested(wait_for_cell(store, nonce, hub_env), "alice", hub_env)
        assert "Hub-verified tokens of the previous run restored" in \
            hub_env.required.log_path.read_text(errors="replace"), hub_env.required.log()

        # A token the collector never verified cannot be checked: required refuses it...
        refused_kernel = direct_kernel(hub_env, hub_env.required.socket, unseen)
        marker = unique_marker(hub_env.base, "refused-outage")
        reply, msgs = execute(refused_kernel.kc, f"open({str(marker)!r}, 'w').write('ran')")
        assert_refused(reply, msgs, marker,
                       f"{reply}\n{refused_kernel.log()}\n{diagnostics(hub_env)}")
        refused = identity_record(store, "identity_refused", proxy_pid(refused_kernel),
                                  hub_env, refused_kernel)
        assert field(refused, "collector.reason") == "hub_unreachable", refused
        # ...preferred runs it under the OS account, marked unverified.
        kernel = direct_kernel(hub_env, hub_env.preferred.socket, unseen)
        nonce = uuid.uuid4().hex
        assert run_ok(kernel.kc, f"print('{nonce}')") == f"{nonce}\n"
        request = wait_for_cell(hub_env.preferred.store, nonce, hub_env)
        assert field(request, "user.verified_by") == "peercred", request
        unverified = identity_record(hub_env.preferred.store, "identity_unverified",
                                     proxy_pid(kernel), hub_env, kernel)
        assert field(unverified, "collector.reason") == "hub_unreachable", unverified
    finally:
        hub_env.hub.start()

    # The Hub is back: the refused kernel's cells run once its proxy connects again (the
    # Hub vouches for the token now), under alice; the old session still runs.
    nonce = uuid.uuid4().hex
    code = f"print('{nonce}')"

    def runs() -> bool:
        reply, _ = execute(refused_kernel.kc, code)
        return reply["content"].get("ename") != "AuditLogUnavailable"

    assert wait_until(runs, REFUSED_RETRY_BOUND, 1), \
        f"still refused with the Hub back\n{refused_kernel.log()}\n{diagnostics(hub_env)}"
    request = wait_for_cell(store, nonce, hub_env)
    assert field(request, "user.name") == "alice", request
    assert field(request, "user.verified_by") == "jupyterhub", request
    assert field(request, "process.user.name") == "root", request
    nonce = uuid.uuid4().hex
    assert alice.run(f"print('{nonce}')") == f"{nonce}\n"
    assert_attested(wait_for_cell(store, nonce, hub_env), "alice", hub_env)


# --- 4. the whole trail ----------------------------------------------------------------------


def test_both_trails_match_the_schema_and_verify(hub_env, hub_work):
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    for collector in (hub_env.required, hub_env.preferred):
        validate_all(validator, log_json(collector.store))
        result = verify(collector.store)
        assert result.returncode == 0, verify_output(result)




def test_no_token_reaches_the_store_or_a_log(hub_env, hub_work, revoked_token):
    """Every token a proxy presented in this module (the servers', alice's API tokens,
    the other service's) is absent from both stores, the review output, the collectors'
    and the proxies' stderr and the Hub's log (where the servers' stderr goes)."""
    tokens = {f"{user}'s server": work["token"] for user, work in hub_work.items()}
    tokens.update(revoked=revoked_token, service=hub_env.tokens["service"])
    if hasattr(hub_env, "unseen_token"):
        tokens["unseen"] = hub_env.unseen_token
    files = [p for p in hub_env.logs if p.exists() and p != hub_env.hub.log_path]
    for collector in (hub_env.required, hub_env.preferred):
        files += sorted(p for p in collector.store.rglob("*") if p.is_file())
    # The search itself finds what is there: alice's cell is in the store.
    stored = b"".join(p.read_bytes() for p in files)
    assert hub_work["alice"]["nonce"].encode() in stored, files
    review_out = review("log", "--store", str(hub_env.required.store), "--json")
    for name, token in tokens.items():
        assert token not in review_out, f"{name} token in `log --json`"
        for path in files:
            assert token.encode() not in path.read_bytes(), f"{name} token in {path}"
    # The proxy's stderr of the Hub's kernels goes to the Hub's log (the servers inherit it).
    hub_log = hub_env.hub.log_path.read_text(errors="replace")
    for name, token in tokens.items():
        assert token not in hub_log, f"{name} token in the Hub's log"
