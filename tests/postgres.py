"""A throwaway PostgreSQL server for tests (real server binaries, no Docker, no mocks).

``running_postgres()`` finds ``initdb``/``pg_ctl`` (on PATH or under /usr/lib/postgresql/*/bin),
creates a cluster in a fresh temporary directory with trust authentication, starts it on a free
TCP port of 127.0.0.1 (its unix socket inside the same directory), creates the databases
``optuna`` and ``mlflow``, yields their URLs and stops the server (``pg_ctl stop -m fast``) when
done. PostgreSQL refuses to run as root, so as root the server commands run as the ``postgres``
system user (``runuser -u postgres --``) in a directory that user owns.

Without the binaries (or psycopg2) the tests using it skip with the reason, except where the
environment variable ``CI`` is set: there they fail, since CI must run them. ``make setup``
installs the Debian ``postgresql`` package when it can.
"""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60
DATABASES = ("optuna", "mlflow")


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    root: Path  # data directory, socket directory and server log live here

    def url(self, database: str, driver: str = "") -> str:
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{database}"

    # The driver is named: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, and the test
    # extra installs psycopg2-binary. Both libraries take SQLAlchemy URLs (MLflow reads the
    # database type before the "+").
    @property
    def optuna_url(self) -> str:
        """An SQLAlchemy URL for Optuna's RDBStorage (hydra.sweeper.storage)."""
        return self.url("optuna", "psycopg2")

    @property
    def mlflow_url(self) -> str:
        """A tracking URI for MLflow's database store (tracking.uri, MlflowClient)."""
        return self.url("mlflow", "psycopg2")

    def connect(self, database: str = "postgres"):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname=database, connect_timeout=5)


def _unavailable(reason: str) -> None:
    """Skip, or fail where CI is set (CI must run the PostgreSQL tests)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so PostgreSQL tests must run; `make setup` installs it as root)")
    pytest.skip(reason)


def _version_key(path: str) -> tuple:
    parts = Path(path).parts
    version = parts[-3] if len(parts) >= 3 else ""
    return tuple(int(x) if x.isdigit() else 0 for x in version.split("."))


def find_bindir() -> Path | None:
    """The directory holding both initdb and pg_ctl: PATH first, else the newest /usr/lib/postgresql."""
    candidates = []
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(os.path.realpath(found)).parent)
    candidates += [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                                                   key=_version_key, reverse=True)]
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl")):
            return bindir
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str], as_user: list[str], what: str, log: Path | None = None, timeout: int = 120) -> None:
    r = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
        raise RuntimeError(f"{what} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}\n{tail}")


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A started PostgreSQL server with the databases ``optuna`` and ``mlflow``; stopped afterwards."""
    bindir = find_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries not found (no initdb on PATH or in /usr/lib/postgresql/*/bin; "
                     "install the `postgresql` package)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _unavailable("psycopg2 is not installed (pip install -e '.[test]')")

    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # postgres will not run as root: run its commands as the postgres user
        import pwd

        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("running as root and there is no `postgres` system user to run the server as")
        if not shutil.which("runuser"):
            _unavailable("running as root and `runuser` is missing (needed to start postgres as user postgres)")
        as_user = ["runuser", "-u", "postgres", "--"]

    # Not under pytest's tmp dir: its parents are private to root, so the postgres user could not enter.
    root = Path(tempfile.mkdtemp(prefix="ranking_exp_pg_"))
    data, sockets, log = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    if owner is not None:
        for p in (root, sockets):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    pg_ctl = str(bindir / "pg_ctl")
    port = free_port()
    server = PostgresServer(host="127.0.0.1", port=port, user="postgres", root=root)
    started = False
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "--auth=trust", "--username=postgres",
              "--encoding=UTF8", "--no-locale", "--no-sync"], as_user, "initdb")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={sockets} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        _run([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", str(START_TIMEOUT_S), "start"],
             as_user, "pg_ctl start", log=log, timeout=START_TIMEOUT_S + 30)
        started = True
        _wait_until_accepting(server, log)
        conn = server.connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for name in DATABASES:
                    cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()
        yield server
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], as_user, "pg_ctl stop",
                     timeout=90)
        shutil.rmtree(root, ignore_errors=True)


def _wait_until_accepting(server: PostgresServer, log: Path) -> None:
    import psycopg2

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            server.connect().close()
            return
        except psycopg2.OperationalError as e:
            if time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise RuntimeError(f"PostgreSQL on port {server.port} not accepting connections "
                                   f"after {START_TIMEOUT_S}s: {e}\n{tail}") from None
            time.sleep(0.2)
