#!/usr/bin/env bash
# Create (or update) the project-local Python environment .venv at the repo root with
# the packages of tests/requirements.txt. Idempotent and quiet: it installs only when the
# requirements changed since the last successful install (hash stamp inside .venv).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
req="$root/tests/requirements.txt"
stamp="$venv/.requirements.sha256"

have_venv() { [ -x "$venv/bin/python" ] && "$venv/bin/python" -m pip --version >/dev/null 2>&1; }

make_venv() { rm -rf "$venv" && python3 -m venv "$venv" >/dev/null 2>&1; }

if ! command -v python3 >/dev/null; then
    echo "python-env: python3 not found; install it (Debian: apt-get install python3 python3-venv)" >&2
    exit 1
fi

if ! have_venv; then
    if ! make_venv; then
        # On Debian, `python3 -m venv` needs the python3-venv package (ensurepip).
        if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
            echo "python-env: installing the Debian package python3-venv" >&2
            export DEBIAN_FRONTEND=noninteractive
            apt-get update -qq >/dev/null
            apt-get install -y -qq python3-venv >/dev/null
            make_venv
        else
            rm -rf "$venv"
            echo "python-env: 'python3 -m venv' failed. Install the Debian package python3-venv" >&2
            echo "            (sudo apt-get install python3-venv) and run this script again." >&2
            exit 1
        fi
    fi
fi

want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "python-env: installing tests/requirements.txt into .venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
    echo "$want" >"$stamp"
fi
