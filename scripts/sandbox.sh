# Sourced by demo.sh and bench.sh (from the repo root): a throwaway Jupyter environment
# in a temporary directory, removed at exit (KEEP=1 keeps it), and a collector on a
# store inside it. Sets: bin, tmp, store, socket; start_collector, stop_collector.
bin="$PWD/target/release/jupyter-audit"
tmp="$(mktemp -d)"
store="$tmp/store"
socket="$tmp/collector.sock"
collector=""

stop_collector() {
    if [ -n "$collector" ]; then
        kill "$collector" 2>/dev/null || true
        wait "$collector" 2>/dev/null || true
        collector=""
    fi
}

cleanup() {
    stop_collector
    if [ -n "${KEEP:-}" ]; then echo "kept: $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

export JUPYTER_PATH="$tmp/share/jupyter" JUPYTER_DATA_DIR="$tmp/data" \
    JUPYTER_RUNTIME_DIR="$tmp/runtime" JUPYTER_CONFIG_DIR="$tmp/config" IPYTHONDIR="$tmp/ipython"

start_collector() {
    "$bin" collector --store "$store" --socket "$socket" 2>>"$tmp/collector.log" &
    collector=$!
    for _ in $(seq 200); do
        [ -S "$socket" ] && return 0
        sleep 0.05
    done
    echo "the collector did not start:" >&2
    cat "$tmp/collector.log" >&2
    exit 1
}
