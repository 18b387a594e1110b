"""Shared fixtures for the study tests: a real PostgreSQL database and a real MLflow server.

Nothing here is mocked. Other test modules reuse these fixtures:

- ``postgres_url`` (function scope): a freshly created, uniquely named database on the local
  PostgreSQL (``127.0.0.1:5432``, user ``postgres``, trust auth, or ``NALU_TEST_PG_*``); yields
  its SQLAlchemy URL and drops the database afterwards, even when the test failed.
- ``make_postgres_db`` (function scope): a factory for more such databases in one test.
- ``mlflow_server`` (module scope): ``mlflow server`` on loopback with a PostgreSQL backend store
  in its own database, ``--workers 1`` and job execution off (about 0.5 GiB, up after ~13 s).
  It is an :class:`MlflowServer`: ``.uri`` is ``http://127.0.0.1:PORT``; ``.stop()`` and
  ``.start()`` take it down and bring it back on the same port and database (outage tests).
  Tests that use it should be marked ``integration``.
- ``cluster`` (module scope): a real Ray head on loopback (8 logical CPUs, a free GCS port, no
  dashboard), this process connected as its driver; tests add worker nodes to it.
- ``sqlite_tracking_uri`` (session scope): a factory ``(folder) -> "sqlite:////.../mlflow.db"``
  whose database is a copy of one migrated once per session: MLflow's migrations of a fresh
  SQLite file take 10-15 s on this box, a copy takes milliseconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_HOST = os.environ.get("NALU_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("NALU_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("NALU_TEST_PG_USER", "postgres")


def free_port() -> int:
    """A TCP port that was free on loopback a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg2

    conn = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run inside a transaction
    return conn


def create_postgres_db(prefix: str = "nalu_test") -> tuple[str, str]:
    """Creates a uniquely named database; returns ``(name, sqlalchemy_url)``."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = _admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return name, f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


def drop_postgres_db(name: str) -> None:
    """Drops ``name``, ending any session still connected to it (a killed server's pool)."""
    conn = _admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@pytest.fixture
def make_postgres_db() -> Iterator[Callable[[], str]]:
    """Factory: each call creates one more database; all are dropped at teardown."""
    names: list[str] = []

    def make() -> str:
        name, url = create_postgres_db()
        names.append(name)
        return url

    yield make
    for name in names:
        drop_postgres_db(name)


@pytest.fixture
def postgres_url(make_postgres_db: Callable[[], str]) -> str:
    """SQLAlchemy URL of a fresh PostgreSQL database, dropped after the test."""
    return make_postgres_db()


def _mlflow_executable() -> str:
    found = Path(sys.executable).with_name("mlflow")
    if found.exists():
        return str(found)
    on_path = shutil.which("mlflow")
    if on_path is None:
        raise RuntimeError("the mlflow executable was not found next to python or on PATH")
    return on_path


class MlflowServer:
    """A real ``mlflow server`` process that can be stopped and restarted on the same port."""

    def __init__(self, *, backend_uri: str, artifacts_dir: Path, log_path: Path) -> None:
        self.backend_uri = backend_uri
        self.artifacts_dir = artifacts_dir
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 90.0) -> None:
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        cmd = [
            _mlflow_executable(),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            self.backend_uri,
            "--artifacts-destination",
            str(self.artifacts_dir),
        ]
        with self.log_path.open("ab") as log:
            # Own process group: stop() must reach the uvicorn worker as well.
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout}s; see {self.log_path}")

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM (or, with ``graceful=False``, SIGKILL: a crash) to the server's group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM if graceful else signal.SIGKILL)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow server on loopback with a PostgreSQL backend, for one test module."""
    root = tmp_path_factory.mktemp("mlflow_server")
    name, url = create_postgres_db("nalu_mlflow")
    server = MlflowServer(
        backend_uri=url, artifacts_dir=root / "artifacts", log_path=root / "server.log"
    )
    try:
        server.start()
        yield server
    finally:
        server.stop(graceful=False)  # nothing to flush; a graceful stop takes seconds
        drop_postgres_db(name)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # runs the migrations
    return path


@pytest.fixture(scope="session")
def sqlite_tracking_uri(_sqlite_template: Path) -> Callable[[Path], str]:
    """Factory: puts a migrated, empty MLflow SQLite store at ``folder/mlflow.db``."""

    def make(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_sqlite_template, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return make


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A Ray head (8 logical CPUs) on loopback for one module; this process is its driver."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    head = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 8, "gcs_server_port": free_port(), "include_dashboard": False},
    )
    try:
        ray.init(address=head.address, log_to_driver=False, configure_logging=False)
        yield head
    finally:
        ray.shutdown()
        head.shutdown()  # type: ignore[no-untyped-call]
