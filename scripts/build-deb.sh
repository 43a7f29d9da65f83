#!/usr/bin/env bash
# Builds the Debian package target/debian/jupyter-audit_*.deb and prints its path.
# Reuses target/release/jupyter-audit when it is there (scripts/test.sh builds it; a
# stale one is rebuilt by cargo, a fresh one is not); generates the man pages and the
# shell completions from that binary into target/packaging/, then packages with
# cargo-deb (.tools/, from scripts/deb-env.sh) without building again.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/deb-env.sh
cargo build --release --locked --quiet
binary=target/release/jupyter-audit

out=target/packaging
rm -rf "$out"
mkdir -p "$out/man" "$out/completions"
"$binary" manpages --out "$out/man"
gzip -9n "$out"/man/*.1
"$binary" completions bash >"$out/completions/jupyter-audit.bash"
"$binary" completions zsh >"$out/completions/_jupyter-audit"
"$binary" completions fish >"$out/completions/jupyter-audit.fish"

# --strip: the release profile keeps line tables (debug = 1) for backtraces in the
# tests; the package ships the binary without them. cargo-deb prints the path it wrote.
.tools/bin/cargo-deb --no-build --strip --quiet --output target/debian/
