"""The review console (`jupyter-audit serve`) as a JupyterHub service: login with the Hub
and the console's custom scopes, against a real JupyterHub 6.

A Hub of the test's own (DummyAuthenticator, no user servers) defines the custom scopes
`custom:jupyter-audit:read` and `custom:jupyter-audit:read-outputs` and three roles: an
auditor with both, a reviewer with read only, a plain user with neither (but allowed to
reach the service, so that the console itself must refuse). The console runs as a managed
service (`c.JupyterHub.services` with `command`), behind the Hub's configurable-http-proxy.
A browser is played by `requests`: it opens the console, is sent to the Hub, logs in on
the Hub's login form and follows the OAuth redirects back to the console.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from helpers import BIN, wait_until
from test_audit import Collector, read_store
from test_jupyterhub import Hub, _free_port, hub_config_head

pytestmark = pytest.mark.timeout(120)

SERVICE = "jupyter-audit"
PREFIX = f"/services/{SERVICE}/"
READ = "custom:jupyter-audit:read"
READ_OUTPUTS = "custom:jupyter-audit:read-outputs"
ACCESS = f"access:services!service={SERVICE}"
AUDITOR, REVIEWER, PLAIN = "auditor", "reviewer", "plain"
# A reviewer whose grant is filtered to the `research` group, whose only member is ALICE.
RESEARCH_REVIEWER, ALICE, BOB = "research-reviewer", "alice", "bob"
DRIVER = "console-test-driver"
PASSWORD = secrets.token_urlsafe(12)
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-src 'self'; form-action 'self'; base-uri 'none'; "
       "frame-ancestors 'self'")

# A liveness bound only.
SERVICE_START_TIMEOUT = 30


def console_hub_config(store: Path | None, service_port: int, index: Path,
                       collector_socket: Path, *, notebook_users: tuple[str, ...] = (),
                       account: str | None = None, driver_token: str | None = None,
                       postgres: str | None = None):
    """The Hub with the console's scopes, roles and managed service. `notebook_users` are
    Hub users without a console role; `account` is the OS account the console runs as
    (default: the Hub's); `driver_token` makes a service `DRIVER` that may create users'
    tokens (for kernels that present them); `postgres`: the console reads this database
    (`serve --postgres`) instead of `store`."""
    source = ["--postgres", postgres] if postgres is not None else ["--store", str(store)]
    serve = [str(BIN), "serve", *source, "--index", str(index),
             "--collector-socket", str(collector_socket)]
    users = {AUDITOR, REVIEWER, PLAIN, RESEARCH_REVIEWER, ALICE, BOB, *notebook_users}
    service_extra = ""
    if account is not None:
        service_extra = f"""
    "user": {account!r},
    "cwd": {str(index.parent)!r},"""
    driver_role = driver_service = ""
    if driver_token is not None:
        driver_role = f"""
    {{"name": "test-driver", "scopes": ["admin:users", "tokens"], "services": [{DRIVER!r}]}},"""
        driver_service = f"""
    {{"name": {DRIVER!r}, "api_token": {driver_token!r}}},"""

    def config(base: Path, port: int, hub_port: int, api_port: int, _kernels, _python) -> str:
        return hub_config_head(base, port, hub_port, api_port) + f"""\
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allowed_users = {users!r}

c.JupyterHub.custom_scopes = {{
    {READ!r}: {{"description": "Read the audit trail: sessions, code, metadata."}},
    {READ_OUTPUTS!r}: {{"description": "Read the outputs in the audit trail too."}},
}}
c.JupyterHub.load_roles = [
    {{"name": "audit-auditor", "scopes": [{ACCESS!r}, {READ!r}, {READ_OUTPUTS!r}],
      "users": [{AUDITOR!r}]}},
    {{"name": "audit-reviewer", "scopes": [{ACCESS!r}, {READ!r}], "users": [{REVIEWER!r}]}},
    # May reach the service, holds none of its scopes: the console itself must refuse.
    {{"name": "audit-visitor", "scopes": [{ACCESS!r}], "users": [{PLAIN!r}]}},
    # Reads the research group's sessions only.
    {{"name": "audit-research", "scopes": [{ACCESS!r}, {READ + "!group=research"!r}],
      "users": [{RESEARCH_REVIEWER!r}]}},
    # The console asks the Hub who is in the groups filtered grants name.
    {{"name": "audit-console", "scopes": ["read:groups"], "services": [{SERVICE!r}]}},{driver_role}
]
c.JupyterHub.load_groups = {{"research": {{"users": [{ALICE!r}]}}}}
c.JupyterHub.services = [{driver_service}
    {{
    "name": {SERVICE!r},
    "url": "http://127.0.0.1:{service_port}",
    "command": {serve!r},{service_extra}
    "environment": {{"RUST_LOG": "jupyter_audit=info"}},
    "oauth_client_allowed_scopes": [{READ!r}, {READ_OUTPUTS!r}],
    # An admin-operated service: no "authorize this application" page.
    "oauth_no_confirm": True,
    }},
]
"""
    return config


KERNEL_SENDER = r'''
import json, socket, struct, sys

def frame(sock, obj):
    body = json.dumps(obj).encode()
    sock.sendall(struct.pack(">I", len(body)) + body)

def read(sock):
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("closed")
            data += chunk
        return data
    return json.loads(exactly(struct.unpack(">I", exactly(4))[0]))

path, token, session, code = sys.argv[1:5]
records = [
    {"event": {"action": "session_start", "kind": "event"},
     "jupyter": {"session_id": session, "kernel_name": "python3"}},
    {"event": {"action": "execute_request", "kind": "event"},
     "jupyter": {"session_id": session, "msg_id": session + "-1", "code": code}},
]
with socket.socket(socket.AF_UNIX) as sock:
    sock.connect(path)
    frame(sock, {"type": "hello", "version": 1, "hub_token": token})
    read(sock)
    answers = []
    for number, record in enumerate(records, 1):
        frame(sock, {"type": "record", "id": number, "record": record})
        answers.append(read(sock))
print(json.dumps(answers))
'''


def kernel_session(socket: Path, token: str, session: str, code: str) -> None:
    """A kernel's session as its proxy records it, with its user's Hub token: a start and
    one cell, from a process of its own."""
    result = subprocess.run(["python3", "-c", KERNEL_SENDER, str(socket), token, session, code],
                            capture_output=True, text=True, timeout=60, check=True)
    assert '"nack"' not in result.stdout, result.stdout


@pytest.fixture(scope="module")
def hub():
    base = Path(tempfile.mkdtemp(prefix="jaudit-console-"))
    # Every page is on the record before it is shown: the console's account (here the
    # test's own: no kernel writes to this collector) is the collector's console user.
    collector = Collector(base, "--console-user", pwd.getpwuid(os.geteuid()).pw_name).start()
    driver_token = secrets.token_hex(16)
    kernels_store = base / "kernels" / "store"
    kernels_store.parent.mkdir()
    hub = Hub(base, base, base, config=console_hub_config(
        kernels_store, _free_port(), base / "index.sqlite", collector.socket,
        driver_token=driver_token))
    # The trail the console reads: kernels' records, each vouched for by the Hub.
    kernels = Collector(base / "kernels", "--hub-api-url", f"{hub.url}/hub/api",
                        store=kernels_store).start()
    hub.start()
    hub.audit_store = collector.store
    for user in (ALICE, BOB):
        answer = requests.post(f"{hub.url}/hub/api/users/{user}/tokens", timeout=30,
                               headers={"Authorization": f"token {driver_token}"},
                               json={"note": f"{user}'s kernel in the console test"})
        assert answer.status_code in (200, 201), answer.text
        kernel_session(kernels.socket, answer.json()["token"], f"{user}-session",
                       f"experiment_{user} = 'needle-{user}'")
    console = f"{hub.url}{PREFIX}"

    def answers() -> bool:
        try:
            return requests.get(console, allow_redirects=False, timeout=2).status_code == 303
        except requests.RequestException:
            return False

    try:
        assert wait_until(answers, SERVICE_START_TIMEOUT, 0.3), \
            f"the console did not answer\n{hub.log()}"
        yield hub
    finally:
        hub.stop()
        kernels.stop()
        collector.stop()
        shutil.rmtree(base, ignore_errors=True)


def log_in(hub: Hub, user: str) -> tuple[requests.Session, requests.Response]:
    """Opens the console in a fresh browser and logs in as `user` where it is sent."""
    browser = requests.Session()
    login_form = browser.get(f"{hub.url}{PREFIX}", timeout=10)
    assert urlparse(login_form.url).path == "/hub/login", (login_form.url, hub.log())
    xsrf = re.search(r'name="_xsrf"\s+value="([^"]+)"', login_form.text)
    assert xsrf, login_form.text
    page = browser.post(login_form.url, timeout=10, data={
        "username": user, "password": PASSWORD, "_xsrf": xsrf.group(1)})
    return browser, page


def assert_strict_headers(response: requests.Response) -> None:
    assert response.headers.get("Content-Security-Policy") == CSP
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert response.headers.get("Referrer-Policy") == "no-referrer"


def test_without_a_session_the_console_sends_the_browser_to_the_hub(hub):
    answer = requests.get(f"{hub.url}{PREFIX}", allow_redirects=False, timeout=10)
    assert answer.status_code == 303
    location = urlparse(answer.headers["Location"])
    assert location.path == "/hub/api/oauth2/authorize"
    query = parse_qs(location.query)
    assert query["client_id"] == [f"service-{SERVICE}"]
    assert query["redirect_uri"] == [f"{PREFIX}oauth_callback"]
    assert query["code_challenge_method"] == ["S256"]
    state_cookie = answer.headers["Set-Cookie"]
    for attribute in ("HttpOnly", "SameSite=Lax", f"Path={PREFIX}"):
        assert attribute in state_cookie, state_cookie
    assert query["state"][0] not in state_cookie, "the state cookie is not encrypted"
    assert_strict_headers(answer)
    # A session cookie the console did not make is no session.
    forged = requests.get(f"{hub.url}{PREFIX}", allow_redirects=False, timeout=10,
                          cookies={"jupyter-audit-session": '{"user":"auditor"}'})
    assert forged.status_code == 303


def test_an_auditor_is_signed_in_with_both_scopes(hub):
    browser, page = log_in(hub, AUDITOR)
    assert page.status_code == 200, (page.url, page.text, hub.log())
    assert urlparse(page.url).path == PREFIX
    assert f'<strong id="user">{AUDITOR}</strong>' in page.text
    assert f'title="{READ_OUTPUTS}">code + outputs<' in page.text
    assert_strict_headers(page)
    callback = next(r for r in page.history if urlparse(r.url).path == f"{PREFIX}oauth_callback")
    session_cookie = next(value for value in callback.raw.headers.getlist("Set-Cookie")
                          if value.startswith("jupyter-audit-session="))
    for attribute in ("HttpOnly", "SameSite=Lax", f"Path={PREFIX}"):
        assert attribute in session_cookie, session_cookie
    assert AUDITOR not in session_cookie, "the session cookie is readable"
    # The session holds: the next visit does not go through the Hub.
    again = browser.get(f"{hub.url}{PREFIX}", allow_redirects=False, timeout=10)
    assert again.status_code == 200 and AUDITOR in again.text


def test_a_reviewer_reads_without_outputs(hub):
    _, page = log_in(hub, REVIEWER)
    assert page.status_code == 200, (page.url, page.text)
    assert f'<strong id="user">{REVIEWER}</strong>' in page.text
    assert f'title="{READ}">code only<' in page.text
    assert READ_OUTPUTS not in page.text


def test_a_user_without_the_scope_gets_403_naming_it(hub):
    _, page = log_in(hub, PLAIN)
    assert page.status_code == 403, (page.url, page.text)
    assert urlparse(page.url).path == PREFIX
    assert f'<code id="missing-scope">{READ}</code>' in page.text
    assert PLAIN in page.text
    assert_strict_headers(page)


def test_a_refused_user_is_on_the_record_once_per_page_and_minute(hub):
    browser, page = log_in(hub, PLAIN)
    assert page.status_code == 403, (page.url, page.text)
    # Reloading the refused page does not flood the trail; another page is its own record.
    for _ in range(3):
        assert browser.get(f"{hub.url}{PREFIX}", timeout=10).status_code == 403
    search = browser.get(f"{hub.url}{PREFIX}search", params={"q": "aws_secret"}, timeout=10)
    assert search.status_code == 403

    def refusals() -> list[dict]:
        return [r for r in read_store(hub.audit_store)
                if r["event"]["action"] == "review_access"
                and r["review"]["reviewer"]["name"] == PLAIN]

    assert wait_until(lambda: len(refusals()) >= 2, 10, 0.2), refusals()
    records = refusals()
    # An auditor sees who tried, what for, and with which console scopes (none).
    assert [(r["review"]["view"], r["review"].get("query")) for r in records] == [
        ("sessions", ""), ("search", "aws_secret")], records
    for record in records:
        assert record["event"]["outcome"] == "failure", record
        assert record["review"]["reviewer"]["scopes"] == [], record
    listing = subprocess.run(
        [str(BIN), "log", "--store", str(hub.audit_store), "--action", "review_access"],
        capture_output=True, text=True, check=True).stdout
    assert f"{PLAIN} was REFUSED" in listing, listing


def test_logout_ends_the_console_login_and_the_hubs(hub):
    browser, page = log_in(hub, AUDITOR)
    assert page.status_code == 200, (page.url, page.text)
    assert f'href="{PREFIX}logout"' in page.text
    answer = browser.get(f"{hub.url}{PREFIX}logout", allow_redirects=False, timeout=10)
    assert answer.status_code == 303
    assert urlparse(answer.headers["Location"]).path == "/hub/logout"
    cleared = answer.headers.get("Set-Cookie", "")
    assert cleared.startswith("jupyter-audit-session=") and "Max-Age=0" in cleared, cleared
    browser.get(f"{hub.url}/hub/logout", timeout=10)
    # Neither the console nor the Hub lets the browser in again without the login form.
    again = browser.get(f"{hub.url}{PREFIX}", timeout=10)
    assert urlparse(again.url).path == "/hub/login", again.url


def test_a_grant_filtered_to_a_group_shows_only_its_members_sessions(hub):
    console = f"{hub.url}{PREFIX}"
    auditor, _ = log_in(hub, AUDITOR)
    # The console indexes the store every second: wait until the auditor sees both.
    assert wait_until(lambda: all(f"{user}-session" in auditor.get(
        console, params={"user": user}, timeout=10).text for user in (ALICE, BOB)), 20, 0.5), \
        auditor.get(console, timeout=10).text
    research, page = log_in(hub, RESEARCH_REVIEWER)
    assert page.status_code == 200, (page.url, page.text, hub.log())
    assert f"{ALICE}-session" in page.text and f"{BOB}-session" not in page.text, page.text
    # Not by asking for bob by name, nor by searching his code, nor by his timeline.
    assert f"{BOB}-session" not in research.get(console, params={"user": BOB}, timeout=10).text
    hits = research.get(f"{console}search", params={"q": "needle-"}, timeout=10).text
    assert f'data-session-id="{ALICE}-session"' in hits, hits
    assert f"{BOB}-session" not in hits and f"experiment_{BOB}" not in hits, hits
    all_hits = auditor.get(f"{console}search", params={"q": "needle-"}, timeout=10).text
    assert f'data-session-id="{BOB}-session"' in all_hits, all_hits
    assert f"{BOB}-session" not in research.get(f"{console}user/{BOB}", timeout=10).text
    # Nor by the session's own address, its download or its outputs.
    ids = set(re.findall(rf'href="{PREFIX}session/(\d+)"',
                         auditor.get(console, params={"user": BOB}, timeout=10).text))
    assert len(ids) == 1, ids
    (bob_id,) = ids
    for path in (f"session/{bob_id}", f"session/{bob_id}/download"):
        assert research.get(f"{console}{path}", timeout=10).status_code == 404, path
        # (The auditor's download may wait for a checkpoint: anything but "no such session".)
        assert auditor.get(f"{console}{path}", timeout=10).status_code != 404, path
    # The store's health is about everyone: not for a filtered grant.
    assert research.get(f"{console}health", timeout=10).status_code == 403
    # Their views are on the record with the grant as the Hub filtered it.
    views = [r for r in read_store(hub.audit_store) if r["event"]["action"] == "review_access"
             and r["review"]["reviewer"]["name"] == RESEARCH_REVIEWER
             and r["event"]["outcome"] == "success"]
    assert views and all(r["review"]["reviewer"]["scopes"] == [f"{READ}!group=research"]
                         for r in views), [r["review"]["reviewer"] for r in views]


def test_a_callback_the_browser_did_not_start_is_refused(hub):
    # A login the attacker started, finished in the victim's browser (login CSRF): the
    # state is not the one in this browser's cookie.
    attacker_redirect = requests.get(f"{hub.url}{PREFIX}", allow_redirects=False, timeout=10)
    state = parse_qs(urlparse(attacker_redirect.headers["Location"]).query)["state"][0]
    answer = requests.get(f"{hub.url}{PREFIX}oauth_callback",
                          params={"code": "whatever", "state": state},
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 400
    assert "jupyter-audit-session" not in answer.headers.get("Set-Cookie", "")
