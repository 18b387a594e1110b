"""What the workdir and the Optuna storage say about studies: list, status, summaries.

Each study folder ``<workdir>/<name>/`` holds ``spec.yaml`` (the validated spec, as launched)
and ``study.json`` (settings, launches, driver pid, elapsed seconds). Trial states and values
come from the Optuna storage alone, one Optuna study per task × op named ``<name>.<task>-<op>``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from study._errors import SettingsError, StudyError
from study._settings import redact
from study._stores import first_use_lock

RECORD = "study.json"
SPEC = "spec.yaml"
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


def optuna_study_name(study: str, key: str) -> str:
    return f"{study}.{key}"


def read_record(study_dir: Path) -> dict[str, Any]:
    path = study_dir / RECORD
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise StudyError(f"no study at {study_dir} (no {RECORD})", field="name") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise StudyError(f"cannot read the study record: {err}", field=str(path)) from err
    if not isinstance(data, dict):
        raise StudyError("does not hold a study record", field=str(path))
    for key, kinds in _RECORD_FIELDS.items():
        if key in data and not isinstance(data[key], kinds):
            raise StudyError(
                f"corrupt record: {key!r} is a {type(data[key]).__name__}", field=str(path)
            )
    if not isinstance(data.get("name"), str):
        raise StudyError("corrupt record: no study name", field=str(path))
    return data


# What a study record holds, by type: a hand-edited or half-restored file fails here, with
# its path, instead of as a traceback in whichever command reads the field
_RECORD_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "created": str,
    "status": str,
    "tasks": list,
    "launches": list,
    "budget": dict,
    "settings": dict,
    "elapsed_s": (int, float),
    "heartbeat": (int, float),
    "driver_pid": int,
    "driver_host": str,
}


def write_record(study_dir: Path, record: Mapping[str, Any]) -> None:
    """Atomic: a driver killed mid-write leaves the previous record, never half a file."""
    study_dir.mkdir(parents=True, exist_ok=True)
    tmp = study_dir / f".{RECORD}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, study_dir / RECORD)


def driver_alive(record: Mapping[str, Any]) -> bool:
    """Whether the recorded driver still runs (only knowable on the host that launched it)."""
    pid = record.get("driver_pid")
    if not isinstance(pid, int) or record.get("driver_host") != platform.node():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    # a zombie (killed, not yet reaped) no longer drives anything
    return not (stat.exists() and stat.read_text().split(") ", 1)[-1].startswith("Z"))


def effective_status(record: Mapping[str, Any]) -> str:
    """``running`` only while its driver lives; a dead ``running`` one was ``interrupted``."""
    status = str(record.get("status", "unknown"))
    if status == "running" and not driver_alive(record):
        return "interrupted"
    return status


def elapsed_seconds(record: Mapping[str, Any]) -> float:
    """Seconds of launch wall time so far, including the one in progress."""
    total = float(record.get("elapsed_s", 0.0))
    if record.get("status") == "running" and driver_alive(record):
        total += max(0.0, time.time() - float(record.get("heartbeat", time.time())))
    return total


def load_task_studies(
    storage: optuna.storages.BaseStorage, study: str, keys: Iterable[str]
) -> dict[str, optuna.Study | None]:
    out: dict[str, optuna.Study | None] = {}
    for key in keys:
        try:
            out[key] = optuna.load_study(study_name=optuna_study_name(study, key), storage=storage)
        except KeyError:
            out[key] = None
    return out


@dataclass(frozen=True, kw_only=True)
class TaskSummary:
    """One task × op: trial counts by state and its best COMPLETE trial."""

    key: str
    counts: Mapping[str, int]
    best: FrozenTrial | None = None

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s.name, 0) for s in COUNTED)

    def row(self) -> dict[str, Any]:
        best = self.best
        attrs = best.user_attrs if best is not None else {}
        return {
            "task": self.key,
            "counts": dict(self.counts),
            "best_trial": None if best is None else best.number,
            "objective": None if best is None else best.value,
            "success_rate": attrs.get("success_rate"),
            "success_ci": [attrs.get("success_lower"), attrs.get("success_upper")],
            "extrapolation_mse_median": attrs.get("extrapolation_mse_median"),
            "params": {} if best is None else dict(best.params),
        }


def summarize_task(key: str, study: optuna.Study | None) -> TaskSummary:
    if study is None:
        return TaskSummary(key=key, counts={})
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = max(complete, key=lambda t: float(t.value), default=None)  # type: ignore[arg-type]
    return TaskSummary(key=key, counts=dict(counts), best=best)


def summarize(
    storage: optuna.storages.BaseStorage, study: str, keys: Iterable[str]
) -> list[TaskSummary]:
    return [summarize_task(k, s) for k, s in load_task_studies(storage, study, keys).items()]


@dataclass(frozen=True, kw_only=True)
class StudyStatus:
    name: str
    status: str
    folder: Path
    tasks: list[TaskSummary] = field(default_factory=list)
    num_samples: int | None = None
    time_limit: float | None = None
    elapsed: float = 0.0
    launches: int = 0

    @property
    def totals(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for task in self.tasks:
            total.update(task.counts)
        return dict(total)

    @property
    def budget_total(self) -> int | None:
        return None if self.num_samples is None else self.num_samples * len(self.tasks)

    @property
    def finished(self) -> int:
        return sum(t.finished for t in self.tasks)

    @property
    def remaining_trials(self) -> int | None:
        if self.num_samples is None:
            return None
        return sum(max(0, self.num_samples - t.finished) for t in self.tasks)

    @property
    def remaining_seconds(self) -> float | None:
        return None if self.time_limit is None else max(0.0, self.time_limit - self.elapsed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "folder": str(self.folder),
            "launches": self.launches,
            "trials": self.totals,
            "budget": {
                "num_samples_per_task": self.num_samples,
                "finished": self.finished,
                "remaining_trials": self.remaining_trials,
                "time_limit_s": self.time_limit,
                "elapsed_s": round(self.elapsed, 1),
                "remaining_s": None
                if self.remaining_seconds is None
                else round(self.remaining_seconds, 1),
            },
            "tasks": [t.row() for t in self.tasks],
        }


def sqlite_path(url: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (``None`` for other URLs, or an in-memory one)."""
    if not url.startswith("sqlite:///"):
        return None
    rest = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if rest in ("", ":memory:") else Path(rest)


def check_stores(settings: Any) -> None:
    """Refuses stores that cannot be reached, before anything is written (exit code 2).

    A database server is asked for one connection (5 s at most); a tracking server for its
    ``/health``; a SQLite file needs a folder path that a file does not block.
    """
    check_store(settings.storage, field="storage")
    check_store(settings.tracking_uri, field="tracking_uri")


def check_store(url: str, *, field: str, timeout: float = 5.0) -> None:
    """Whether the store at ``url`` can be reached; a :class:`SettingsError` naming ``field``.

    Database URLs get one connection, HTTP tracking servers one ``/health`` request; a SQLite
    file needs a folder path that is not blocked by a file. Nothing is created.
    """
    import urllib.error
    import urllib.request

    shown = redact(url)
    path = sqlite_path(url)
    if path is not None:
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise SettingsError(f"{shown}: {parent} is not a folder", field=field)
                break
        return
    if url.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout):
                return
        except urllib.error.HTTPError:
            return  # it answers (a proxy or an auth layer may refuse /health)
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise SettingsError(f"cannot reach {shown}: {reason}", field=field) from None
    if "://" not in url or url.startswith(("file:", "sqlite:")):
        return
    import sqlalchemy
    import sqlalchemy.exc

    args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        args = {"connect_timeout": int(timeout)}
    try:
        engine = sqlalchemy.create_engine(url, connect_args=args, poolclass=sqlalchemy.NullPool)
    except (sqlalchemy.exc.ArgumentError, ImportError, ValueError) as err:
        raise SettingsError(f"{shown}: not a usable database URL: {err}", field=field) from None
    try:
        with engine.connect():
            return
    except sqlalchemy.exc.SQLAlchemyError as err:
        detail = " ".join(str(getattr(err, "orig", err)).split())
        raise SettingsError(f"cannot reach {shown}: {detail}", field=field) from None
    finally:
        engine.dispose()


_CONCURRENT_CREATE = ("already exists", "alembic_version", "database is locked")


def open_storage(url: str, *, attempts: int = 3) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage at ``url``, tolerant of a concurrent first open.

    Two processes opening the same new SQLite file at once (a launch creating it while
    ``nalu-study status`` reads it) both run Optuna's CREATE TABLE and its alembic stamp;
    the loser fails ("table ... already exists", "UNIQUE constraint failed: alembic_version",
    "database is locked"), and a second open finds the tables made. A SQLite file is opened
    under :func:`first_use_lock`, so launches that share a workdir's ``optuna.db`` never race;
    the retries remain for readers of a store made by an older version without the lock.
    """
    import sqlalchemy.exc

    for attempt in range(1, attempts + 1):
        try:
            with first_use_lock(url):
                return optuna.storages.RDBStorage(url)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as err:
            raced = any(m in str(err) for m in _CONCURRENT_CREATE)
            if not raced or attempt == attempts:
                raise
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


def open_storage_readonly(url: str) -> optuna.storages.RDBStorage | None:
    """The storage at ``url`` for reading, or ``None`` where it holds nothing yet.

    A read never creates anything: a missing SQLite file stays missing (SQLAlchemy would
    create it), and Optuna's tables are not created in an empty database.
    """
    import sqlalchemy
    import sqlalchemy.exc

    path = sqlite_path(url)
    if path is not None and not path.is_file():
        return None
    check_store(url, field="storage")
    try:
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.NullPool)
        try:
            # Optuna's "version_info" row is written on its first open: no row, no study yet
            tables = sqlalchemy.inspect(engine)
            if not (tables.has_table("studies") and tables.has_table("alembic_version")):
                return None
        finally:
            engine.dispose()
        return optuna.storages.RDBStorage(url, skip_table_creation=True)
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError) as err:
        raise StudyError(f"cannot read the Optuna storage: {err}", field="storage") from err


def study_status(study_dir: Path, *, storage_url: str | None = None) -> StudyStatus:
    """Counts, best trials and budget of the study in ``study_dir``; writes nothing."""
    import sqlalchemy.exc

    record = read_record(study_dir)
    keys = [str(k) for k in record.get("tasks", [])]
    url = storage_url or record.get("settings", {}).get("storage")
    tasks: list[TaskSummary] = []
    storage = open_storage_readonly(str(url)) if url else None
    if storage is not None:
        try:
            tasks = summarize(storage, str(record["name"]), keys)
        except sqlalchemy.exc.SQLAlchemyError:
            tasks = []  # no Optuna tables yet: no trials yet
    if not tasks:
        tasks = [TaskSummary(key=k, counts={}) for k in keys]
    budget = record.get("budget", {})
    return StudyStatus(
        name=str(record["name"]),
        status=effective_status(record),
        folder=study_dir,
        tasks=tasks,
        num_samples=budget.get("num_samples"),
        time_limit=budget.get("time_limit"),
        elapsed=elapsed_seconds(record),
        launches=len(record.get("launches", [])),
    )


def list_studies(workdir: Path) -> list[dict[str, Any]]:
    """Every study folder under ``workdir``, newest first, from the records alone (fast)."""
    rows: list[dict[str, Any]] = []
    if not workdir.is_dir():
        return rows
    for record_path in workdir.glob(f"*/{RECORD}"):
        try:
            record = read_record(record_path.parent)
            budget, launches = record.get("budget", {}), record.get("launches", [])
            elapsed = round(elapsed_seconds(record), 1)
        except (StudyError, TypeError, ValueError) as err:
            # one broken study does not hide the others: it is listed as such
            rows.append(
                {
                    "name": record_path.parent.name,
                    "status": "corrupt",
                    "tasks": 0,
                    "created": "",
                    "launches": 0,
                    "elapsed_s": 0.0,
                    "storage": "",
                    "error": redact(str(err)),
                }
            )
            continue
        del budget, launches
        rows.append(
            {
                "name": record.get("name", record_path.parent.name),
                "status": effective_status(record),
                "tasks": len(record.get("tasks", [])),
                "created": record.get("created", ""),
                "launches": len(record.get("launches", [])),
                "elapsed_s": elapsed,
                "storage": redact(str(record.get("settings", {}).get("storage", ""))),
            }
        )
    return sorted(rows, key=lambda r: str(r["created"]), reverse=True)


def format_ci(lower: object, upper: object) -> str:
    if not isinstance(lower, int | float) or not isinstance(upper, int | float):
        return "-"
    return f"[{lower:.2f}, {upper:.2f}]"


def format_number(value: object, spec: str = ".3g") -> str:
    if isinstance(value, int | float) and math.isfinite(float(value)):
        return format(value, spec)
    return "-"
