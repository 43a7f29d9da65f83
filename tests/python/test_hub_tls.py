"""Hub attestation over TLS: a real JupyterHub with `internal_ssl = True`.

Under internal_ssl the Hub's API is https with a certificate signed by the Hub's own
`hub-ca`, and the Hub asks every client for a certificate signed by one of its internal
CAs (its trust bundle `hub-ca_trust.crt` holds all five: hub, notebooks, proxy-api,
proxy-client, services). JupyterHub generates them with certipy under
`internal_certs_location/<name>/<name>.{crt,key}`.

One Hub for the module (DummyAuthenticator, no single-user server: the collector only
asks `GET /hub/api/user` with the kernel's token), behind configurable-http-proxy (npm,
in .node/), on 127.0.0.1 and free ports. A service with the admin role creates the user
`alice` and a token of hers through the REST API, over https with a client certificate.
The collector gets a certificate of its own, signed by the Hub's `services-ca` (with
openssl, as the README says; the Hub's keys are not reused).

- With the Hub's CA and that certificate, a kernel holding alice's token runs a cell and
  the records say `user.name: alice`, `verified_by: jupyterhub`, the OS account in
  `process.user`.
- Without a client certificate or with one of another CA (the Hub ends the handshake), or
  trusting another CA (the Hub's certificate cannot be verified), the collector (policy
  required) refuses the kernel: the cell does not run, the notebook sees the refusal,
  and an `identity_refused` record says `hub_unreachable` and why, in words that name
  the TLS failure.
- The token appears neither in the collector's log, nor in the proxy's, nor in the store.
- A key that is not the client certificate's stops the collector at start, and says
  which files.

certipy and requests come with jupyterhub (tests/requirements.txt).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from certipy import Certipy

from helpers import (
    BIN,
    REPO,
    KernelPool,
    execute,
    proxy_argv,
    stdout_of,
    unique_marker,
    wait_until,
)
from test_audit import (
    Collector,
    LoggedKernel,
    action,
    by_msg_id,
    children,
    describe,
    field,
    wait_for_records,
    write_kernelspec,
)

CHP = REPO / ".node" / "node_modules" / ".bin" / "configurable-http-proxy"
VENV_BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.skipif(not CHP.exists(), reason=f"configurable-http-proxy is not installed "
                       f"({CHP}; scripts/hub-env.sh installs it)"),
    pytest.mark.skipif(not shutil.which("openssl"), reason="the openssl command is missing"),
    pytest.mark.timeout(180),
]

HUB_START_TIMEOUT = 60  # liveness only
SERVICE = "jupyter-audit-tls-test"
ALICE = "alice"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TlsHub:
    """JupyterHub with internal_ssl, its REST API driven by an admin service."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(mode=0o700)
        self.certs = base / "internal-ssl"
        self.service_token = secrets.token_hex(24)
        self.port = free_port()
        hub_port = free_port()
        # The collector asks the Hub directly (internal_ssl: https, client certificates).
        self.api_url = f"https://127.0.0.1:{hub_port}/hub/api"
        self.config_path = base / "jupyterhub_config.py"
        self.config_path.write_text(f"""\
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.JupyterHub.internal_ssl = True
c.JupyterHub.internal_certs_location = {str(self.certs)!r}
c.ConfigurableHTTPProxy.command = [{str(CHP)!r}]
c.ConfigurableHTTPProxy.api_url = "https://127.0.0.1:{free_port()}"
c.JupyterHub.db_url = "sqlite:///{base}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{base}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = "{base}/jupyterhub.pid"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.services = [{{"name": {SERVICE!r}, "api_token": {self.service_token!r}}}]
c.JupyterHub.load_roles = [{{"name": "admin", "services": [{SERVICE!r}]}}]
""")
        self.log_path = base / "jupyterhub.log"
        self.process: subprocess.Popen | None = None
        self.client_cert: tuple[str, str] | None = None

    # What JupyterHub generates (after start): the CA that signed the Hub's certificate,
    # and the CA whose signees the Hub accepts as services.
    @property
    def ca_file(self) -> Path:
        return self.certs / "hub-ca" / "hub-ca.crt"

    def internal_ca(self, name: str) -> dict[str, str]:
        return {"cert": str(self.certs / name / f"{name}.crt"),
                "key": str(self.certs / name / f"{name}.key")}

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER", "JPY_", "IPYTHON"))}
        env["PATH"] = f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "jupyterhub"), "-f", str(self.config_path)],
                cwd=self.base, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

        def certs_written() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyterhub exited at start-up\n{self.log()}")
            # hub-internal is signed last, after every CA is written.
            return (self.certs / "hub-internal" / "hub-internal.crt").exists()

        assert wait_until(certs_written, HUB_START_TIMEOUT, 0.2), f"no certs\n{self.log()}"
        self.client_cert = signed_client_cert(self, self.base / "test-client", "audit-test")

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"jupyterhub exited at start-up\n{self.log()}")
            try:
                return self.api("GET", "/").status_code == 200
            except requests.RequestException:
                return False

        assert wait_until(ready, HUB_START_TIMEOUT, 0.3), f"the Hub did not answer\n{self.log()}"

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """The Hub's REST API as the admin service, over https with a client certificate.
        verify= is passed per request: a session's would lose to $REQUESTS_CA_BUNDLE."""
        return requests.request(
            method, f"{self.api_url}{path}", verify=str(self.ca_file), cert=self.client_cert,
            headers={"Authorization": f"token {self.service_token}"}, timeout=10, **kwargs,
        )

    def user_token(self, user: str) -> str:
        created = self.api("POST", f"/users/{user}")
        assert created.status_code in (201, 409), created.text
        answer = self.api("POST", f"/users/{user}/tokens", json={"note": "kernel under test"})
        assert answer.status_code == 201, answer.text
        return answer.json()["token"]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)  # stops its proxy too
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no hub log)"
        return "--- hub log (tail) ---\n" + "\n".join(text[-lines:])


def signed_client_cert(hub: TlsHub, store: Path, name: str) -> tuple[str, str]:
    """A new key and certificate, signed by the Hub's services-ca (in its trust bundle),
    made with certipy in a store of its own (the Hub's certipy.json is left alone)."""
    certipy = Certipy(store_dir=str(store))
    certipy.store.add_record("services-ca", is_ca=True, files=hub.internal_ca("services-ca"),
                             overwrite=True)
    record = certipy.create_signed_pair(name, "services-ca")
    return record["files"]["cert"], record["files"]["key"]


def openssl_client_cert(hub: TlsHub, directory: Path) -> tuple[str, str]:
    """The collector's key and certificate as README "Identity from JupyterHub" makes
    them: openssl, signed by the Hub's services-ca."""
    directory.mkdir()
    ca = hub.internal_ca("services-ca")
    key, csr, ext, pem = (directory / name for name in
                          ("hub-client.key", "hub-client.csr", "hub-client.ext", "hub-client.pem"))
    ext.write_text("extendedKeyUsage=clientAuth\n")
    for argv in (
        ["req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=jupyter-audit-collector",
         "-keyout", key, "-out", csr],
        ["x509", "-req", "-in", csr, "-CA", ca["cert"], "-CAkey", ca["key"],
         "-CAserial", directory / "services-ca.srl", "-CAcreateserial", "-days", "365",
         "-extfile", ext, "-out", pem],
    ):
        result = subprocess.run(["openssl", *map(str, argv)], capture_output=True, text=True)
        assert result.returncode == 0, f"openssl {argv}\n{result.stderr}"
    return str(pem), str(key)


def foreign_ca(store: Path) -> Path:
    """A fresh self-signed CA that signed nothing of the Hub's."""
    record = Certipy(store_dir=str(store)).create_ca("not-the-hub-ca")
    return Path(record["files"]["cert"])


@pytest.fixture(scope="module")
def base():
    path = Path(tempfile.mkdtemp(prefix="ja-hub-tls-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def hub(base):
    hub = TlsHub(base / "hub")
    try:
        hub.start()
        yield hub
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def alice_token(hub) -> str:
    return hub.user_token(ALICE)


@pytest.fixture
def run_dir(base):
    path = base / f"run-{uuid.uuid4().hex[:6]}"
    path.mkdir()
    return path


@pytest.fixture
def started():
    """Collectors and kernels of a test, stopped at teardown."""
    collectors: list[Collector] = []
    pool = KernelPool()
    yield collectors, pool
    pool.shutdown_all()
    for collector in collectors:
        collector.kill()


def hub_collector(collectors: list, root: Path, hub: TlsHub, *flags: str) -> Collector:
    collector = Collector(root, "--hub-api-url", hub.api_url, "--hub-identity", "required",
                          *flags)
    collectors.append(collector)
    return collector.start()


def token_kernel(pool: KernelPool, collector: Collector, token: str,
                 log_dir: Path) -> LoggedKernel:
    """An audited kernel with JUPYTERHUB_API_TOKEN in its environment, as a Hub-spawned
    server's kernels have it; the proxy's stderr in a file."""
    ipykernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    name = write_kernelspec(proxy_argv(collector.socket) + ipykernel,
                            env={"RUST_LOG": "jupyter_audit=info",
                                 "JUPYTERHUB_API_TOKEN": token})
    return LoggedKernel(pool, name, log_dir)


def assert_token_nowhere(token: str, collector: Collector, kernel: LoggedKernel) -> None:
    needle = token.encode()
    places = [collector.log_path, kernel.log_path,
              *(p for p in collector.store.rglob("*") if p.is_file())]
    leaks = [str(p) for p in places if needle in p.read_bytes()]
    assert not leaks, f"the Hub token is written in {leaks}"


def os_account() -> str:
    return pwd.getpwuid(os.getuid()).pw_name


# --- attested over TLS ------------------------------------------------------------------------


def test_hub_over_tls_attests_the_kernels_user(hub, alice_token, started, run_dir):
    collectors, pool = started
    cert, key = openssl_client_cert(hub, run_dir / "client-cert")
    collector = hub_collector(collectors, run_dir, hub, "--hub-ca-file", str(hub.ca_file),
                              "--hub-client-cert", cert, "--hub-client-key", key)
    kernel = token_kernel(pool, collector, alice_token, run_dir)
    diagnostics = lambda: f"{collector.log()}\n{kernel.log()}\n{hub.log()}"  # noqa: E731

    reply, msgs = execute(kernel.kc, "print('hello from alice')")
    assert reply["content"]["status"] == "ok", f"{reply['content']}\n{diagnostics()}"
    assert stdout_of(msgs) == "hello from alice\n"
    msg_id = reply["parent_header"]["msg_id"]

    records = wait_for_records(
        collector.store,
        lambda rs: any(action(r) == "execute_reply" for r in children(rs, msg_id)),
        "the cell's request and reply", diagnostics(),
    )
    assert len(by_msg_id(records, msg_id, "execute_request")) == 1, describe(records)
    # Every record of the kernel's connection, session_start to the cell's output.
    session = [r for r in records if field(r, "jupyter.session_id")]
    assert "session_start" in [action(r) for r in session], describe(records)
    for record in session:
        assert field(record, "user.name") == ALICE, record
        assert field(record, "user.verified_by") == "jupyterhub", record
        assert field(record, "process.user.name") == os_account(), record
        assert field(record, "process.user.id") == str(os.getuid()), record
    assert not [r for r in records if action(r).startswith("identity_")], describe(records)
    assert_token_nowhere(alice_token, collector, kernel)


# --- refused: no client certificate, or the wrong CA ---------------------------------------------


def refused_cell(hub: TlsHub, token: str, started, run_dir: Path, *flags: str) -> dict:
    """A kernel with `token` behind a collector (policy required) with `flags`: its cell
    must be refused, visibly, and not run. Returns the identity_refused record."""
    collectors, pool = started
    collector = hub_collector(collectors, run_dir, hub, *flags)
    kernel = token_kernel(pool, collector, token, run_dir)
    diagnostics = lambda: f"{collector.log()}\n{kernel.log()}"  # noqa: E731

    marker = unique_marker(run_dir, "refused")
    reply, msgs = execute(kernel.kc, f"open({str(marker)!r}, 'w').write('ran')\nprint('ran')")
    content = reply["content"]
    assert content["status"] == "error", f"{content}\n{diagnostics()}"
    assert content["ename"] == "AuditLogUnavailable", f"{content}\n{diagnostics()}"
    assert "refused this kernel" in content["evalue"], f"{content}\n{diagnostics()}"
    assert stdout_of(msgs) == ""
    assert not marker.exists(), "a refused cell ran"

    records = wait_for_records(
        collector.store, lambda rs: any(action(r) == "identity_refused" for r in rs),
        "identity_refused", diagnostics(),
    )
    refusals = [r for r in records if action(r) == "identity_refused"]
    refusal = refusals[0]
    assert field(refusal, "collector.reason") == "hub_unreachable", refusal
    assert field(refusal, "collector.policy") == "required", refusal
    assert field(refusal, "user.verified_by") == "peercred", refusal
    assert field(refusal, "user.name") == os_account(), refusal
    # Nothing of the refused kernel was stored: no request, no output.
    assert not [r for r in records if field(r, "jupyter.kernel_id")], describe(records)
    assert_token_nowhere(token, collector, kernel)
    print(f"refusal detail: {field(refusal, 'collector.detail')}")
    print(f"notebook saw: {content['evalue']}")
    return refusal


def test_without_client_certificate_the_kernel_is_refused(hub, alice_token, started, run_dir):
    refusal = refused_cell(hub, alice_token, started, run_dir,
                           "--hub-ca-file", str(hub.ca_file))
    detail = field(refusal, "collector.detail", "")
    # The Hub ends the handshake with TLS 1.3's certificate_required alert: the admin is
    # told what to give.
    assert "--hub-client-cert" in detail, refusal


def test_a_client_certificate_the_hub_does_not_trust_is_refused(hub, alice_token, started,
                                                                run_dir):
    certipy = Certipy(store_dir=str(run_dir / "rogue"))
    certipy.create_ca("rogue-ca")
    rogue = certipy.create_signed_pair("jupyter-audit-collector", "rogue-ca")["files"]
    refusal = refused_cell(hub, alice_token, started, run_dir, "--hub-ca-file", str(hub.ca_file),
                           "--hub-client-cert", rogue["cert"], "--hub-client-key", rogue["key"])
    # The Hub's alert: unknown_ca.
    detail = field(refusal, "collector.detail", "")
    assert "unknownca" in detail.lower(), refusal
    assert "does not trust the collector's client certificate" in detail, refusal


def test_with_another_ca_the_kernel_is_refused(hub, alice_token, started, run_dir):
    cert, key = signed_client_cert(hub, run_dir / "client-certs", "jupyter-audit-collector")
    refusal = refused_cell(hub, alice_token, started, run_dir,
                           "--hub-ca-file", str(foreign_ca(run_dir / "foreign-ca")),
                           "--hub-client-cert", cert, "--hub-client-key", key)
    detail = field(refusal, "collector.detail", "")
    # The Hub's certificate is signed by hub-ca, which this collector does not trust.
    assert "not signed by the CA of --hub-ca-file" in detail, refusal


# --- a client certificate that cannot be used ----------------------------------------------------


def test_a_key_of_another_certificate_stops_the_collector_and_says_so(hub, run_dir):
    cert, _ = signed_client_cert(hub, run_dir / "one", "jupyter-audit-collector")
    _, other_key = signed_client_cert(hub, run_dir / "two", "jupyter-audit-collector")
    argv = [str(BIN), "collector", "--store", str(run_dir / "store"),
            "--socket", str(run_dir / "collector.sock"), "--hub-api-url", hub.api_url,
            "--hub-ca-file", str(hub.ca_file), "--hub-client-cert", cert,
            "--hub-client-key", other_key]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("the collector started with a key that is not its certificate's")
    assert result.returncode != 0, result.stderr
    assert not (run_dir / "collector.sock").exists()
    # The admin is told which files, and why.
    assert cert in result.stderr and other_key in result.stderr, result.stderr
