#!/usr/bin/env bash
# Make sure Debian's PostgreSQL server binaries are on this machine (the tests start
# throwaway clusters of their own with them). As root, installs the Debian package
# postgresql when missing, without creating or starting the system's own cluster;
# otherwise only says what is missing (the PostgreSQL tests then skip with a reason).
set -euo pipefail

have_server() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }

if have_server; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "pg-env: no PostgreSQL server binaries; install the Debian package postgresql" >&2
    echo "        (the PostgreSQL tests skip without them)" >&2
    exit 0
fi
echo "pg-env: installing the Debian package postgresql" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq postgresql-common >/dev/null
# The tests make their own clusters: no system cluster, nothing started at install.
mkdir -p /etc/postgresql-common
if grep -q '^#\?\s*create_main_cluster' /etc/postgresql-common/createcluster.conf 2>/dev/null; then
    sed -i 's/^#\?\s*create_main_cluster.*/create_main_cluster = false/' \
        /etc/postgresql-common/createcluster.conf
else
    echo 'create_main_cluster = false' >>/etc/postgresql-common/createcluster.conf
fi
apt-get install -y -qq postgresql >/dev/null
have_server
