"""nbclient equivalence: a notebook run through jupyter-audit gives the same outputs as
one run on ipykernel directly.

Only what is legitimately random is normalised: widget model ids, execution timing
metadata, memory addresses, ipykernel's per-process temp names, the kernelspec name, and
how stream text happened to be chunked into messages.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import AUDITED, DIRECT

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

_MODEL_ID = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
_ADDRESS = re.compile(r"0x[0-9a-f]{6,16}")
_IPYKERNEL_TMP = re.compile(r"ipykernel_\d+")


def execute(name: str, kernel_name: str, workdir: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    client = NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=120,
        startup_timeout=60,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return nb


def _merge_streams(outputs: list) -> list:
    merged: list = []
    for out in outputs:
        prev = merged[-1] if merged else None
        if (
            out["output_type"] == "stream"
            and prev is not None
            and prev["output_type"] == "stream"
            and prev["name"] == out["name"]
        ):
            prev["text"] += out["text"]
        else:
            merged.append(out)
    return merged


def _walk_strings(obj, fn):
    """Apply fn to every string (values and keys) inside a JSON-like object."""
    if isinstance(obj, str):
        return fn(obj)
    if isinstance(obj, list):
        return [_walk_strings(v, fn) for v in obj]
    if isinstance(obj, dict):
        return {fn(k): _walk_strings(v, fn) for k, v in obj.items()}
    return obj


def normalise(nb: nbformat.NotebookNode) -> dict:
    nb = copy.deepcopy(dict(nb))
    nb["metadata"] = dict(nb["metadata"])
    nb["metadata"].pop("kernelspec", None)
    cells = []
    for cell in nb["cells"]:
        cell = dict(cell)
        cell["metadata"] = {k: v for k, v in cell["metadata"].items() if k != "execution"}
        if cell["cell_type"] == "code":
            cell["outputs"] = _merge_streams([dict(o) for o in cell["outputs"]])
        cells.append(cell)
    nb["cells"] = cells

    # Widget model ids are random: number them in order of first appearance (outputs
    # first, then the saved widget state), so equal structures compare equal.
    ids: dict[str, str] = {}

    def renumber(s: str) -> str:
        s = _MODEL_ID.sub(lambda m: ids.setdefault(m.group(0), f"model-{len(ids)}"), s)
        s = _ADDRESS.sub("0xADDRESS", s)
        return _IPYKERNEL_TMP.sub("ipykernel_PID", s)

    return _walk_strings(nb, renumber)


def first_difference(got, want, path: str = "") -> str | None:
    """Where two JSON-like values differ, briefly (outputs can be megabytes long)."""
    if type(got) is not type(want):
        return f"{path}: {type(got).__name__} instead of {type(want).__name__}"
    if isinstance(want, dict):
        if set(got) != set(want):
            return f"{path}: keys {sorted(got)} instead of {sorted(want)}"
        for key in want:
            diff = first_difference(got[key], want[key], f"{path}/{key}")
            if diff:
                return diff
        return None
    if isinstance(want, list):
        for i, (g, w) in enumerate(zip(got, want)):
            diff = first_difference(g, w, f"{path}/{i}")
            if diff:
                return diff
        if len(got) != len(want):
            return f"{path}: {len(got)} items instead of {len(want)}"
        return None
    if got != want:
        if isinstance(want, str):
            i = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
            i = min(len(got), len(want)) if i is None else i
            return (f"{path}: strings differ at {i} (lengths {len(got)}, {len(want)}): "
                    f"{got[max(0, i - 30):i + 50]!r} instead of {want[max(0, i - 30):i + 50]!r}")
        return f"{path}: {got!r} instead of {want!r}"
    return None


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", NAMES)
def test_same_outputs_through_proxy(name, tmp_path):
    expected = normalise(execute(name, DIRECT, tmp_path))
    check_reference(name, expected)
    actual = normalise(execute(name, AUDITED, tmp_path))
    diff = first_difference(actual, expected)
    assert diff is None, f"{name}.ipynb through the proxy differs at {diff}"


def check_reference(name: str, nb: dict) -> None:
    """Guard against a vacuous comparison: the reference run has the outputs we expect."""
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        tags = cell["metadata"].get("tags", [])
        if "no-output" in tags:
            assert cell["outputs"] == [], cell
        else:
            assert cell["outputs"], f"no output in reference run of {cell['source']!r}"
        if "raises-exception" in tags:
            assert cell["outputs"][-1]["output_type"] == "error", cell
    kinds = {o["output_type"] for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]}
    if name == "errors":
        assert "error" in kinds
    if name == "rich":
        assert any(
            "image/png" in o.get("data", {})
            for c in nb["cells"] if c["cell_type"] == "code" for o in c["outputs"]
        )
    if name == "widgets":
        state = nb["metadata"]["widgets"][WIDGET_STATE]["state"]
        sliders = [m for m in state.values() if m["model_name"] == "IntSliderModel"]
        assert [(s["state"]["value"], s["state"]["max"]) for s in sliders] == [(7, 50)]
        outputs = [m for m in state.values() if m["model_name"] == "OutputModel"]
        assert "inside the output widget" in str(outputs)
