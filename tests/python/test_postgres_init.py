"""`jupyter-audit postgres init` against a real throwaway PostgreSQL cluster: the roles,
tables, grants and triggers it leaves, that it can run twice, that `--print` is the same
script, what the writer and reader roles may do, and TLS (rustls) with a test CA."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import BIN
from pgcluster import pg  # noqa: F401

WRITER = "ja_writer"
READER = "ja_reader"
STORE_ID = "6f1c1d8e-0000-4000-8000-000000000001"


def jupyter_audit(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *argv], capture_output=True, text=True, timeout=60,
                          env=env)


def init(url: str, *extra: str, writer: str = WRITER, reader: str = READER,
         env: dict | None = None) -> subprocess.CompletedProcess:
    return jupyter_audit("postgres", "init", "--url", url, "--writer", writer,
                         "--reader", reader, *extra, env=env)


def psql(pg, sql: str, user: str = "postgres", db: str = "postgres",
         check: bool = False) -> subprocess.CompletedProcess:
    argv = ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-h", str(pg.sockets), "-p",
            str(pg.port), "-U", user, "-d", db, "-c", sql]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=check)


# What an auditor of the setup looks at: owners, privileges, triggers, roles.
STATE_SQL = r"""
SELECT 'rel ' || c.relname || ' ' || c.relkind::text || ' owner=' || pg_get_userbyid(c.relowner)
       || ' acl=' || coalesce(c.relacl::text, '-')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'jupyter_audit'
UNION ALL
SELECT 'schema owner=' || pg_get_userbyid(nspowner) || ' acl=' || coalesce(nspacl::text, '-')
FROM pg_namespace WHERE nspname = 'jupyter_audit'
UNION ALL
SELECT 'trigger ' || c.relname || ' ' || t.tgname || ' ' || pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'jupyter_audit'
  AND NOT t.tgisinternal
UNION ALL
SELECT 'function ' || p.proname || ' acl=' || coalesce(p.proacl::text, '-')
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'jupyter_audit'
UNION ALL
SELECT 'role ' || rolname || ' login=' || rolcanlogin || ' super=' || rolsuper
FROM pg_roles WHERE rolname IN ('ja_writer', 'ja_reader')
ORDER BY 1
"""


def state(pg, db: str = "postgres") -> list[str]:
    return psql(pg, STATE_SQL, db=db, check=True).stdout.splitlines()


def insert_record(sequence: int) -> str:
    return ("INSERT INTO jupyter_audit.records (store_id, sequence, action, line, prev, hash) "
            f"VALUES ('{STORE_ID}', {sequence}, 'execute_request', '{{\"n\":{sequence}}}', "
            "'\\x00', '\\x01')")


@pytest.fixture(scope="module")
def initialised(pg):
    first = init(pg.url())
    assert first.returncode == 0, first.stderr
    return first


def test_init_creates_everything_and_a_second_run_changes_nothing(pg, initialised):
    assert "role ja_writer: created" in initialised.stdout
    assert "table jupyter_audit.records: created" in initialised.stdout
    assert "trigger refuse_truncate on jupyter_audit.checkpoints: created" in initialised.stdout
    before = state(pg)
    assert any(line.startswith("rel records r owner=postgres") for line in before), before

    second = init(pg.url())
    assert second.returncode == 0, second.stderr
    assert "created" not in second.stdout.replace("already there", "")
    assert "role ja_writer: already there" in second.stdout
    assert state(pg) == before


def test_print_shows_the_same_script_and_psql_runs_it_to_the_same_state(pg, initialised):
    printed = jupyter_audit("postgres", "init", "--writer", WRITER, "--reader", READER,
                            "--print")
    assert printed.returncode == 0, printed.stderr
    psql(pg, "CREATE DATABASE printed", check=True)
    for _ in range(2):  # twice: idempotent in psql too
        ran = subprocess.run(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-q", "-h", str(pg.sockets), "-p",
             str(pg.port), "-U", "postgres", "-d", "printed"],
            input=printed.stdout, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
    assert state(pg, db="printed") == state(pg)


def test_the_writer_inserts_and_reads_but_cannot_change_or_remove(pg, initialised):
    assert psql(pg, insert_record(1), user=WRITER).returncode == 0
    assert psql(pg, "SELECT line FROM jupyter_audit.records WHERE sequence = 1",
                user=WRITER).stdout.strip() == '{"n":1}'
    for sql in ("UPDATE jupyter_audit.records SET line = '{}' WHERE sequence = 1",
                "DELETE FROM jupyter_audit.records WHERE sequence = 1",
                "TRUNCATE jupyter_audit.records"):
        refused = psql(pg, sql, user=WRITER)
        assert refused.returncode != 0, sql
        assert "permission denied" in refused.stderr, refused.stderr
    assert pg.scalar("SELECT line FROM jupyter_audit.records WHERE sequence = 1") == '{"n":1}'


def test_the_triggers_refuse_changes_even_when_someone_grants_them(pg, initialised):
    psql(pg, insert_record(2), user=WRITER, check=True)
    psql(pg, "INSERT INTO jupyter_audit.checkpoints VALUES "
             f"('{STORE_ID}', 2, 'aa', 't', 's', 'k', 'sig')", user=WRITER, check=True)
    psql(pg, f"GRANT UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA jupyter_audit TO {WRITER}",
         check=True)
    try:
        for table, sql in (
                ("records", "UPDATE jupyter_audit.records SET line = '{}' WHERE sequence = 2"),
                ("records", "DELETE FROM jupyter_audit.records WHERE sequence = 2"),
                ("records", "TRUNCATE jupyter_audit.records"),
                ("stores", "TRUNCATE jupyter_audit.stores"),
                ("checkpoints", "DELETE FROM jupyter_audit.checkpoints")):
            refused = psql(pg, sql, user=WRITER)
            assert refused.returncode != 0, sql
            assert f"jupyter_audit.{table} is append-only" in refused.stderr, refused.stderr
    finally:
        # init puts the grants back as they were.
        assert init(pg.url()).returncode == 0
    assert pg.scalar("SELECT line FROM jupyter_audit.records WHERE sequence = 2") == '{"n":2}'
    assert "UPDATE" not in pg.scalar(
        "SELECT string_agg(privilege_type, ',') FROM information_schema.role_table_grants "
        f"WHERE grantee = '{WRITER}' AND table_schema = 'jupyter_audit'")


def test_the_reader_only_reads(pg, initialised):
    psql(pg, insert_record(3), user=WRITER, check=True)
    assert psql(pg, "SELECT count(*) FROM jupyter_audit.records WHERE sequence = 3",
                user=READER).stdout.strip() == "1"
    for sql in (insert_record(4),
                "UPDATE jupyter_audit.records SET line = '{}'",
                "DELETE FROM jupyter_audit.records",
                "TRUNCATE jupyter_audit.records"):
        refused = psql(pg, sql, user=READER)
        assert refused.returncode != 0 and "permission denied" in refused.stderr, sql


def test_public_gets_nothing(pg, initialised):
    psql(pg, "DROP ROLE IF EXISTS nobody_else; CREATE ROLE nobody_else LOGIN", check=True)
    refused = psql(pg, "SELECT count(*) FROM jupyter_audit.records", user="nobody_else")
    assert refused.returncode != 0 and "permission denied" in refused.stderr


def test_the_owner_may_still_change_and_remove_rows(pg, initialised):
    psql(pg, insert_record(5), user=WRITER, check=True)
    psql(pg, "UPDATE jupyter_audit.records SET line = '{\"edited\":1}' WHERE sequence = 5",
         check=True)
    assert pg.scalar("SELECT line FROM jupyter_audit.records WHERE sequence = 5") == \
        '{"edited":1}'
    psql(pg, "DELETE FROM jupyter_audit.records WHERE sequence = 5", check=True)
    assert pg.scalar("SELECT count(*) FROM jupyter_audit.records WHERE sequence = 5") == "0"


def test_role_names_are_identifiers_not_sql(pg, initialised):
    hostile = 'evil"; DROP TABLE jupyter_audit.records; --'
    done = init(pg.url(), writer=hostile, reader="evil_reader'")
    assert done.returncode == 0, done.stderr
    assert pg.scalar("SELECT count(*) FROM pg_roles WHERE rolname = "
                     "'evil\"; DROP TABLE jupyter_audit.records; --'") == "1"
    assert pg.scalar("SELECT to_regclass('jupyter_audit.records') IS NOT NULL") == "t"


def test_the_admin_cannot_be_the_writer_and_a_non_utf8_database_is_refused(pg, initialised):
    as_owner = init(pg.url(), writer="postgres")
    assert as_owner.returncode != 0
    assert "writer role \"postgres\" is the role running init" in as_owner.stderr

    # Tables that an earlier admin gave to the would-be writer: it would pass the triggers.
    psql(pg, "CREATE ROLE ja_former_admin; ALTER TABLE jupyter_audit.stores OWNER TO "
             "ja_former_admin", check=True)
    try:
        refused = init(pg.url(), writer="ja_former_admin")
        assert refused.returncode != 0
        assert "the writer or the reader owns tables of jupyter_audit" in refused.stderr
    finally:
        psql(pg, "ALTER TABLE jupyter_audit.stores OWNER TO postgres", check=True)

    psql(pg, "CREATE DATABASE latin TEMPLATE template0 ENCODING 'LATIN1' LC_COLLATE 'C' "
             "LC_CTYPE 'C'", check=True)
    refused = init(pg.url(db="latin"))
    assert refused.returncode != 0
    assert "encoded in LATIN1" in refused.stderr and "UTF8" in refused.stderr
    assert psql(pg, "SELECT to_regnamespace('jupyter_audit') IS NULL",
                db="latin").stdout.strip() == "t"


def test_a_password_in_the_url_is_refused_and_not_echoed(pg):
    secret = "s3cr3t-Pa55"
    for url in (f"postgresql://postgres:{secret}@localhost/postgres",
                f"host=127.0.0.1 user=postgres password={secret}"):
        refused = init(url)
        assert refused.returncode != 0
        assert "password" in refused.stderr and "password file" in refused.stderr
        assert secret not in refused.stderr + refused.stdout


# TLS: a test CA, a server certificate for 127.0.0.1 and localhost, and a CA that did not
# sign it. The server listens on 127.0.0.1 with TLS only (hostssl, scram-sha-256): a
# connection that works over TCP is encrypted.

ADMIN_PASSWORD = "tls-admin-Pw0rd"


def openssl(*argv: str, cwd: Path) -> None:
    subprocess.run(["openssl", *argv], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
            "-subj", f"/CN=jupyter-audit test {name}", cwd=directory)


@pytest.fixture(scope="module")
def tls_pg(tmp_path_factory):
    from pgcluster import make_cluster
    certs = tmp_path_factory.mktemp("certs")
    make_ca(certs, "ca")
    make_ca(certs, "other-ca")
    (certs / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
            cwd=certs)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-set_serial", "2", "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
            cwd=certs)
    # Not under pytest's 0700 directory: the server runs as another OS user.
    base = Path(tempfile.mkdtemp(prefix="jaudit-pg-tls-"))
    cluster = make_cluster(base)
    cluster.enable_tls(certs / "server.crt", certs / "server.key")
    cluster.start()
    try:
        cluster.psql(f"ALTER ROLE postgres PASSWORD '{ADMIN_PASSWORD}'")
        password_file = certs / "admin.password"
        password_file.write_text(ADMIN_PASSWORD + "\n")
        password_file.chmod(0o600)
        cluster.certs = certs
        cluster.password_file = password_file
        yield cluster
    finally:
        cluster.remove()
        shutil.rmtree(base, ignore_errors=True)


def tls_init(cluster, url: str, env: dict | None = None,
             password_file: bool = True) -> subprocess.CompletedProcess:
    extra = ("--password-file", str(cluster.password_file)) if password_file else ()
    done = init(url, *extra, env=env)
    assert ADMIN_PASSWORD not in done.stdout + done.stderr
    return done


def test_verify_full_with_the_right_ca_connects(tls_pg):
    ca = tls_pg.certs / "ca.pem"
    for host in ("127.0.0.1", "localhost"):
        url = tls_pg.tcp_url("postgres", sslmode="verify-full", sslrootcert=str(ca))
        done = tls_init(tls_pg, url.replace("host=127.0.0.1", f"host={host}"))
        assert done.returncode == 0, done.stderr
    # The URL form, with the parameters in its query.
    url = (f"postgresql://postgres@127.0.0.1:{tls_pg.port}/postgres"
           f"?sslmode=verify-full&sslrootcert={ca}")
    done = tls_init(tls_pg, url)
    assert done.returncode == 0, done.stderr
    assert "role ja_writer: already there" in done.stdout


def test_a_certificate_from_another_ca_is_refused(tls_pg):
    url = tls_pg.tcp_url("postgres", sslmode="verify-full",
                         sslrootcert=str(tls_pg.certs / "other-ca.pem"))
    done = tls_init(tls_pg, url)
    assert done.returncode != 0
    assert "cannot connect to PostgreSQL" in done.stderr
    assert "invalid peer certificate" in done.stderr and "UnknownIssuer" in done.stderr


def test_verify_full_checks_the_host_name_and_verify_ca_does_not(tls_pg):
    ca = str(tls_pg.certs / "ca.pem")
    # Connect to 127.0.0.1, but expect a server called db.elsewhere.example.
    url = tls_pg.tcp_url("postgres", sslmode="verify-full", sslrootcert=ca).replace(
        "host=127.0.0.1", "host=db.elsewhere.example hostaddr=127.0.0.1")
    done = tls_init(tls_pg, url)
    assert done.returncode != 0
    assert "not valid for name" in done.stderr, done.stderr
    done = tls_init(tls_pg, url.replace("verify-full", "verify-ca"))
    assert done.returncode == 0, done.stderr


def test_require_without_a_ca_encrypts_and_verify_full_without_one_is_an_error(tls_pg):
    done = tls_init(tls_pg, tls_pg.tcp_url("postgres", sslmode="require"))
    assert done.returncode == 0, done.stderr
    done = tls_init(tls_pg, tls_pg.tcp_url("postgres", sslmode="verify-full"))
    assert done.returncode != 0
    assert "sslmode=verify-full needs sslrootcert=FILE" in done.stderr
    # The server takes TLS only: no TLS is no connection.
    done = tls_init(tls_pg, tls_pg.tcp_url("postgres", sslmode="disable"))
    assert done.returncode != 0 and "no encryption" in done.stderr, done.stderr


def test_the_password_comes_from_pgpass_unless_others_can_read_it(tls_pg, tmp_path):
    pgpass = tmp_path / "pgpass"
    pgpass.write_text(f"# test\nelsewhere:*:*:*:wrong\n127.0.0.1:{tls_pg.port}:*:postgres:"
                      f"{ADMIN_PASSWORD}\n")
    pgpass.chmod(0o600)
    env = {**os.environ, "PGPASSFILE": str(pgpass)}
    url = tls_pg.tcp_url("postgres", sslmode="verify-full",
                         sslrootcert=str(tls_pg.certs / "ca.pem"))
    done = tls_init(tls_pg, url, env=env, password_file=False)
    assert done.returncode == 0, done.stderr

    pgpass.chmod(0o644)
    done = tls_init(tls_pg, url, env=env, password_file=False)
    assert done.returncode != 0
    assert "group or world access" in done.stderr
    assert "asks for a password and none was found" in done.stderr
