#!/usr/bin/env bash
# The fuzz targets in fuzz/ (libFuzzer, built on the stable toolchain with the same
# coverage flags cargo-fuzz uses, so neither nightly nor cargo-fuzz is needed).
#
#   scripts/fuzz.sh                    CI: fuzz every target FUZZ_SECONDS (default 20)
#                                      seconds, all at once; each run first replays its
#                                      committed corpus
#   scripts/fuzz.sh TARGET SECONDS     fuzz one target longer; what it learns is kept in
#                                      fuzz/grown/TARGET (not committed) for the next run
#   scripts/fuzz.sh seeds              rewrite the seed corpora (fuzz/corpus/*/seed-*)
#
# Targets: wire, files, collector, store, zmtp. A crash stops the run with the input saved in
# fuzz/artifacts/TARGET/; fix it, add a unit test, and copy the input into
# fuzz/corpus/TARGET/ so every later run replays it.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
root="$PWD"
targets=(wire files collector store zmtp)

if [[ "${1:-}" == seeds ]]; then
    # A plain build beside the main crate's, so its dependencies are reused.
    cd fuzz/seeds
    CARGO_TARGET_DIR="$root/target" cargo run --quiet -- "$root/fuzz/corpus"
    # The zmtp seeds are what real frontends send: pyzmq and jupyter_client from .venv.
    bash "$root/scripts/python-env.sh" >/dev/null
    "$root/.venv/bin/python" capture_zmtp.py "$root/fuzz/corpus"
    exit 0
fi

# Check the arguments before the build (which takes minutes when cold).
[[ $# -eq 0 || ( $# -eq 2 && " ${targets[*]} " == *" $1 "* ) ]] || { sed -n '2,14p' "$0" >&2; exit 2; }

host="$(rustc -vV | sed -n 's/^host: //p')"
# cargo-fuzz's instrumentation, without any -Z flag. The explicit --target keeps these
# flags off build scripts and proc macros, which are not linked with libFuzzer.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
start=$SECONDS
(cd fuzz && cargo build --release --bins --target "$host" --quiet)
echo "fuzz targets built in $((SECONDS - start)) s"
bin="$root/fuzz/target/$host/release"

# Common libFuzzer options: a hung input counts as a failure, and no input may make a
# target hold more than 2 GiB.
options=(-timeout=10 -rss_limit_mb=2048 -print_final_stats=1)

run() { # run TARGET SECONDS GROWN_DIR LOG
    local target=$1 seconds=$2 grown=$3 log=$4
    mkdir -p "$grown" "fuzz/artifacts/$target"
    # New inputs go to the first directory; the committed corpus is only read.
    "$bin/$target" "${options[@]}" -max_total_time="$seconds" \
        -artifact_prefix="fuzz/artifacts/$target/" "$grown" "fuzz/corpus/$target" >"$log" 2>&1
}

summary() { # summary TARGET LOG
    local runs cov corpus
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$2" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$2" | tail -1 || true)
    corpus=$(grep -o 'corp: [0-9]*/[0-9a-zA-Z]*' "$2" | tail -1 || true)
    printf '%-10s %10s execs  %s  %s\n' "$1" "${runs:-?}" "$cov" "$corpus"
}

fail() { # fail TARGET LOG
    echo "FUZZ FAILURE in $1:" >&2
    tail -n 40 "$2" >&2
    ls "fuzz/artifacts/$1/" >&2 || true
    exit 1
}

if [[ $# -eq 2 ]]; then
    target=$1
    log="$(mktemp)"
    echo "fuzzing $target for $2 s (grown corpus: fuzz/grown/$target, log: $log)"
    run "$target" "$2" "fuzz/grown/$target" "$log" || fail "$target" "$log"
    summary "$target" "$log"
    exit 0
fi

seconds="${FUZZ_SECONDS:-20}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Fuzz all targets at once: the time bound is per target, whatever the number of cores.
# Each run starts by executing every committed input (crash reproducers included), so a
# separate replay pass would only run them twice.
declare -A pids
for target in "${targets[@]}"; do
    run "$target" "$seconds" "$work/$target" "$work/$target.log" &
    pids[$target]=$!
done
failed=()
for target in "${targets[@]}"; do
    wait "${pids[$target]}" || failed+=("$target")
done
for target in "${targets[@]}"; do
    summary "$target" "$work/$target.log"
done
for target in "${failed[@]}"; do
    fail "$target" "$work/$target.log"
done
echo "fuzzing: ${#targets[@]} targets, ${seconds} s each, no crash ($((SECONDS - start)) s in all)"
