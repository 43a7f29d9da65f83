#!/usr/bin/env bash
# The whole test suite in one command, from anywhere: formatting, lints, Rust unit tests,
# a short bounded fuzzing run, the release build, and the Python integration tests
# against real kernels.
# Extra arguments go to pytest (e.g. scripts/test.sh -k interrupt -x).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export PYTHONDONTWRITEBYTECODE=1

step() { printf '\n==> %s\n' "$*"; }

step "python environment (.venv)"
bash scripts/python-env.sh

step "JupyterHub test tools (.node/configurable-http-proxy, chromium; root only)"
bash scripts/hub-env.sh

step "PostgreSQL server binaries (Debian postgresql; root only)"
bash scripts/pg-env.sh

step "R and IRkernel for the kernel tests (Debian r-cran-irkernel; root only)"
bash scripts/kernels-env.sh

step "Debian package tools (cargo-deb into .tools/; systemd, man-db, strace, systemd-container; root only)"
bash scripts/deb-env.sh

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test"
cargo test

step "fuzz: replay the corpora, then each target 20 s (scripts/fuzz.sh)"
FUZZ_SECONDS=20 bash scripts/fuzz.sh

step "cargo build --release"
cargo build --release

step "pytest tests/python"
JUPYTER_AUDIT_BIN="$PWD/target/release/jupyter-audit" \
    .venv/bin/python -m pytest tests/python -q "$@"
