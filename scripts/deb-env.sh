#!/usr/bin/env bash
# Tools for building and testing the Debian package (scripts/build-deb.sh,
# tests/python/test_deb.py): cargo-deb, built from crates.io into .tools/ inside the
# repository (gitignored; nothing is installed under ~/.cargo/bin), and, as root, the
# Debian packages the test checks the package with (systemd for systemd-analyze,
# systemd-sysusers and systemd-tmpfiles; man-db; strace; systemd-container for
# systemd-nspawn). Idempotent: does nothing when all are there.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.cargo/bin:$PATH"

# Pinned: the package layout and the flags build-deb.sh uses are checked with this one.
CARGO_DEB_VERSION=3.6.3
tools="$PWD/.tools"

if ! "$tools/bin/cargo-deb" --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
    command -v xz >/dev/null || { echo "deb-env: cargo-deb needs xz (Debian: xz-utils)" >&2; exit 1; }
    echo "deb-env: building cargo-deb $CARGO_DEB_VERSION into .tools/" >&2
    # Its build directory stays in .tools too, and is dropped once the binary is there.
    # --no-default-features: no liblzma built from C source (about a third of the build);
    # cargo-deb then compresses with the system's xz (xz-utils, in every Debian).
    CARGO_TARGET_DIR="$tools/build" cargo install --quiet --locked --no-default-features \
        --root "$tools" --version "$CARGO_DEB_VERSION" cargo-deb
    rm -rf "$tools/build"
fi

missing=()
for tool in systemd-analyze systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null || missing+=(systemd)
done
command -v man >/dev/null || missing+=(man-db)
# The test checks the collector's syscalls against the unit's SystemCallFilter=.
command -v strace >/dev/null || missing+=(strace)
# ... and boots a container (this machine's files under an overlay) to run the unit
# under systemd itself.
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "deb-env: missing Debian packages: ${missing[*]} (test_deb.py skips without them)" >&2
    exit 0
fi
echo "deb-env: installing the Debian packages ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
