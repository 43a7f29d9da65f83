#!/usr/bin/env bash
# The whole story on the embedded default: a collector owning a store, an audited
# ipykernel, examples/demo.ipynb executed through it, and then the trail as an auditor
# sees it (log, sessions, verify, replay). Everything lives in a temporary directory
# removed at the end (set KEEP=1 to keep it; see scripts/sandbox.sh).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --quiet
bash scripts/python-env.sh
source scripts/sandbox.sh

section() { printf '\n=== %s\n' "$*"; }

section "collector: $bin collector --store $store --socket $socket"
start_collector

section "audited kernelspec: jupyter-audit install --wrap python3 --socket …"
mkdir -p "$tmp/python3"
cat >"$tmp/python3/kernel.json" <<JSON
{"argv": ["$PWD/.venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3", "language": "python"}
JSON
"$bin" install --wrap "$tmp/python3" --name python3-audited --prefix "$tmp" \
    --socket "$socket" --config "$tmp/no-admin-config.toml" 2>/dev/null

section "examples/demo.ipynb, executed with nbclient through the audited kernel"
.venv/bin/python - examples/demo.ipynb <<'PY'
import sys
import nbformat
from nbclient import NotebookClient

nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, kernel_name="python3-audited", timeout=60, allow_errors=True).execute()

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
PY

section "collector stopped (SIGTERM): it writes a final signed checkpoint"
stop_collector

section "the trail, read by a reviewer: jupyter-audit log --store …"
"$bin" log --store "$store"

section "jupyter-audit sessions --store …"
"$bin" sessions --store "$store"

section "jupyter-audit verify --store …"
"$bin" verify --store "$store"

section "jupyter-audit replay --store … --session <the session> -o replayed.ipynb"
session="$("$bin" log --store "$store" --action session_start --json | .venv/bin/python -c \
    'import json, sys; print(json.loads(sys.stdin.readline())["jupyter"]["session_id"])')"
"$bin" replay --store "$store" --session "$session" -o "$tmp/replayed.ipynb"
.venv/bin/python - "$tmp/replayed.ipynb" <<'PY'
import sys
import nbformat
nb = nbformat.read(sys.argv[1], as_version=4)
nbformat.validate(nb)
print(f"{sys.argv[1]}: valid nbformat {nb.nbformat}.{nb.nbformat_minor}, {len(nb.cells)} cells as they ran:")
for cell in nb.cells:
    first = cell.source.splitlines()[0] if cell.source else ""
    print(f"  [{cell.get('execution_count')}] {first}  ->  {len(cell.get('outputs', []))} output(s)")
PY
