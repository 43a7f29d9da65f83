"""The review console under the Hub's internal_ssl: given the certificate, key and client
CA a Hub gives its services (JUPYTERHUB_SSL_CERTFILE, JUPYTERHUB_SSL_KEYFILE,
JUPYTERHUB_SSL_CLIENT_CA), `serve` answers over https, and only to clients whose
certificate that CA signed (the Hub's proxy), as the Hub's own services do.

The certificates are made with certipy (as JupyterHub makes its internal ones): one CA,
the console's pair with 127.0.0.1 in it, a client pair signed by the CA and one signed
by another CA. No Hub is needed to see the console's answer to a browser without a
session: the redirect to the Hub's login.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests
from certipy import Certipy

from helpers import BIN, wait_until
from test_jupyterhub import _free_port

pytestmark = pytest.mark.timeout(60)

PREFIX = "/services/jupyter-audit/"


@pytest.fixture(scope="module")
def console():
    base = Path(tempfile.mkdtemp(prefix="jaudit-console-tls-"))
    certipy = Certipy(store_dir=str(base / "certs"))
    ca = certipy.create_ca("internal-ca")["files"]
    server = certipy.create_signed_pair("console", "internal-ca",
                                        alt_names=["IP:127.0.0.1", "DNS:localhost"])["files"]
    client = certipy.create_signed_pair("proxy-client", "internal-ca")["files"]
    certipy.create_ca("other-ca")
    stranger = certipy.create_signed_pair("stranger", "other-ca")["files"]
    (base / "store").mkdir()
    port = _free_port()
    env = {
        **os.environ,
        "RUST_LOG": "jupyter_audit=info",
        "JUPYTERHUB_SERVICE_URL": f"https://127.0.0.1:{port}",
        "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
        "JUPYTERHUB_API_URL": "https://127.0.0.1:1/hub/api",
        "JUPYTERHUB_API_TOKEN": "service-token",
        "JUPYTERHUB_CLIENT_ID": "service-jupyter-audit",
        "JUPYTERHUB_SSL_CERTFILE": server["cert"],
        "JUPYTERHUB_SSL_KEYFILE": server["key"],
        "JUPYTERHUB_SSL_CLIENT_CA": ca["cert"],
    }
    log = open(base / "serve.log", "wb")
    process = subprocess.Popen(
        [str(BIN), "serve", "--store", str(base / "store"), "--index", str(base / "index.sqlite"),
         "--collector-socket", str(base / "no-collector.sock")],
        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    url = f"https://127.0.0.1:{port}{PREFIX}"

    def get(cert=None, verify=ca["cert"]) -> requests.Response:
        return requests.get(url, cert=cert, verify=verify, allow_redirects=False, timeout=5)

    def answers() -> bool:
        try:
            return get((client["cert"], client["key"])).status_code == 303
        except requests.RequestException:
            return process.poll() is not None

    try:
        assert wait_until(answers, 20, 0.2), (base / "serve.log").read_text()
        assert process.poll() is None, (base / "serve.log").read_text()
        yield {"get": get, "client": client, "stranger": stranger,
               "log": lambda: (base / "serve.log").read_text()}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def test_the_console_answers_the_hubs_clients_over_https(console):
    answer = console["get"]((console["client"]["cert"], console["client"]["key"]))
    # No session: off to the Hub's login, as over http.
    assert answer.status_code == 303, console["log"]()
    assert urlparse(answer.headers["Location"]).path == "/hub/api/oauth2/authorize"
    assert "default-src 'none'" in answer.headers["Content-Security-Policy"]


def test_a_client_without_a_certificate_of_the_hubs_ca_is_refused(console):
    for cert in (None, (console["stranger"]["cert"], console["stranger"]["key"])):
        with pytest.raises(requests.exceptions.RequestException):
            console["get"](cert)
