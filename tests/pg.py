"""A real PostgreSQL 15 server on loopback for tests (started and stopped by the tests).

Import the fixture into a test module::

    from pg import PgServer, pg_server  # noqa: F401  (tests/pg.py)

    def test_it(pg_server: PgServer) -> None:
        pg_server.dsn()  # postgresql://noetl:...@127.0.0.1:<port>/noetl_test

One server per test process: the fixture may be imported by several modules, it starts the
server the first time and stops it (``pg_ctl -m fast``) when pytest finishes. The server
listens on 127.0.0.1 on a free port, with a data dir from ``mktemp -d -t pgdata.XXXXXX``
owned by the ``postgres`` system user (``initdb`` refuses to run as root, so it runs through
``runuser -u postgres`` when we are root). TCP connections need a password (scram-sha-256),
so wrong-password errors are real. Tests skip only when PostgreSQL's ``initdb`` is missing.

Environment: ``NOETL_TEST_PGBIN`` overrides the binaries' folder (default
``/usr/lib/postgresql/15/bin``, else ``pg_config --bindir``, else ``initdb`` on PATH).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import quote

import pytest

SUPERUSER = "postgres"
SUPERUSER_PASSWORD = "pg-super-Secr3t"
USER = "noetl"
PASSWORD = "noetl-Secr3t-pw"  # a value tests check never leaks into error messages
DATABASE = "noetl_test"


@dataclass
class PgServer:
    host: str
    port: int
    user: str
    password: str
    database: str
    datadir: str  # the temp folder: data/, server.log and the socket
    bindir: str

    def dsn(self, *, password: str | None = None, database: str | None = None) -> str:
        pw = self.password if password is None else password
        return (f"postgresql://{quote(self.user)}:{quote(pw)}@{self.host}:{self.port}/"
                f"{database or self.database}")

    def fields(self) -> dict[str, str]:
        """Credential fields as NoETL's ``postgres`` credential type names them."""
        return {"db_host": self.host, "db_port": str(self.port), "db_user": self.user,
                "db_password": self.password, "db_name": self.database}

    def create_database(self, name: str) -> str:
        """A new database ``name`` owned by the test user (the superuser creates it); returns ``name``."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=SUPERUSER, password=SUPERUSER_PASSWORD,
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{self.user}"')
        return name


def find_bindir() -> str | None:
    candidates = [os.environ.get("NOETL_TEST_PGBIN"), "/usr/lib/postgresql/15/bin"]
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            candidates.append(subprocess.run([pg_config, "--bindir"], capture_output=True,
                                             text=True, check=True).stdout.strip())
        except (OSError, subprocess.CalledProcessError):
            pass
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for bindir in candidates:
        if bindir and Path(bindir, "initdb").exists() and Path(bindir, "pg_ctl").exists():
            return bindir
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def _run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(_as_postgres(args), capture_output=True, text=True, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc


def start_postgres() -> PgServer:
    """initdb + start a server; raises when PostgreSQL is there but fails to start."""
    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError("initdb")
    base = tempfile.mkdtemp(prefix="pgdata.")
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    datadir = str(Path(base, "data"))
    pwfile = Path(base, "pw")
    try:
        pwfile.write_text(SUPERUSER_PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, "postgres", "postgres")
        _run([f"{bindir}/initdb", "-D", datadir, "-U", SUPERUSER, f"--pwfile={pwfile}",
              "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"],
             timeout=120)
        pwfile.unlink()
        port = free_port()
        opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        _run([f"{bindir}/pg_ctl", "-D", datadir, "-w", "-t", "60", "-l", f"{base}/server.log",
              "-o", opts, "start"], timeout=120)
    except BaseException:
        # initdb or start failed: stop whatever may have started, keep no data dir behind
        subprocess.run(_as_postgres([f"{bindir}/pg_ctl", "-D", datadir, "-m", "immediate", "-w", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
        raise
    server = PgServer("127.0.0.1", port, USER, PASSWORD, DATABASE, base, bindir)
    try:
        sql = (f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}';"
               f"CREATE DATABASE {DATABASE} OWNER {USER};")
        for stmt in sql.split(";"):
            if stmt.strip():
                _run([f"{bindir}/psql", "-h", base, "-p", str(port), "-U", SUPERUSER,
                      "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-qc", stmt], timeout=60)
    except Exception:
        stop_postgres(server)
        raise
    return server


def stop_postgres(server: PgServer) -> None:
    try:
        subprocess.run(_as_postgres([f"{server.bindir}/pg_ctl", "-D", f"{server.datadir}/data", "-m", "fast",
                                     "-w", "stop"]), capture_output=True, timeout=60)
    finally:
        shutil.rmtree(server.datadir, ignore_errors=True)


_SERVER: PgServer | None = None


@pytest.fixture(scope="session")
def pg_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    """The process's PostgreSQL 15 server (skips only when initdb is missing)."""
    global _SERVER
    if _SERVER is None:
        try:
            _SERVER = start_postgres()
        except FileNotFoundError:
            pytest.skip("PostgreSQL is not installed (no initdb); set NOETL_TEST_PGBIN")
        server = _SERVER

        def _stop() -> None:
            global _SERVER
            _SERVER = None
            stop_postgres(server)

        request.config.add_cleanup(_stop)
    yield _SERVER


@pytest.fixture
def pg_instance(pg_server: PgServer) -> Iterator[object]:
    """A Dagster instance on dagster-postgres storage in a fresh database of the test server."""
    import dagster as dg

    name = pg_server.create_database(f"dagster_{os.urandom(4).hex()}")
    url = pg_server.dsn(database=name).replace("postgresql://", "postgresql+psycopg2://")
    with dg.instance_for_test(overrides={"storage": {"postgres": {"postgres_url": url}}}) as instance:
        yield instance
