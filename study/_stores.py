"""The embedded stores of a workdir, and creating them safely from several processes.

Since issue 18 a workdir holds one MLflow store and one Optuna storage for all its studies:
``<workdir>/mlflow.db`` and ``<workdir>/optuna.db``. Studies launched before that keep their
stores in their own folder (``<workdir>/<study>/mlflow.db``, ``optuna.db``); their
``study.json`` names them, so ``status``, ``export`` and ``resume`` still read them, and
:func:`study_stores` finds them for the dashboard.

Two launches into one workdir may open a fresh SQLite file at the same moment. MLflow's
alembic migrations and Optuna's CREATE TABLE both race on a new file (stack notes: 8
concurrent first users fail), so the first use of a SQLite store runs under an exclusive
``flock`` on a lock file next to it; later users find the schema made and pass quickly.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LEGACY_FILES = ("mlflow.db", "optuna.db")


def sqlite_file(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (MLflow's or SQLAlchemy's), else ``None``."""
    if not url.startswith("sqlite:"):
        return None
    path = url.split("///", 1)[1] if "///" in url else ""
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def first_use_lock(url: str) -> Iterator[None]:
    """Holds an exclusive lock across processes while a SQLite store at ``url`` is set up.

    A no-op for servers and databases (PostgreSQL creates its schema transactionally).
    """
    path = sqlite_file(url)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def study_stores(workdir: Path) -> dict[str, dict[str, str]]:
    """The stores of every study under ``workdir`` by name, from each ``study.json``.

    ``{"name": {"tracking_uri": ..., "storage": ...}}``; a study without recorded settings
    gets the workdir's defaults.
    """
    from study._settings import default_storage, default_tracking_uri

    out: dict[str, dict[str, str]] = {}
    if not workdir.is_dir():
        return out
    for record_path in sorted(workdir.glob("*/study.json")):
        try:
            record: Any = json.loads(record_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(record, dict):
            continue
        settings = record.get("settings")
        if not isinstance(settings, dict):
            settings = {}
        name = str(record.get("name", record_path.parent.name))
        out[name] = {
            "tracking_uri": str(settings.get("tracking_uri") or default_tracking_uri(workdir)),
            "storage": str(settings.get("storage") or default_storage(workdir)),
        }
    return out


def legacy_studies(workdir: Path) -> list[str]:
    """Studies whose MLflow store is still their own folder's ``mlflow.db`` (old layout)."""
    out = []
    for name, stores in study_stores(workdir).items():
        db = sqlite_file(stores["tracking_uri"])
        if db is not None and db.parent.resolve() == (workdir / name).resolve():
            out.append(name)
    return out
