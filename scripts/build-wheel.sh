#!/usr/bin/env bash
# Build the jupyter-audit wheel (pyproject.toml: maturin, bindings "bin") into dist/, or
# into the directory given as $1, and print the wheel's path as the last line.
#
# The wheel's binary is the release build of target/release (the one scripts/test.sh
# builds and tests), stripped afterwards. maturin's own strip (`strip = true`, what
# `pip install .` uses) adds `-C strip=symbols` to rustc's arguments: cargo then compiles
# and links the binary crate again (about 1.5 minutes on 2 cores) under another hash, and
# replaces target/release/jupyter-audit with it. Here maturin builds without stripping,
# so cargo finds target/release fresh and does nothing, and binutils' `strip` removes the
# symbols and line tables (130 MB -> 19 MB) from the copy inside the wheel; `wheel pack`
# writes the new RECORD hashes.
#
# maturin and wheel are pinned in tests/requirements.txt (installed into .venv).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$(realpath -m "${1:-$root/dist}")"
cd "$root"
export PATH="$HOME/.cargo/bin:$PATH"

if ! command -v strip >/dev/null; then
    echo "build-wheel: strip not found; install binutils (the linker cargo uses comes with it)" >&2
    exit 1
fi
bash scripts/python-env.sh

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Not compressed: this wheel is only unpacked again below.
.venv/bin/maturin build --release --locked --strip false --compression-method stored \
    --out "$work/built" >&2
built=("$work"/built/*.whl)

.venv/bin/python -m wheel unpack --dest "$work/tree" "${built[0]}" >&2
tree=("$work"/tree/*)
binary=("${tree[0]}"/*.data/scripts/jupyter-audit)
strip --strip-all "${binary[0]}"

mkdir -p "$out"
packed="$(.venv/bin/python -m wheel pack --dest-dir "$out" "${tree[0]}")"
# `wheel pack` reports "Repacking wheel as PATH...OK".
wheel_path="${packed#Repacking wheel as }"
echo "${wheel_path%...OK}"
