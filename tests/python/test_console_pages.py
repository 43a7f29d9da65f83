"""The review console's pages over a real store, behind a real JupyterHub.

A notebook runs through the audited kernel (the suite's collector records it): a line to
search for, a matplotlib figure, a traceback and hostile outputs (HTML with a script, an
event handler and a `javascript:` link; SVG with a script; Markdown with a `javascript:`
link). The console (`jupyter-audit serve`) runs as the Hub's managed service over the
suite's store, with the Hub of test_console_auth.py. `requests` plays the browser:
- an auditor (read + read-outputs) finds the cell by code search, sees its code and
  outputs: the figure as a data: image, the traceback with its colours, the HTML only as
  a sandboxed frame whose route answers with a sandboxing CSP;
- a reviewer (read only) sees the code but no output at all, and the output route says 403;
- every page carries the strict CSP; the mark form needs its CSRF token.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import nbformat
import pytest
import requests
from nbclient import NotebookClient

from helpers import proxy_argv, wait_until
from test_console_auth import (AUDITOR, CSP, PREFIX, READ_OUTPUTS, REVIEWER,
                               SERVICE_START_TIMEOUT, console_hub_config, log_in)
from test_jupyterhub import Hub, _free_port

pytestmark = pytest.mark.timeout(180)

NEEDLE = "console-pages-needle-7f3a"
HOSTILE_HTML = ('<b id="hostile">hostile</b><script>window.HOSTILE = 1</script>'
                '<img src="x" onerror="window.HOSTILE = 2">'
                '<a href="javascript:window.HOSTILE = 3">hostile-link</a>')
HOSTILE_SVG = ('<svg xmlns="http://www.w3.org/2000/svg" onload="window.HOSTILE = 4">'
               '<script>window.HOSTILE = 5</script><circle r="4"/></svg>')
CELLS = [
    f'print("{NEEDLE}")',
    "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
    'def broken():\n    raise ValueError("the console shows tracebacks")\nbroken()',
    "from IPython.display import HTML, SVG, Markdown, display\n"
    f"display(HTML({HOSTILE_HTML!r}))\n"
    f"display(SVG({HOSTILE_SVG!r}))\n"
    "display(Markdown('[md-link](javascript:alert(1))'))",
]


# The audited kernel, keeping images in full (by default the store keeps only their hash
# and size, and the page says so) so that the figure can be shown.
KEEP_BINARY = "python3-audited-keep-binary"


def keep_binary_kernelspec() -> None:
    spec_dir = Path(os.environ["JUPYTER_PATH"]) / "kernels" / KEEP_BINARY
    spec_dir.mkdir(parents=True, exist_ok=True)
    argv = proxy_argv(None, "--keep-binary") + [
        sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec_dir / "kernel.json").write_text(json.dumps(
        {"display_name": KEEP_BINARY, "language": "python", "argv": argv,
         "interrupt_mode": "signal"}))


def run_notebook(workdir: Path) -> None:
    keep_binary_kernelspec()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code) for code in CELLS]
    NotebookClient(nb, kernel_name=KEEP_BINARY, timeout=60, startup_timeout=60, allow_errors=True,
                   resources={"metadata": {"path": str(workdir)}}).execute()
    errors = [o for o in nb.cells[2].outputs if o["output_type"] == "error"]
    assert errors, nb.cells[2].outputs
    assert any("image/png" in o.get("data", {}) for o in nb.cells[1].outputs), nb.cells[1].outputs


@pytest.fixture(scope="module")
def console(suite_store):
    base = Path(tempfile.mkdtemp(prefix="jaudit-pages-"))
    run_notebook(base)
    hub = Hub(base, base, base, config=console_hub_config(
        suite_store, _free_port(), index=base / "console-index.sqlite"))
    hub.start()
    url = f"{hub.url}{PREFIX}"

    def answers() -> bool:
        try:
            return requests.get(url, allow_redirects=False, timeout=2).status_code == 303
        except requests.RequestException:
            return False

    try:
        assert wait_until(answers, SERVICE_START_TIMEOUT, 0.3), \
            f"the console did not answer\n{hub.log()}"
        yield hub
    finally:
        hub.stop()
        shutil.rmtree(base, ignore_errors=True)


def find_session(hub: Hub, browser: requests.Session) -> str:
    """The session page of the notebook's session, found by code search (the index
    catches up about every second)."""
    found: list[str] = []

    def hit() -> bool:
        page = browser.get(f"{hub.url}{PREFIX}search", params={"q": NEEDLE}, timeout=10)
        assert page.status_code == 200, page.text
        links = re.findall(r'class="hit-link" href="([^"]+)"', page.text)
        found.extend(links)
        return bool(links)

    assert wait_until(hit, 30, 0.5), "the code search never found the cell"
    return urljoin(hub.url, found[0].split("#")[0])


def test_an_auditor_sees_code_and_outputs_and_hostile_outputs_stay_inert(console):
    browser, start = log_in(console, AUDITOR)
    assert start.status_code == 200, start.text
    assert start.headers["Content-Security-Policy"] == CSP
    session_url = find_session(console, browser)
    page = browser.get(session_url, timeout=20)
    assert page.status_code == 200, page.text
    assert page.headers["Content-Security-Policy"] == CSP
    html = page.text
    assert 'id="session"' in html and html.count('class="cell ') == len(CELLS)
    assert NEEDLE in html, "the code is shown"
    assert 'id="outputs-hidden"' not in html
    # The printed line, the figure and the traceback with its colours.
    assert re.search(r'class="output stream stdout"><pre class="text">' + NEEDLE, html)
    assert 'src="data:image/png;base64,iVBORw0KGgo' in html
    assert 'class="output error"' in html and "ansi-fg-" in html
    assert "the console shows tracebacks" in html
    # Hostile outputs: HTML only in a frame without scripts; SVG only as an image.
    frames = re.findall(r'<iframe class="html-output" sandbox="" [^>]*src="([^"]+)"', html)
    assert len(frames) == 1, html
    assert 'src="data:image/svg+xml;base64,' in html
    for live in ("<script>window.HOSTILE", "<img src=\"x\"", "onerror=\"window", "<svg",
                 'href="javascript:', 'id="hostile"'):
        assert live not in html, live
    assert "[md-link](javascript:alert(1))" in html, "Markdown is shown as its source"
    # The frame's own answer: the HTML as it was, under a sandboxing policy.
    frame = browser.get(urljoin(console.url, frames[0]), timeout=10)
    assert frame.status_code == 200
    policy = frame.headers["Content-Security-Policy"]
    assert policy.startswith("sandbox;") and "script-src" not in policy, policy
    assert "default-src 'none'" in policy
    assert '<b id="hostile">hostile</b>' in frame.text


def test_a_reviewer_sees_code_but_no_outputs(console):
    auditor, _ = log_in(console, AUDITOR)
    session_url = find_session(console, auditor)
    frame = re.findall(r'<iframe class="html-output" sandbox="" [^>]*src="([^"]+)"',
                       auditor.get(session_url, timeout=20).text)[0]
    browser, _ = log_in(console, REVIEWER)
    page = browser.get(session_url, timeout=20)
    assert page.status_code == 200, page.text
    html = page.text
    assert NEEDLE in html and "plt.plot" in html, "the code is shown"
    assert 'id="outputs-hidden"' in html and READ_OUTPUTS in html
    for output in ('class="output', "data:image", "<iframe", "ansi-fg-"):
        assert output not in html, output
    assert browser.get(urljoin(console.url, frame), timeout=10).status_code == 403


def test_every_page_carries_the_strict_policy(console):
    browser, _ = log_in(console, AUDITOR)
    session_url = find_session(console, browser)
    session_page = browser.get(session_url, timeout=20).text
    user = re.search(r'<h1><a href="([^"]+)"', session_page).group(1)
    pages = {
        "sessions": f"{console.url}{PREFIX}",
        "filtered": f"{console.url}{PREFIX}?errors=1&mark=unmarked",
        "timeline": urljoin(console.url, user),
        "search": f"{console.url}{PREFIX}search?q={NEEDLE}",
        "health": f"{console.url}{PREFIX}health",
        "running": f"{console.url}{PREFIX}running",
    }
    for name, url in pages.items():
        page = browser.get(url, timeout=20)
        assert page.status_code == 200, (name, page.text)
        assert page.headers["Content-Security-Policy"] == CSP, name
        assert page.headers["X-Content-Type-Options"] == "nosniff", name
    sessions = browser.get(pages["filtered"], timeout=10).text
    assert 'id="sessions"' in sessions and session_url.split(PREFIX)[1] in sessions, \
        "the session has errors and no mark"
    health = browser.get(pages["health"], timeout=10).text
    assert 'id="verify"' in health and 'id="last-checkpoint"' in health
    running = browser.get(pages["running"], timeout=10).text
    assert f'src="{PREFIX}static/running.js"' in running
    script = browser.get(f"{console.url}{PREFIX}static/running.js", timeout=10)
    assert script.headers["Content-Type"].startswith("text/javascript")
    css = browser.get(f"{console.url}{PREFIX}static/console.css", timeout=10)
    assert css.headers["Content-Type"].startswith("text/css")


def test_a_mark_needs_the_form_token(console):
    browser, _ = log_in(console, AUDITOR)
    session_url = find_session(console, browser)
    page = browser.get(session_url, timeout=20).text
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page).group(1)
    forged = browser.post(f"{session_url}/mark", data={"mark": "flagged", "csrf": "0" * 64},
                          allow_redirects=False, timeout=10)
    assert forged.status_code == 403
    marked = browser.post(f"{session_url}/mark", data={"mark": "flagged", "csrf": token,
                                                       "note": "looks odd"},
                          allow_redirects=False, timeout=10)
    assert marked.status_code == 303, marked.text
    assert marked.headers["Location"].endswith("#marks")
