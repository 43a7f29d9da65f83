"""The review console over the central trail in PostgreSQL (`serve --postgres URL`).

A collector forwards its store to a throwaway PostgreSQL cluster; a notebook runs through
the audited kernel. The console runs as a Hub service reading the database with the reader
role only (SELECT), its views written through the same collector (`--console-user`, the
test's own account) that forwards to the same database as a second store. An auditor logs in through the Hub
(requests, no browser), finds the session with its outputs, finds a cell by code search,
downloads the session and verifies it offline with the store's public key; every view is a
`review_access` record, read back from PostgreSQL.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import nbformat
import pytest
import requests

from helpers import BIN, KernelPool, wait_until
from pgcluster import pg  # noqa: F401 (a fixture)
from test_audit import Collector, audited_kernelspec
from test_console_auth import AUDITOR, PREFIX, console_hub_config, log_in
from test_forward import store_id, wait_forwarded
from test_jupyterhub import Hub, _free_port
from test_postgres_review import WRITER, run_session

pytestmark = pytest.mark.timeout(180)

READER = "ja_reader"
# Liveness bounds only.
SERVICE_START_TIMEOUT = 30
INDEXED_TIMEOUT = 30


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def env(pg):  # noqa: F811
    """A forwarded notebook session and the console over PostgreSQL under a real Hub."""
    subprocess.run([str(BIN), "postgres", "init", "--url", pg.url(), "--writer", WRITER,
                    "--reader", READER], check=True, capture_output=True, timeout=120)
    base = Path(tempfile.mkdtemp(prefix="jaudit-console-pg-"))
    me = pwd.getpwuid(os.geteuid()).pw_name
    (base / "host").mkdir()
    (base / "console").mkdir()
    # Two stores in one database: the notebook host's, and the console's own collector's
    # (its account is the test's, as the kernels' is: one collector cannot tell them apart).
    collector = Collector(base / "host", "--forward-postgres", pg.url(WRITER)).start()
    console_collector = Collector(base / "console", "--forward-postgres", pg.url(WRITER),
                                  "--console-user", me).start()
    marker = uuid.uuid4().hex[:12]
    pool = KernelPool()
    hub = None
    try:
        try:
            run_session(pool, _Host(collector), base, [
                f"# needle {marker}\nprint('hello from postgres')",
                "raise ZeroDivisionError('on purpose')",
            ])
        finally:
            pool.shutdown_all()
        wait_forwarded(pg, collector.store, collector.log())
        hub = Hub(base, base, base, config=console_hub_config(
            None, _free_port(), base / "index.sqlite", console_collector.socket,
            postgres=pg.url(READER)))
        hub.start()

        def answers() -> bool:
            try:
                return requests.get(f"{hub.url}{PREFIX}", allow_redirects=False,
                                    timeout=2).status_code == 303
            except requests.RequestException:
                return False

        assert wait_until(answers, SERVICE_START_TIMEOUT, 0.3), \
            f"the console did not answer\n{hub.log()}"
        yield {"pg": pg, "hub": hub, "collector": collector, "marker": marker,
               "console_collector": console_collector}
    finally:
        if hub is not None:
            hub.stop()
        collector.kill()
        console_collector.kill()
        shutil.rmtree(base, ignore_errors=True)


class _Host:
    """What `run_session` needs of a host: its audited kernelspec."""

    def __init__(self, collector: Collector) -> None:
        self.kernelspec = audited_kernelspec(collector.socket)


def test_an_auditor_reviews_a_forwarded_session_and_verifies_its_download(env, tmp_path):
    hub, marker, collector = env["hub"], env["marker"], env["collector"]
    browser, page = log_in(hub, AUDITOR)
    assert page.status_code == 200, (page.url, page.text, hub.log())
    sid = store_id(collector.store)

    # The index catches up from PostgreSQL: the session is listed, with its store.
    links: list[str] = []

    def listed() -> bool:
        sessions = browser.get(f"{hub.url}{PREFIX}", timeout=10)
        links[:] = re.findall(r'href="([^"]*session/\d+)"', sessions.text)
        return bool(links)

    assert wait_until(listed, INDEXED_TIMEOUT, 0.5), hub.log()[-3000:]
    session = browser.get(f"{hub.url}{links[0]}" if links[0].startswith("/")
                          else f"{hub.url}{PREFIX}{links[0]}", timeout=10)
    assert session.status_code == 200, session.text
    assert f"needle {marker}" in session.text
    # Outputs come from PostgreSQL: the printed line and the traceback.
    assert "hello from postgres" in session.text
    assert "ZeroDivisionError" in session.text

    found = browser.get(f"{hub.url}{PREFIX}search", params={"q": f"needle {marker}"},
                        timeout=10)
    assert found.status_code == 200
    assert found.text.count(f"needle {marker}") >= 1 and "session/" in found.text
    nothing = browser.get(f"{hub.url}{PREFIX}search", params={"q": uuid.uuid4().hex},
                          timeout=10)
    assert "needle" not in nothing.text

    # The download: the records and the checkpoint forwarded to PostgreSQL, verified
    # offline with the store's public key alone.
    download = browser.get(f"{session.url.rstrip('/')}/download", timeout=30)
    assert download.status_code == 200, download.text
    path = tmp_path / "session.ipynb"
    path.write_bytes(download.content)
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert [c.source for c in notebook.cells if c.cell_type == "code"] == [
        f"# needle {marker}\nprint('hello from postgres')",
        "raise ZeroDivisionError('on purpose')"]
    assert notebook.metadata["jupyter_audit"]["export"]["store_id"] == sid
    key = tmp_path / "store.pub"
    key.write_text(cli("export-key", "--store", str(collector.store)).stdout)
    verified = cli("verify-export", str(path), "--public-key", str(key))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    tampered = tmp_path / "tampered.ipynb"
    tampered.write_text(path.read_text().replace("hello from postgres", "hello from mysql", 1))
    assert cli("verify-export", str(tampered), "--public-key", str(key)).returncode != 0

    # Health: verify --postgres, each forwarded store listed with its newest checkpoint.
    console_sid = store_id(env["console_collector"].store)

    def verified_page() -> bool:
        health = browser.get(f"{hub.url}{PREFIX}health", timeout=10)
        return ('class="verdict intact"' in health.text and sid in health.text
                and console_sid in health.text)

    assert wait_until(verified_page, 30, 0.5), \
        browser.get(f"{hub.url}{PREFIX}health", timeout=10).text[-3000:]

    # Every view is a review_access record, forwarded to PostgreSQL like the rest.
    wanted = {"sessions", "session", "search", "download", "health"}
    seen: list[dict] = []

    def recorded() -> bool:
        result = cli("log", "--postgres", env["pg"].url(READER), "--store-id",
                     store_id(env["console_collector"].store), "--action", "review_access",
                     "--json")
        seen[:] = [json.loads(line) for line in result.stdout.splitlines()]
        return wanted <= {r["review"]["view"] for r in seen
                          if r["review"]["reviewer"]["name"] == AUDITOR}

    assert wait_until(recorded, 30, 0.5), json.dumps(seen[-10:], indent=1)[:4000]
    search = next(r for r in seen if r["review"]["view"] == "search")
    assert marker in search["review"]["query"]
