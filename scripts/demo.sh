#!/usr/bin/env bash
# Runs examples/demo.ipynb through an audited kernel and prints every cell and its outputs.
# Everything Jupyter-related lives in a temporary directory removed at the end.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --quiet
bash scripts/python-env.sh

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
export JUPYTER_PATH="$tmp/share/jupyter" JUPYTER_DATA_DIR="$tmp/data" \
    JUPYTER_RUNTIME_DIR="$tmp/runtime" JUPYTER_CONFIG_DIR="$tmp/config" IPYTHONDIR="$tmp/ipython"

# A plain ipykernel spec for the venv's Python, wrapped by `jupyter-audit install`.
mkdir -p "$tmp/python3"
cat >"$tmp/python3/kernel.json" <<JSON
{"argv": ["$PWD/.venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3", "language": "python"}
JSON
target/release/jupyter-audit install --wrap "$tmp/python3" --name python3-audited --prefix "$tmp" >/dev/null

.venv/bin/python - examples/demo.ipynb <<'PY'
import sys
import nbformat
from nbclient import NotebookClient

nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, kernel_name="python3-audited", timeout=60).execute()

for cell in nb.cells:
    if cell.cell_type != "code":
        continue
    print(f"--- In [{cell.execution_count}]:")
    print("    " + cell.source.replace("\n", "\n    "))
    for out in cell.outputs:
        kind = out.output_type
        if kind == "stream":
            print(f"    [{out.name}] {out.text.rstrip()}")
        elif kind == "error":
            print(f"    [error] {out.ename}: {out.evalue}")
        else:
            for mime, data in out.data.items():
                text = mime.startswith("text/") or mime.endswith("json")
                shown = str(data).strip() if text else f"<{len(data)} base64 characters>"
                print(f"    [{kind} {mime}] {shown}")
    print()
PY
