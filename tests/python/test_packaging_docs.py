"""The collector's unit is written once, in packaging/debian/: README.md and
docs/deployment.md show that file, and this keeps their copies from drifting."""

from __future__ import annotations

import re

from helpers import REPO

UNIT = REPO / "packaging" / "debian" / "jupyter-audit-collector.service"


def unit_blocks(markdown: str) -> list[str]:
    """The ```ini blocks that are a collector unit (a [Service] running the collector)."""
    blocks = re.findall(r"^```ini\n(.*?)^```$", markdown, re.M | re.S)
    return [b for b in blocks if "[Service]" in b and "jupyter-audit collector" in b]


def test_the_docs_show_the_packaged_unit():
    packaged = UNIT.read_text()
    for doc in ("README.md", "docs/deployment.md"):
        shown = unit_blocks((REPO / doc).read_text())
        assert shown, f"{doc} shows the collector's unit"
        for block in shown:
            assert block == packaged, f"{doc}: the unit differs from {UNIT.relative_to(REPO)}"


def test_man_pages_and_completions_come_from_the_command_line(tmp_path):
    """What build-deb.sh packages: a man page per subcommand with its flags, completion
    scripts that know the flags; the packaging subcommand itself stays out of sight."""
    import subprocess

    from helpers import BIN

    def run(*argv):
        return subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=60,
                              check=True).stdout

    run("manpages", "--out", str(tmp_path / "man"))
    pages = {p.name for p in (tmp_path / "man").iterdir()}
    for command in ("kernel", "install", "collector", "verify", "log", "serve", "postgres-init",
                    "completions"):
        assert f"jupyter-audit-{command}.1" in pages, sorted(pages)
    assert "jupyter-audit.1" in pages and "jupyter-audit-manpages.1" not in pages
    collector = (tmp_path / "man" / "jupyter-audit-collector.1").read_text()
    assert re.search(r"^\.TH jupyter-audit-collector 1\b", collector, re.M)
    assert r"\-\-reviewers\-group" in collector
    assert "manpages" not in run("--help")

    assert "--reviewers-group" in run("completions", "bash")
    assert run("completions", "zsh").startswith("#compdef jupyter-audit")
    assert "complete -c jupyter-audit" in run("completions", "fish")
