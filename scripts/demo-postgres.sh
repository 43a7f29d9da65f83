#!/usr/bin/env bash
# The central trail, shown end to end: a throwaway PostgreSQL cluster (Debian's server,
# installed by scripts/pg-env.sh when run as root), `postgres init` with a writer and a
# reader role, a collector forwarding its store there, examples/demo.ipynb executed
# through an audited kernel, and then the trail read back from PostgreSQL (status, log,
# sessions, verify). Everything lives in a temporary directory removed at the end
# (KEEP=1 keeps it). scripts/demo.sh shows the embedded default without PostgreSQL.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --quiet
bash scripts/python-env.sh
bash scripts/pg-env.sh
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ -z "$pg_bin" ]; then
    echo "demo-postgres: no PostgreSQL server binaries (run as root to install them)" >&2
    exit 1
fi
source scripts/sandbox.sh

section() { printf '\n=== %s\n' "$*"; }

# initdb refuses root: as root, the cluster belongs to an unprivileged system user.
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    id jaudit-pg >/dev/null 2>&1 ||
        useradd --system --user-group --no-create-home --shell /usr/sbin/nologin jaudit-pg
    as_pg=(runuser -u jaudit-pg --)
fi
pg="$tmp/pg"
mkdir -p "$pg/socket"
chmod 755 "$tmp" "$pg" "$pg/socket"
[ "$(id -u)" -eq 0 ] && chown -R jaudit-pg: "$pg"
port=$((20000 + RANDOM % 20000))
stop_pg() { "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg/data" -m fast -w stop >/dev/null 2>&1 || true; }
trap 'stop_pg; cleanup' EXIT

section "a throwaway PostgreSQL cluster in $pg (Unix socket only)"
"${as_pg[@]}" "$pg_bin/initdb" -D "$pg/data" -U postgres --auth-local=trust -E UTF8 \
    --locale=C >/dev/null
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$pg/data" -l "$pg/server.log" -w \
    -o "-p $port -k $pg/socket -c listen_addresses=''" start >/dev/null
admin_url="host=$pg/socket port=$port user=postgres dbname=postgres"
writer_url="host=$pg/socket port=$port user=jaudit_writer dbname=postgres"
reader_url="host=$pg/socket port=$port user=jaudit_reader dbname=postgres"

section "jupyter-audit postgres init --url … --writer jaudit_writer --reader jaudit_reader"
"$bin" postgres init --url "$admin_url" --writer jaudit_writer --reader jaudit_reader

section "collector forwarding to PostgreSQL: … collector --forward-postgres '$writer_url'"
"$bin" collector --store "$store" --socket "$socket" --forward-postgres "$writer_url" \
    2>>"$tmp/collector.log" &
collector=$!
for _ in $(seq 200); do [ -S "$socket" ] && break; sleep 0.05; done

section "examples/demo.ipynb, executed with nbclient through an audited kernel"
mkdir -p "$tmp/python3"
cat >"$tmp/python3/kernel.json" <<JSON
{"argv": ["$PWD/.venv/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "Python 3", "language": "python"}
JSON
"$bin" install --wrap "$tmp/python3" --name python3-audited --prefix "$tmp" \
    --socket "$socket" --config "$tmp/no-admin-config.toml" >/dev/null 2>&1
.venv/bin/python - examples/demo.ipynb <<'PY'
import sys
import nbformat
from nbclient import NotebookClient

nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, kernel_name="python3-audited", timeout=60, allow_errors=True).execute()
print(f"{sum(c.cell_type == 'code' for c in nb.cells)} code cells ran")
PY

section "jupyter-audit status --store …  (forwarding lag; wait until PostgreSQL has everything)"
for _ in $(seq 100); do
    "$bin" status --store "$store" --json | .venv/bin/python -c \
        'import json,sys; s=json.load(sys.stdin); sys.exit(0 if (s.get("forwarding") or {}).get("lag_records") == 0 else 1)' \
        && break
    sleep 0.1
done
"$bin" status --store "$store"

section "the trail read from PostgreSQL as the reader role: jupyter-audit log --postgres …"
"$bin" log --postgres "$reader_url"

section "jupyter-audit sessions --postgres …"
"$bin" sessions --postgres "$reader_url"

section "collector stopped (SIGTERM): final checkpoint, forwarded before it exits"
stop_collector

section "jupyter-audit verify --postgres …  (every store's chain, recomputed in PostgreSQL)"
"$bin" verify --postgres "$reader_url"
