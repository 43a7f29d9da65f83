#!/usr/bin/env bash
# What the JupyterHub end-to-end test (tests/python/test_jupyterhub.py) needs besides the
# Python packages of .venv: configurable-http-proxy from npm, in the repo-local,
# gitignored .node/ directory, and a Chromium for Playwright to drive (Debian's
# `chromium` package; Playwright never downloads a browser here).
# Idempotent and quiet. Without root (or without npm) it only says what is missing: the
# test skips itself then.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
node_dir="$root/.node"
chp_version="5.3.0"
chp="$node_dir/node_modules/.bin/configurable-http-proxy"

if [ "$(id -u)" -ne 0 ]; then
    echo "hub-env: not root; the JupyterHub test will be skipped (it creates system users)" >&2
    exit 0
fi

if ! command -v chromium >/dev/null; then
    if command -v apt-get >/dev/null; then
        echo "hub-env: installing the Debian package chromium" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null
        apt-get -o DPkg::Lock::Timeout=300 install -y -qq chromium >/dev/null
    else
        echo "hub-env: chromium missing and no apt-get; the JupyterHub test will skip" >&2
    fi
fi

if [ "$("$chp" --version 2>/dev/null || true)" != "$chp_version" ]; then
    if command -v npm >/dev/null; then
        echo "hub-env: installing configurable-http-proxy@$chp_version into .node/" >&2
        mkdir -p "$node_dir"
        npm install --prefix "$node_dir" --no-save --no-audit --no-fund --loglevel=error \
            "configurable-http-proxy@$chp_version" >/dev/null
    else
        echo "hub-env: npm missing; the JupyterHub test will skip" >&2
    fi
fi
