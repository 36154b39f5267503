"""Throwaway servers for the system tests: a PostgreSQL cluster in a temporary folder, and an MLflow
tracking server, both on 127.0.0.1 and gone when their `with` block ends."""
from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

PG_PROGRAMS = ("initdb", "pg_ctl", "postgres", "psql")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Optional[Path]:
    """The folder of PostgreSQL's server programs: where `pg_config` says, else Debian's and Ubuntu's
    /usr/lib/postgresql/VERSION/bin (the newest), else wherever `pg_ctl` is on the PATH."""
    candidates = []
    if shutil.which("pg_config"):
        said = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(said.stdout.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).resolve().parent)
    return next((c for c in candidates if all((c / name).is_file() for name in PG_PROGRAMS)), None)


class PostgresCluster:
    """A cluster of its own: initdb in a temporary folder, a superuser `mlflow` with a random password,
    TCP on 127.0.0.1 only (its socket in that folder), no fsync (nothing here must survive a crash).
    PostgreSQL refuses to run as root, so as root the server runs as the `postgres` user."""

    USER = "mlflow"

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.password = secrets.token_hex(12)
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="sweep-pg-"))  # not under pytest's root-only folders
        self.data = self.folder / "data"
        self.as_owner: list = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
            self.as_owner = ["runuser", "-u", "postgres", "--"]

    def url(self, database: str = "postgres", driver: str = "") -> str:
        """postgresql://... for psql and libpq; driver "psycopg" gives SQLAlchemy's (and MLflow's) form."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _owner_runs(self, *command) -> None:
        done = subprocess.run([*self.as_owner, *map(str, command)], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stdout}{done.stderr}"
                               f"{self._log()}")

    def _log(self) -> str:
        log = self.folder / "log"
        return f"\n--- server log ---\n{log.read_text()[-3000:]}" if log.exists() else ""

    def start(self) -> None:
        password_file = self.folder / "password"
        password_file.write_text(self.password)
        if self.as_owner:
            shutil.chown(password_file, "postgres", "postgres")
        self._owner_runs(self.bindir / "initdb", "-D", self.data, "-U", self.USER, "--pwfile", password_file,
                         "--auth", "scram-sha-256", "-E", "UTF8", "--locale", "C", "--no-sync")
        password_file.unlink()
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.folder} "
                   f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        self._owner_runs(self.bindir / "pg_ctl", "-D", self.data, "-l", self.folder / "log", "-o", options,
                         "-w", "-t", "60", "start")

    def create_database(self, name: str) -> str:
        """A new database; its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name, driver="psycopg")

    def psql(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bindir / "psql"), *args], capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.as_owner, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running cluster, stopped and removed afterwards; the calling test is skipped with the reason
    where PostgreSQL's server programs are not installed."""
    import pytest

    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip(f"PostgreSQL's server programs ({', '.join(PG_PROGRAMS)}) are not installed; "
                    f"README's test command installs them")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no `postgres` user to run PostgreSQL as")
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, artifacts: Path, startup_seconds: float = 120) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 on that backend store; its URL once /health answers."""
    port = free_port()
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    log = open(Path(artifacts).parent / f"mlflow-server-{port}.log", "w+")
    # Without MLflow's job executor (GenAI jobs: scorers, trace roll-ups), which the tracking of
    # training runs never uses and which takes the server 10 s or more longer to start here.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                             "--backend-store-uri", backend_store_uri, "--artifacts-destination", str(artifacts)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + startup_seconds
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"mlflow server did not start:\n{log.read()[-3000:]}") from None
                time.sleep(0.25)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):  # the server and its uvicorn process: every request
            os.killpg(proc.pid, signal.SIGKILL)        # was committed, and a graceful stop takes seconds
        proc.wait()
        log.close()
