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
