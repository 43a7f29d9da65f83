"""Writes the test notebooks of this directory (run it after changing a cell below).

    .venv/bin/python tests/notebooks/make_notebooks.py

tests/python/test_notebooks.py executes each notebook with ipykernel directly and
through jupyter-audit and compares the outputs. Cells tagged "raises-exception" are
expected to fail; cells tagged "no-output" are expected to print nothing.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

MAKE_PNG = '''\
import random, struct, zlib

def make_png(width, height, seed=None):
    """A PNG image built by hand; noisy (hard to compress) when seeded."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))
    if seed is None:
        rows = (bytes([0]) + b"".join(bytes([x % 256, y % 256, 128]) for x in range(width))
                for y in range(height))
    else:
        rng = random.Random(seed)
        rows = (bytes([0]) + rng.randbytes(3 * width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b""))
'''


def code(source: str, *tags: str):
    cell = new_code_cell(source)
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


NOTEBOOKS = {
    "streams": [
        new_markdown_cell("# Output streams"),
        code("print('hello, world')"),
        code("import sys\nprint('a warning', file=sys.stderr)"),
        code("for i in range(5):\n    print('line', i)\nprint('done', file=sys.stderr)"),
        code("print('unicode: \u00e9\u00e8 \u2713 \u65e5\u672c \U0001f600')"),
        code("print('\\n'.join(f'{i:05d} ' + 'x' * 70 for i in range(20000)))"),
        code("import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)"),
        code("x = 41", "no-output"),
        code("x + 1"),
    ],
    "rich": [
        code(MAKE_PNG + "\nfrom IPython.display import Image, display\n"
             "display(Image(data=make_png(32, 32)))"),
        code("Image(data=make_png(600, 600, seed=7))"),
        code("from IPython.display import HTML, Markdown, Math, JSON, SVG\n"
             "display(HTML('<table><tr><td>1</td><td>2</td></tr></table>'))\n"
             "display(Markdown('**bold** and `code`'))\n"
             "display(Math(r'e^{i\\pi} + 1 = 0'))\n"
             "display(JSON({'a': [1, 2, 3], 'b': {'c': None}}))\n"
             "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"10\" height=\"10\">"
             "<rect width=\"10\" height=\"10\"/></svg>'))"),
        code("class Rich:\n"
             "    def _repr_html_(self):\n        return '<i>rich</i>'\n"
             "    def _repr_markdown_(self):\n        return '*rich*'\n"
             "    def __repr__(self):\n        return 'Rich()'\n"
             "Rich()"),
        code("from IPython.display import display\n"
             "display({'text/plain': 'custom', 'application/x-custom+json': {'k': 1}}, raw=True)"),
        code("big = 'y' * 3_000_000\nlen(big)"),
    ],
    "errors": [
        code("print('before the error')"),
        code("def fail(n):\n    if n == 0:\n        raise ValueError('on purpose')\n"
             "    fail(n - 1)\nfail(3)", "raises-exception"),
        code("print('after the error')"),
        code("1 / 0", "raises-exception"),
        code("import sys\nprint('partial output')\nprint('err', file=sys.stderr)\n"
             "raise KeyError('k')", "raises-exception"),
        code("print('still alive')"),
    ],
    "widgets": [
        code("import ipywidgets as widgets\n"
             "slider = widgets.IntSlider(value=3, min=0, max=10, description='n')\nslider"),
        code("slider.value = 7\nslider.max = 50\nslider.description = 'changed'", "no-output"),
        code("text = widgets.Text(value='hello')\n"
             "box = widgets.VBox([widgets.Label('a box'), text])\ndisplay(box)\n"
             "text.value = 'world'"),
        code("out = widgets.Output()\ndisplay(out)\n"
             "with out:\n    print('inside the output widget')\n"
             "print('outside the output widget')"),
        code("print(slider.value, slider.max, text.value)"),
    ],
    "updates": [
        code("from IPython.display import clear_output, display\nimport time\n"
             "for i in range(10):\n    clear_output(wait=True)\n    print('step', i)\n"
             "    time.sleep(0.05)"),
        code("for i in range(5):\n    clear_output(wait=True)\n"
             "    display({'text/plain': f'frame {i}'}, raw=True)"),
        code("print('gone')\nclear_output()\nprint('kept')"),
        code("handle = display('first', display_id=True)\nhandle.update('second')"),
        code("handle.update('updated from a later cell')\nprint('updated')"),
        code("h2 = display({'text/plain': 'v0'}, raw=True, display_id='fixed-id')\n"
             "for i in range(1, 4):\n    h2.update({'text/plain': f'v{i}'}, raw=True)"),
    ],
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {
            "name": "python3", "display_name": "Python 3", "language": "python"
        }
        # Stable cell ids keep the files unchanged when nothing changed.
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name}-{i}"
        nbformat.validate(nb)
        nbformat.write(nb, HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
