"""The review console in a browser: auditors read Alice's notebook session through the Hub.

As root only (the console runs as a system user of its own, as the README deploys it).
Everything is real:

- JupyterHub 6 (DummyAuthenticator) with the console's custom scopes and roles: `auditor`
  holds read and read-outputs, `reviewer` read only, `plain` may reach the service and holds
  neither; `alice` is a notebook user;
- the collector (`--hub-api-url` of that Hub, so records carry Alice's Hub name,
  `--console-user jaudit-review`, `--reviewers-group jaudit-review`);
- Alice's notebook, run by nbclient through the audited kernel with her Hub API token: a
  printed line, a matplotlib figure, a searchable line of code, a traceback, and hostile
  outputs (HTML with scripts, event handlers and `javascript:` links, SVG with script,
  JavaScript, Markdown with a `javascript:` link, a huge output);
- the console as a managed Hub service (`jupyter-audit serve`) running as the system user
  `jaudit-review`, which reads the store through the reviewers group;
- Debian's Chromium driven by Playwright: each reader logs in on the Hub's login page.

Screenshots of every page go to test-artifacts/console/ (docs/console/ holds a copy).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import nbformat
import pytest
import requests
from jsonschema import Draft202012Validator
from jupyter_client import KernelManager
from nbclient import NotebookClient

from helpers import BIN, proxy_argv, system_user, wait_until
from test_audit import Collector
from test_schema import SCHEMA_PATH, log_json, validate_all
from test_console_auth import (AUDITOR, PASSWORD, PLAIN, PREFIX, READ, REVIEWER,
                               console_hub_config)
from test_jupyterhub import CHP, CHROMIUM, CHROMIUM_ARGS, REPO, Hub, _free_port

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the console runs as a system "
                       "user of its own, as deployed"),
    pytest.mark.timeout(420),
]

ARTIFACTS = REPO / "test-artifacts" / "console"
ALICE = "alice"
CONSOLE_USER = "jaudit-review"

# Liveness bounds only; no timing is asserted.
PAGE_TIMEOUT = 30_000  # ms (Playwright)
INDEX_TIMEOUT = 60

NEEDLE = "quartz-zebra-" + "7731"
# Every hostile output tries to leave a mark where the test looks for one.
MARK = "document.title='pwned';document.documentElement.dataset.pwned='1'"
HOSTILE_HTML = (
    f"<script>{MARK}</script>"
    f"<img src=x onerror=\"{MARK}\">"
    f"<a id='evil-link' href=\"javascript:{MARK}\">click me</a>"
    f"<iframe srcdoc=\"<script>parent.{MARK}</script>\"></iframe>"
    "<form action='https://example.invalid/'><input name=q></form>"
    "<b class='hostile-bold'>bold from the notebook</b>"
)
HOSTILE_SVG = (
    "<svg xmlns='http://www.w3.org/2000/svg' width='40' height='40' "
    f"onload=\"{MARK}\"><script>{MARK}</script><circle cx='20' cy='20' r='15'/></svg>"
)
CELLS = [
    "print('hello from alice')",
    "%matplotlib inline\n"
    "import matplotlib.pyplot as plt\n"
    "plt.plot([1, 4, 2, 8]); plt.title('alice figure'); plt.show()",
    f"secret_name = '{NEEDLE}'\nlen(secret_name)",
    "def divide(a, b):\n    return a / b\n\ndivide(1, 0)",
    "from IPython.display import HTML, SVG, Javascript, Markdown, display\n"
    f"display(HTML({HOSTILE_HTML!r}))\n"
    f"display(SVG({HOSTILE_SVG!r}))\n"
    f"display(Javascript({MARK!r}))\n"
    f"display(Markdown({'[markdown link](javascript:' + MARK + ')'!r}))",
    "print('A' * 3_000_000)",
]


class Env:
    base: Path
    hub: Hub
    collector: Collector
    store: Path
    playwright: Any
    contexts: list
    console_messages: list[str]
    session_id: str


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


ALICES_KERNEL = "python3-console-alice"


def alices_kernelspec() -> Path:
    return Path(os.environ["JUPYTER_PATH"]) / "kernels" / ALICES_KERNEL


def run_alices_notebook(env: Env, token: str) -> nbformat.NotebookNode:
    """Alice's notebook through the audited kernel, her Hub token in its environment."""
    kernels = alices_kernelspec()
    kernels.mkdir(parents=True, exist_ok=True)
    argv = [*proxy_argv(env.collector.socket, "--keep-binary"), sys.executable, "-m", "ipykernel_launcher",
            "-f", "{connection_file}"]
    (kernels / "kernel.json").write_text(json.dumps({
        "argv": argv, "display_name": "Python 3 (audited, alice)", "language": "python",
        "env": {"JUPYTERHUB_API_TOKEN": token},
    }))
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(code) for code in CELLS]
    NotebookClient(notebook, kernel_name=ALICES_KERNEL, timeout=120, allow_errors=True,
                   resources={"metadata": {"path": str(env.base)}}).execute()
    return notebook


@pytest.fixture(scope="module")
def env():
    for tool, why in ((CHP, "configurable-http-proxy"), (CHROMIUM, "chromium")):
        if not os.access(tool, os.X_OK):
            pytest.fail(f"{why} not found at {tool}: run scripts/hub-env.sh (as root)")
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    env = Env()
    env.base = Path(tempfile.mkdtemp(prefix="ja-console-"))
    env.base.chmod(0o755)
    env.contexts = []
    env.console_messages = []
    account = system_user(CONSOLE_USER)
    console_dir = env.base / "console"
    console_dir.mkdir(mode=0o700)
    os.chown(console_dir, account.pw_uid, account.pw_gid)
    env.store = env.base / "store"
    socket = env.base / "collector.sock"
    driver_token = secrets.token_hex(16)
    hub = collector = playwright = None
    try:
        hub = env.hub = Hub(env.base, env.base, env.base, config=console_hub_config(
            env.store, _free_port(), console_dir / "index.sqlite", socket,
            notebook_users=(ALICE,), account=CONSOLE_USER, driver_token=driver_token))
        collector = env.collector = Collector(
            env.base, "--hub-api-url", f"{hub.url}/hub/api", "--console-user", CONSOLE_USER,
            "--reviewers-group", CONSOLE_USER, "--checkpoint-interval-secs", "1",
            store=env.store, socket=socket)
        collector.start()
        hub.start()
        print(f"jupyterhub_config.py:\n{hub.config}")
        answer = requests.post(f"{hub.url}/hub/api/users/{ALICE}/tokens", timeout=30,
                               headers={"Authorization": f"token {driver_token}"},
                               json={"note": "alice's kernel in the console test"})
        assert answer.status_code in (200, 201), answer.text
        env.notebook = run_alices_notebook(env, answer.json()["token"])
        sessions = [json.loads(line) for line in run(
            str(BIN), "sessions", "--store", str(env.store), "--json").stdout.splitlines()]
        env.session_id = next(s["session_id"] for s in sessions if s["cells"] == len(CELLS))
        playwright = env.playwright = sync_playwright().start()
        yield env
    finally:
        for context in env.contexts:
            try:
                context.close()
            except Exception:
                pass
        if playwright is not None:
            playwright.stop()
        if hub is not None:
            hub.stop()
        if collector is not None:
            collector.kill()
        # Alice's token stays out of what the test leaves behind.
        shutil.rmtree(alices_kernelspec(), ignore_errors=True)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for log in [env.base / "hub" / "jupyterhub.log",
                    *([collector.log_path] if collector else [])]:
            if log.exists():
                shutil.copy(log, ARTIFACTS / log.name)
        shutil.rmtree(env.base, ignore_errors=True)


def diagnostics(env: Env) -> str:
    return f"{env.hub.log()}\n--- collector ---\n{env.collector.log()[-3000:]}\n" \
           f"--- browser console ---\n" + "\n".join(env.console_messages[-40:])


class Reader:
    """One person's Chromium (fresh profile), logged in on the Hub's login page."""

    def __init__(self, env: Env, user: str) -> None:
        self.env, self.user = env, user
        profile = env.base / f"chromium-{user}"
        self.context = env.playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 1000}, accept_downloads=True)
        env.contexts.append(self.context)
        # Counts what the CSP blocks in the console's pages (runs before any page script).
        self.context.add_init_script(
            "window.__violations = [];"
            "document.addEventListener('securitypolicyviolation', e => "
            "window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));")
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.page.set_default_timeout(PAGE_TIMEOUT)
        self.page.on("console", lambda m: env.console_messages.append(f"{user} {m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: env.console_messages.append(f"{user} pageerror: {e}"))

    def open_console(self) -> Any:
        """Opens the console: the Hub's login form, then back through OAuth."""
        page = self.page
        response = page.goto(f"{self.env.hub.url}{PREFIX}")
        if "/hub/login" in page.url:
            page.fill("#username_input", self.user)
            page.fill("#password_input", PASSWORD)
            with page.expect_navigation(url=re.compile(re.escape(PREFIX))):
                page.click("#login_submit")
            response = None
        return response

    def goto(self, path: str):
        return self.page.goto(f"{self.env.hub.url}{PREFIX}{path}")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        # Output frames load when scrolled to; the whole page is shot from its top.
        frames = self.page.locator("iframe.html-output")
        for i in range(frames.count()):
            frames.nth(i).scroll_into_view_if_needed()
        self.page.evaluate("window.scrollTo(0, 0)")
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path

    def assert_nothing_hostile_ran(self) -> None:
        page = self.page
        assert page.title() != "pwned", "an output's script ran in the console's origin"
        assert page.evaluate("document.documentElement.dataset.pwned") is None
        for frame in page.frames:
            try:
                marked = frame.evaluate("document.documentElement.dataset.pwned || "
                                        "(document.title === 'pwned' ? '1' : null)")
            except Exception:
                continue  # a frame without scripts cannot even be asked: fine
            assert marked is None, f"an output's script ran in the frame {frame.url}"


def review_records(env: Env) -> list[dict]:
    out = run(str(BIN), "log", "--store", str(env.store), "--json").stdout
    records = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [r for r in records if r.get("event", {}).get("action", "").startswith("review_")]


def wait_indexed(reader: Reader, text: str) -> None:
    def shown() -> bool:
        reader.goto(f"?user={ALICE}")
        return text in reader.page.content()
    assert wait_until(shown, INDEX_TIMEOUT, 1), f"{text!r} never shown\n{diagnostics(reader.env)}"


@pytest.fixture(scope="module")
def auditor(env):
    reader = Reader(env, AUDITOR)
    reader.open_console()
    wait_indexed(reader, ALICE)
    return reader


def alices_session(reader: Reader) -> str:
    """Opens Alice's session from the sessions list; returns its path under the prefix."""
    reader.goto(f"?user={ALICE}")
    link = reader.page.locator(
        f"#sessions tr.session[data-session-id='{reader.env.session_id}'] a.session-link")
    href = link.get_attribute("href")
    link.click()
    reader.page.wait_for_selector("li.cell")
    return href


def test_an_auditor_reads_alices_session_with_code_and_outputs(env, auditor):
    page = auditor.page
    auditor.goto("")
    assert ALICE in page.locator("#sessions").inner_text()
    auditor.screenshot("sessions")
    alices_session(auditor)
    text = page.locator("main").inner_text()
    for code in ("print('hello from alice')", NEEDLE, "divide(1, 0)"):
        assert code in text, f"{code!r} is not on the session page"
    assert "hello from alice" in " ".join(page.locator("div.output").all_inner_texts())
    assert "ZeroDivisionError" in text
    figure = page.locator("div.output img[src^='data:image/png']")
    assert figure.count() >= 1, "the matplotlib figure is not shown"
    assert figure.first.evaluate("img => img.naturalWidth") > 100
    auditor.assert_nothing_hostile_ran()
    auditor.screenshot("session-auditor")


def test_hostile_outputs_do_not_run_and_the_csp_blocks_them(env, auditor):
    alices_session(auditor)
    page = auditor.page
    csp = page.evaluate("() => fetch(location.href).then(r => "
                        "r.headers.get('content-security-policy'))")
    assert csp and "default-src 'none'" in csp and "script-src 'unsafe-inline'" not in csp
    # Only the console's own script files, never an inline one or an output's.
    scripts = page.evaluate("[...document.scripts].map(s => s.src || 'inline')")
    assert all(src.startswith(f"{env.hub.url}{PREFIX}static/") for src in scripts), scripts
    # The HTML output is in a frame that may not run scripts nor share the origin.
    frames = page.locator("iframe.html-output")
    frames.first.scroll_into_view_if_needed()  # they load lazily
    assert frames.count() >= 1, "the HTML output is not shown in a frame"
    for i in range(frames.count()):
        sandbox = frames.nth(i).get_attribute("sandbox")
        assert sandbox is not None and "allow-scripts" not in sandbox \
            and "allow-same-origin" not in sandbox, sandbox
    # The frame's own answer says so too (opened by itself, it is still sandboxed).
    src = frames.first.get_attribute("src")
    frame_answer = auditor.context.request.get(
        f"{env.hub.url}{src}" if src.startswith("/") else f"{page.url.rsplit('/', 1)[0]}/{src}")
    assert frame_answer.ok, frame_answer.status
    assert "sandbox" in frame_answer.headers.get("content-security-policy", "")
    bold = page.frame_locator("iframe.html-output").first.locator(".hostile-bold")
    assert bold.inner_text() == "bold from the notebook", "the HTML output is not shown"
    # Clicking the javascript: link does nothing.
    try:
        page.frame_locator("iframe.html-output").first.locator("#evil-link").click(timeout=3000)
    except Exception:
        pass
    page.wait_for_timeout(500)
    auditor.assert_nothing_hostile_ran()
    # SVG only as an image; JavaScript and Markdown as text.
    assert page.locator("svg script").count() == 0
    assert page.locator("div.output img[src^='data:image/svg+xml']").count() >= 1
    shown = " ".join(page.locator("div.output").all_inner_texts())
    assert "application/javascript (shown as source)" in shown and MARK in shown, \
        "the JavaScript output is not shown as its source"
    # The huge output is cut, and says so.
    assert len(page.content()) < 2_500_000
    assert re.search(r"truncated|cut|omitted", page.locator("main").inner_text(), re.I)


def test_code_search_finds_the_cell(env, auditor):
    page = auditor.page
    auditor.goto("")
    page.fill("#quick-search input[name='q']", NEEDLE[:12])
    with page.expect_navigation(url=re.compile(r"/search\?")):
        page.keyboard.press("Enter")
    hits = page.locator("#hits li.hit")
    assert hits.count() == 1, page.content()[:2000]
    assert NEEDLE in hits.first.inner_text()
    auditor.screenshot("search")
    hits.first.locator("a.hit-link").first.click()
    page.wait_for_selector("li.cell")
    assert NEEDLE in page.locator("main").inner_text()


def test_the_download_is_the_notebook_as_it_ran_and_verifies_offline(env, auditor, tmp_path):
    alices_session(auditor)
    with auditor.page.expect_download() as download:
        auditor.page.locator("#download").click()
    path = tmp_path / (download.value.suggested_filename or "session.ipynb")
    download.value.save_as(path)
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert ["".join(c.source) for c in notebook.cells if c.cell_type == "code"] == CELLS
    outputs = json.dumps([c.get("outputs", []) for c in notebook.cells])
    assert "hello from alice" in outputs and "ZeroDivisionError" in outputs
    # Offline: the file and the store's public key, nothing else.
    key = tmp_path / "store.pub"
    key.write_text(run(str(BIN), "export-key", "--store", str(env.store)).stdout)
    verified = run(str(BIN), "verify-export", str(path), "--public-key", str(key), check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # On the collector's host: against the store too.
    verified = run(str(BIN), "verify-export", str(path), "--store", str(env.store), check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # One changed character and it does not verify.
    tampered = tmp_path / "tampered.ipynb"
    tampered.write_text(path.read_text().replace("hello from alice", "hello from bobby", 1))
    refused = run(str(BIN), "verify-export", str(tampered), "--public-key", str(key),
                  check=False)
    assert refused.returncode != 0, refused.stdout


def test_the_health_page_verifies_the_store(env, auditor):
    page = auditor.page
    response = auditor.goto("health")
    assert response.status == 200

    def verified() -> bool:
        auditor.goto("health")
        return page.locator("#verify .verdict").count() > 0

    assert wait_until(verified, 30, 1), page.locator("#verify").inner_text()
    assert page.locator("#verify .verdict").inner_text() == "Intact"
    assert "checkpoint" in page.locator("main").inner_text().lower()
    auditor.screenshot("health")


def test_a_session_that_starts_shows_on_the_running_page_without_a_reload(env, auditor):
    page = auditor.page
    assert auditor.goto("running").status == 200
    count = page.locator("#running-sessions")
    before = int(count.get_attribute("data-count"))
    manager = KernelManager(kernel_name=ALICES_KERNEL)
    manager.start_kernel()
    try:
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        client.execute_interactive("print('still working')", timeout=60)
        # The page's script polls; the test does not reload.
        # (wait_for_function would evaluate a string: the console's CSP forbids that.)
        assert wait_until(lambda: int(count.get_attribute("data-count")) > before, 30, 0.5), \
            page.locator("main").inner_text()
        assert ALICE in page.locator("#running-sessions").inner_text()
        auditor.screenshot("running")
        client.stop_channels()
    finally:
        manager.shutdown_kernel(now=False)
    auditor.goto(f"user/{ALICE}")
    assert page.locator("#timeline tr.session").count() >= 2, \
        page.locator("main").inner_text()[:2000]
    auditor.screenshot("timeline")


def test_a_reviewer_with_read_only_sees_code_but_no_outputs(env, auditor):
    reviewer = Reader(env, REVIEWER)
    reviewer.open_console()
    href = alices_session(reviewer)
    text = reviewer.page.locator("main").inner_text()
    assert NEEDLE in text and "divide(1, 0)" in text
    html = reviewer.page.content()
    for code in reviewer.page.locator("pre.code").evaluate_all("els => els.map(e => e.outerHTML)"):
        html = html.replace(code, "")
    assert "hello from alice" not in html, "the printed line (an output) reached the reviewer"
    assert "ZeroDivisionError" not in reviewer.page.content()
    assert reviewer.page.locator("div.output").count() == 0
    assert reviewer.page.locator("#outputs-hidden").count() == 1
    assert reviewer.page.locator("iframe").count() == 0
    reviewer.screenshot("session-reviewer")
    # The output frames and the download with outputs are not reachable either.
    alices_session(auditor)
    src = auditor.page.locator("iframe.html-output").first.get_attribute("src")
    answer = reviewer.context.request.get(
        f"{env.hub.url}{src}" if src.startswith("/") else f"{env.hub.url}{PREFIX}{href}/{src}")
    assert answer.status == 403, answer.status


def test_a_plain_user_gets_403(env):
    plain = Reader(env, PLAIN)
    plain.open_console()
    response = plain.page.goto(f"{env.hub.url}{PREFIX}")
    assert response.status == 403
    assert READ in plain.page.locator("body").inner_text()
    plain.screenshot("forbidden")


def test_a_flag_with_a_note_is_shown_filterable_and_needs_the_form_token(env, auditor):
    page = auditor.page
    href = alices_session(auditor)
    note = "figure differs from the report, ask alice"
    page.fill("#mark-form input[name='note']", note)
    with page.expect_navigation():  # the POST answers 303 back to the session
        page.click("#mark-form button[value='flagged']")

    def shown() -> bool:
        page.reload()
        return note in page.locator("#marks").inner_text()

    assert wait_until(shown, 20, 0.5), page.locator("#marks").inner_text()
    auditor.screenshot("session-flagged")
    row = page.locator(f"#sessions tr.session[data-session-id='{env.session_id}']")
    auditor.goto(f"?mark=flagged&user={ALICE}")
    assert row.count() == 1 and "flagged" in row.inner_text()
    auditor.goto(f"?mark=unmarked&user={ALICE}")
    assert row.count() == 0
    # A form posted from elsewhere (no token of this session) is refused.
    forged = auditor.context.request.post(
        f"{env.hub.url}{href}/mark" if href.startswith("/") else f"{env.hub.url}{PREFIX}{href}/mark",
        form={"csrf": "0" * 64, "mark": "reviewed", "note": "forged"}, max_redirects=0)
    assert forged.status == 403, forged.status


def test_every_view_is_on_the_record(env, auditor):
    def seen() -> list[dict]:
        return review_records(env)

    wanted = {(AUDITOR, "session"), (AUDITOR, "search"), (AUDITOR, "download"),
              (AUDITOR, "sessions"), (AUDITOR, "health"), (AUDITOR, "running"),
              (AUDITOR, "timeline"), (REVIEWER, "session"),
              (AUDITOR, "mark")}

    def complete() -> bool:
        got = {(r["review"]["reviewer"]["name"], r["review"]["view"]) for r in seen()}
        return wanted <= got

    assert wait_until(complete, 20, 0.5), json.dumps(seen()[-20:], indent=1)[:5000]
    records = seen()
    # They are written by the console's OS account, never by a notebook user.
    for record in records:
        assert record["process"]["user"]["name"] == CONSOLE_USER, record
    search = next(r for r in records if r["review"]["view"] == "search")
    assert NEEDLE[:12] in search["review"]["query"]
    mark = next(r for r in records if r["event"]["action"] == "review_mark")
    assert mark["review"]["mark"] == "flagged" and "ask alice" in mark["review"]["note"]
    reviewer_views = [r for r in records if r["review"]["reviewer"]["name"] == REVIEWER
                      and r["review"]["view"] == "session"]
    assert all(not r["review"].get("outputs") for r in reviewer_views)


def test_the_trail_with_the_reviews_matches_the_schema_and_verifies(env, auditor):
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    records = validate_all(validator, log_json(env.store))
    assert any(r["event"]["action"] == "review_access" for r in records)
    verified = run(str(BIN), "verify", "--store", str(env.store), check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr
