"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, `initdb` into a
temporary directory as an unprivileged OS user, the server listening on a Unix socket in
that directory (and, on request, on 127.0.0.1 with TLS), stopped and removed at the end.

The superuser is `postgres` (trust over the socket: the socket directory is the guard);
roles made by tests log in over TCP with scram-sha-256 passwords.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import system_user

PG_OS_USER = "jaudit-pg"


def server_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL server's bin directory, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    def __init__(self, base: Path, bin_dir: Path) -> None:
        self.base = base
        self.bin = bin_dir
        self.data = base / "data"
        self.sockets = base / "socket"
        self.log = base / "server.log"
        self.port = free_port()
        self.tls = False
        self.os_user: str | None = None
        if os.geteuid() == 0:
            # initdb refuses to run as root.
            self.os_user = system_user(PG_OS_USER).pw_name

    def _run(self, *argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        if self.os_user:
            argv = ("runuser", "-u", self.os_user, "--", *argv)
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=check)

    def init(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(exist_ok=True)
        # Other users (a collector run as another user) connect through the socket.
        os.chmod(self.base, 0o755)
        os.chmod(self.sockets, 0o755)
        if self.os_user:
            pw = system_user(self.os_user)
            for path in (self.base, self.sockets):
                os.chown(path, pw.pw_uid, pw.pw_gid)
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nunix_socket_directories = '{self.sockets}'\n"
                       "listen_addresses = ''\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\n")

    def enable_tls(self, cert: Path, key: Path) -> None:
        """Listen on 127.0.0.1 as well, with TLS from `cert`/`key` (copied in)."""
        for source, name in ((cert, "server.crt"), (key, "server.key")):
            target = self.data / name
            shutil.copy(source, target)
            os.chmod(target, 0o600)
            if self.os_user:
                pw = system_user(self.os_user)
                os.chown(target, pw.pw_uid, pw.pw_gid)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("listen_addresses = '127.0.0.1'\nssl = on\n"
                       "ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n")
        with open(self.data / "pg_hba.conf", "w") as hba:
            hba.write("local all all trust\n"
                      "hostssl all all 127.0.0.1/32 scram-sha-256\n")
        self.tls = True

    def start(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                  "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t",
                  "60", "stop", check=False)

    def url(self, user: str = "postgres", db: str = "postgres") -> str:
        """A libpq key=value connection string over the Unix socket."""
        return f"host={self.sockets} port={self.port} user={user} dbname={db}"

    def tcp_url(self, user: str, db: str = "postgres", **params: str) -> str:
        extra = "".join(f" {k}={v}" for k, v in params.items())
        return f"host=127.0.0.1 port={self.port} user={user} dbname={db}{extra}"

    def psql(self, sql: str, user: str = "postgres", check: bool = True) -> subprocess.CompletedProcess:
        argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", str(self.sockets), "-p",
                str(self.port), "-U", user, "-d", "postgres", "-c", sql]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check)

    def scalar(self, sql: str, user: str = "postgres") -> str:
        return self.psql(sql, user).stdout.strip()

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def make_cluster(tmp: Path) -> PgCluster:
    bin_dir = server_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (scripts/pg-env.sh installs them as root)")
    cluster = PgCluster(tmp, bin_dir)
    cluster.init()
    return cluster


@pytest.fixture(scope="module")
def pg():
    """A started throwaway cluster for the tests of one module."""
    base = Path(tempfile.mkdtemp(prefix="jaudit-pg-"))
    cluster = make_cluster(base)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()
