#!/usr/bin/env bash
# Make sure R and IRkernel are on this machine for tests/python/test_kernels.py (the
# other kernels it runs, xeus-python and bash_kernel, come from tests/requirements.txt).
# As root, installs Debian's r-cran-irkernel when missing, which also registers the
# kernelspec "ir" in /usr/share/jupyter/kernels; otherwise only says what is missing
# (the IRkernel tests then skip with a reason).
set -euo pipefail

have_irkernel() {
    command -v R >/dev/null && [ -f /usr/share/jupyter/kernels/ir/kernel.json ]
}

if have_irkernel; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "kernels-env: no R/IRkernel; install the Debian package r-cran-irkernel" >&2
    echo "             (the IRkernel tests skip without it)" >&2
    exit 0
fi
echo "kernels-env: installing the Debian package r-cran-irkernel" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends r-cran-irkernel >/dev/null
have_irkernel
