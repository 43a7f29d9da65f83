#!/usr/bin/env bash
# The benchmark of issue 4: prints the whole table. Not a test (PASS/MISS are informational).
#   scripts/bench.sh            full run (a few minutes on 2 cores)
#   scripts/bench.sh --quick    tiny repetitions: checks that the harness runs
#   scripts/bench.sh --only big,collector   a subset (startup rtt big prints png memory
#                               collector load), for profiling one figure
#   scripts/bench.sh --only load   N audited kernels at once (benches/load.py; N from free
#                               memory, LOAD_KERNELS=N to choose); not in the full run
#   scripts/bench.sh --only forward   16 stores x 200 000 records forwarded into one
#                               PostgreSQL server, then review query p95 (benches/forward.py;
#                               needs scripts/pg-env.sh; several minutes); not in the full run
#   scripts/bench.sh --only console   the review console's index of a generated 1 M-record
#                               store: catch-up rate, page query p95 (benches/console_index.rs;
#                               about a minute); not in the full run
# Builds the release binary, prepares .venv, starts a collector with its default, durable
# settings (fsync before ack) on a temporary store, writes four kernelspecs in a temporary
# JUPYTER_PATH (the direct ipykernel, the audited one, our relay with --no-audit, the plain
# pyzmq relay of benches/pyzmq_relay.py), runs benches/relay.py, then `cargo bench --bench collector` if
# benches/collector.rs exists. Everything temporary is removed at the end (KEEP=1 keeps it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
quick=""
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick="--quick" ;;
        --only) only="${2:?--only needs a list}"; shift ;;
        *) echo "usage: scripts/bench.sh [--quick] [--only LIST]" >&2; exit 2 ;;
    esac
    shift
done
relay_only="$(tr ',' '\n' <<<"$only" | grep -vxE 'collector|load|forward|console' | paste -sd, || true)"
# Whether --only names figure $1 (a pattern match: `… | grep -q` under pipefail can fail
# on its writer's SIGPIPE).
only_has() { [[ ",$only," == *",$1,"* ]]; }

cargo build --release --quiet
bash scripts/python-env.sh
source scripts/sandbox.sh
py="$PWD/.venv/bin/python"
start_collector

kernels="$JUPYTER_PATH/kernels"
mkdir -p "$kernels/bench-direct" "$kernels/bench-pyzmq" "$tmp/wrap"
cat >"$kernels/bench-direct/kernel.json" <<JSON
{"argv": ["$py", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "bench direct", "language": "python"}
JSON
cp "$kernels/bench-direct/kernel.json" "$tmp/wrap/kernel.json"
"$bin" install --wrap "$tmp/wrap" --name bench-audited --prefix "$tmp" \
    --socket "$socket" --config /nonexistent >/dev/null
mkdir -p "$kernels/bench-relay-only"
cat >"$kernels/bench-relay-only/kernel.json" <<JSON
{"argv": ["$bin", "kernel", "-f", "{connection_file}", "--no-audit", "--config", "/nonexistent",
          "--", "$py", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "bench relay without audit", "language": "python"}
JSON
cat >"$kernels/bench-pyzmq/kernel.json" <<JSON
{"argv": ["$py", "$PWD/benches/pyzmq_relay.py", "-f", "{connection_file}", "--",
          "$py", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "bench pyzmq relay", "language": "python"}
JSON

if [ -z "$only" ] || [ -n "$relay_only" ]; then
    echo "=== relay figures: direct vs audited (durable collector) vs plain pyzmq relay"
    "$py" benches/relay.py --store "$store" --bin "$bin" --collector-pid "$collector" $quick \
        ${relay_only:+--only "$relay_only"}
fi

if only_has forward; then
    echo "=== forward figures: stores forwarded into one PostgreSQL server, review queries there"
    "$py" benches/forward.py $quick
fi

if only_has console; then
    echo "=== console figures: the review console's index of a generated store"
    records=1000000
    [ -n "$quick" ] && records=20000
    cargo bench --quiet --bench console_index -- --dir "$tmp/console" --records "$records" \
        ${quick:+--runs 20}
fi

if only_has load; then
    echo "=== load figures: concurrent audited kernels, one durable collector"
    "$py" benches/load.py --store "$store" --kernels "${LOAD_KERNELS:-0}" $quick
fi

if [ -n "$only" ] && ! only_has collector; then
    exit 0
fi
echo
echo "=== collector figures"
if [ -f benches/collector.rs ]; then
    cargo bench --quiet --bench collector -- $quick
else
    echo "(benches/collector.rs not present: collector figures skipped)"
fi
