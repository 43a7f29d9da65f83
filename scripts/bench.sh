#!/usr/bin/env bash
# The benchmark of issue 4: prints the whole table. Not a test (PASS/MISS are informational).
#   scripts/bench.sh            full run (a few minutes on 2 cores)
#   scripts/bench.sh --quick    tiny repetitions: checks that the harness runs
# Builds the release binary, prepares .venv, starts a collector with its default, durable
# settings (fsync before ack) on a temporary store, writes three kernelspecs in a temporary
# JUPYTER_PATH (the direct ipykernel, the audited one, the plain pyzmq relay of
# benches/pyzmq_relay.py), runs benches/relay.py, then `cargo bench --bench collector` if
# benches/collector.rs exists. Everything temporary is removed at the end (KEEP=1 keeps it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
quick=""
[ "${1:-}" = "--quick" ] && quick="--quick"

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
cat >"$kernels/bench-pyzmq/kernel.json" <<JSON
{"argv": ["$py", "$PWD/benches/pyzmq_relay.py", "-f", "{connection_file}", "--",
          "$py", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
 "display_name": "bench pyzmq relay", "language": "python"}
JSON

echo "=== relay figures: direct vs audited (durable collector) vs plain pyzmq relay"
"$py" benches/relay.py --store "$store" --bin "$bin" $quick

echo
echo "=== collector figures"
if [ -f benches/collector.rs ]; then
    cargo bench --quiet --bench collector -- $quick
else
    echo "(benches/collector.rs not present: collector figures skipped)"
fi
