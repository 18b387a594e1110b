"""Reading MLflow (and Optuna storage) with a short-lived cache.

A page view costs at most one MLflow read: the trials of a study are read once and kept for
``ttl`` seconds. From a SQL store (``sqlite://``, ``postgresql://``) they are read with a few
read-only SELECTs (:mod:`dashboards._sql`, ~0.5 s for 10,000 trials); from an MLflow server
with ``search_runs`` in pages of 1000 (~12 s of CPU for 10,000). When the entry is stale the
old trials are served and one background thread refreshes them. Artifacts are immutable and
are cached for good; local (``file:``) artifact stores are read without MLflow.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import unquote, urlparse

from dashboards._errors import NotFoundError, StoreUnavailableError
from dashboards._sql import RunRecord, SqlReader, is_sql_uri

if TYPE_CHECKING:
    from dashboards._snapshot import Snapshots

TRIAL_FILTER = "tags.`nalu.role` = 'trial'"
PAGE_SIZE = 1000
# Params that say which slice a trial belongs to, not how it was configured.
SLICE_PARAMS = ("task", "op", "unit", "seeds", "steps")

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Trial:
    """One child run of the MLflow layout in docs/CONTRACTS.md, flattened."""

    run_id: str
    experiment_id: str
    study: str
    task: str
    op: str
    unit: str
    state: str
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    start_time: int | None = None
    artifact_uri: str | None = None

    def metric(self, name: str) -> float | None:
        value = self.metrics.get(name)
        return None if value is None or not math.isfinite(value) else value

    @property
    def config_params(self) -> dict[str, str]:
        return {k: v for k, v in self.params.items() if k not in SLICE_PARAMS}


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    experiment_id: str


def _state_of(tags: dict[str, str], status: str) -> str:
    tag = tags.get("nalu.state")
    if tag:
        return str(tag).upper()
    return {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "FAIL"}.get(status, status)


def record_of_run(run: Any) -> RunRecord:
    """An MLflow ``Run`` entity as the plain record that :mod:`dashboards._sql` reads."""
    return RunRecord(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        status=str(run.info.status),
        start_time=run.info.start_time,
        artifact_uri=run.info.artifact_uri,
        params={str(k): str(v) for k, v in run.data.params.items()},
        metrics={str(k): float(v) for k, v in run.data.metrics.items()},
        tags={str(k): str(v) for k, v in run.data.tags.items()},
    )


def trial_from_record(run: RunRecord, *, study: str) -> Trial:
    params, tags = run.params, run.tags
    return Trial(
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        study=tags.get("nalu.study", study),
        task=tags.get("nalu.task") or params.get("task", "?"),
        op=tags.get("nalu.op") or params.get("op", "?"),
        unit=tags.get("nalu.unit") or params.get("unit", "?"),
        state=_state_of(tags, run.status),
        params=params,
        metrics=run.metrics,
        tags=tags,
        start_time=run.start_time,
        artifact_uri=run.artifact_uri,
    )


def trial_from_run(run: Any, *, study: str) -> Trial:
    return trial_from_record(record_of_run(run), study=study)


def local_artifact_dir(artifact_uri: str | None) -> Path | None:
    """The folder of a ``file:`` (or plain path) artifact URI; ``None`` for remote stores."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


@dataclass
class _Entry(Generic[_T]):
    value: _T
    loaded_at: float
    refreshing: bool = False


@dataclass
class TTLCache:
    """Serve-stale-while-refreshing cache; ``clock`` is injectable so tests need no sleeps."""

    ttl: float
    clock: Callable[[], float] = time.monotonic
    _entries: dict[object, _Entry[Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _key_locks: dict[object, threading.Lock] = field(default_factory=dict)

    def get(self, key: object, load: Callable[[], _T], *, background: bool = True) -> _T:
        entry = self._entries.get(key)
        now = self.clock()
        if entry is not None and now - entry.loaded_at < self.ttl:
            return entry.value  # type: ignore[no-any-return]
        if entry is not None and background:
            self._refresh_in_background(key, load, entry)
            return entry.value  # type: ignore[no-any-return]
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:  # concurrent first views share one read
            entry = self._entries.get(key)
            if entry is not None and self.clock() - entry.loaded_at < self.ttl:
                return entry.value  # type: ignore[no-any-return]
            value = load()
            self._entries[key] = _Entry(value, self.clock())
            return value

    def _refresh_in_background(
        self, key: object, load: Callable[[], _T], entry: _Entry[Any]
    ) -> None:
        with self._lock:
            if entry.refreshing:
                return
            entry.refreshing = True

        def work() -> None:
            try:
                self._entries[key] = _Entry(load(), self.clock())
            except Exception:
                entry.refreshing = False  # the stale value stays; the next view retries

        threading.Thread(target=work, daemon=True, name="dashboard-refresh").start()

    def seed(self, key: object, value: _T, *, fresh: bool) -> None:
        """Sets an entry read elsewhere (a snapshot); not ``fresh``: refreshed on first use."""
        with self._lock:
            if key not in self._entries:
                self._entries[key] = _Entry(value, self.clock() if fresh else -math.inf)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def invalidate(self, key: object) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def store_stamp(tracking_uri: str) -> list[int] | None:
    """Size and mtime of a SQLite store and its WAL; ``None`` where changes cannot be seen."""
    path = sqlite_path(tracking_uri)
    if path is None:
        return None
    stamp: list[int] = []
    for part in (path, path.with_name(path.name + "-wal")):
        try:
            stat = part.stat()
        except FileNotFoundError:
            stamp += [-1, -1]
            continue
        stamp += [stat.st_size, stat.st_mtime_ns]
    return stamp


def check_sqlite_exists(uri: str, *, what: str, field_name: str) -> None:
    """MLflow and Optuna both create a missing SQLite file; a viewer must not."""
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise StoreUnavailableError(
            f"{what} {uri!r} does not exist (no file at {path}); check {field_name}",
            field=field_name,
        )


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    first = text[0] if text else type(err).__name__
    return f"{type(err).__name__}: {first[:300]}"


class MlflowSource:
    """The MLflow side of the dashboard: experiments, trials, histories and artifacts."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        ttl: float = 30.0,
        ui_url: str | None = None,
        snapshots: Snapshots | None = None,
        read_sql: bool = True,
    ) -> None:
        # An unreachable server must give a page within seconds, not after MLflow's
        # default of 7 retries with exponential back-off.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.tracking_uri = tracking_uri
        self.ui_url = ui_url or (
            tracking_uri.rstrip("/")
            if urlparse(tracking_uri).scheme in ("http", "https")
            else None
        )
        self.cache = TTLCache(ttl=ttl)
        self._artifacts: dict[tuple[str, str], Any] = {}
        self._client: Any = None
        # SQL stores are read directly (fast, no MLflow import); MLflow servers with the client
        direct = read_sql and is_sql_uri(tracking_uri)
        self.sql: SqlReader | None = SqlReader(tracking_uri) if direct else None
        self._roots: dict[str, str | None] = {}  # run_id -> artifact_uri, from reads
        self.snapshots = snapshots
        self.last_save: threading.Thread | None = None  # the latest snapshot write

    @property
    def client(self) -> Any:
        if self._client is None:
            check_sqlite_exists(
                self.tracking_uri, what="MLflow tracking store", field_name="tracking_uri"
            )
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _call(self, what: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except (StoreUnavailableError, NotFoundError):
            raise
        except Exception as err:
            raise StoreUnavailableError(
                f"cannot {what} from MLflow at {self.tracking_uri}: {_short(err)}",
                field="tracking_uri",
            ) from err

    def run_url(self, experiment_id: str, run_id: str) -> str | None:
        if self.ui_url is None:
            return None
        # the classic runs view: MLflow 3.x otherwise opens its GenAI view (docs/tracking.md)
        return (
            f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"
            "?workflowType=machine_learning"
        )

    def experiments(self) -> list[Experiment]:
        def load() -> list[Experiment]:
            found = self._call("list experiments", self._experiments)
            return [Experiment(name, exp_id) for name, exp_id in found if name != "Default"]

        return self.cache.get("experiments", load)

    def _experiments(self) -> list[tuple[str, str]]:
        if self.sql is not None:
            self._check_store()
            return self.sql.experiments()
        return [(e.name, e.experiment_id) for e in self.client.search_experiments()]

    def _check_store(self) -> None:
        check_sqlite_exists(
            self.tracking_uri, what="MLflow tracking store", field_name="tracking_uri"
        )

    def experiment(self, study: str) -> Experiment:
        for exp in self.experiments():
            if exp.name == study:
                return exp
        found = self._call("find the study", lambda: self._experiment_by_name(study))
        if found is None:
            raise NotFoundError(f"no study named {study!r} in {self.tracking_uri}", field="study")
        self.cache.invalidate("experiments")  # a new study appeared since the list was read
        return found

    def _experiment_by_name(self, study: str) -> Experiment | None:
        if self.sql is not None:
            self._check_store()
            ids = [exp_id for name, exp_id in self.sql.experiments() if name == study]
            return Experiment(study, ids[0]) if ids else None
        exp = self.client.get_experiment_by_name(study)
        return None if exp is None else Experiment(exp.name, exp.experiment_id)

    def trials(self, study: str) -> list[Trial]:
        exp = self.experiment(study)
        key = ("trials", exp.experiment_id)
        if self.snapshots is not None and key not in self.cache:
            # the last read, served at once (and refreshed behind it unless provably current)
            snap = self.snapshots.load(exp.experiment_id)
            if snap is not None:
                self._roots.update((t.run_id, t.artifact_uri) for t in snap[0])
                self.cache.seed(key, snap[0], fresh=snap[1])
        return self.cache.get(key, lambda: self._load(exp))

    def _load(self, exp: Experiment) -> list[Trial]:
        def read_sql(sql: SqlReader) -> list[Trial]:
            self._check_store()
            runs = sql.runs(exp.experiment_id, role_key="nalu.role", role="trial")
            return [trial_from_record(run, study=exp.name) for run in runs]

        def read() -> list[Trial]:
            if self.sql is not None:
                return read_sql(self.sql)
            trials: list[Trial] = []
            token: str | None = None
            while True:
                page = self.client.search_runs(
                    [exp.experiment_id],
                    filter_string=TRIAL_FILTER,
                    max_results=PAGE_SIZE,
                    page_token=token,
                )
                trials.extend(trial_from_run(run, study=exp.name) for run in page)
                token = page.token
                if not token:
                    return trials

        stamp = store_stamp(self.tracking_uri)  # before the read: a later write makes it stale
        trials = self._call(f"read the trials of {exp.name!r}", read)
        self._roots.update((t.run_id, t.artifact_uri) for t in trials)
        snapshots = self.snapshots
        if snapshots is not None:  # off the page's path: ~0.2 s for 10,000 trials
            save = threading.Thread(
                target=snapshots.save,
                args=(exp.experiment_id, trials),
                kwargs={"stamp": stamp},
                daemon=True,
                name="dashboard-snapshot",
            )
            save.start()  # published only once started: a reader may join it at any moment
            self.last_save = save
        return trials

    def trial(self, run_id: str) -> tuple[Trial, str]:
        if self.sql is not None:
            sql = self.sql
            self._check_store()
            run = self._call("read the run", lambda: sql.run(run_id))
            exp_id = run.experiment_id
            name = self._call("read the run's study", lambda: sql.experiment_name(exp_id))
        else:
            record = record_of_run(self._call("read the run", lambda: self._get_run(run_id)))
            exp = self._call(
                "read the run's study", lambda: self.client.get_experiment(record.experiment_id)
            )
            run, name = record, exp.name
        self._roots[run_id] = run.artifact_uri
        return trial_from_record(run, study=name), name

    def _get_run(self, run_id: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_run(run_id)
        except MlflowException as err:
            if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code) or "not found" in str(err):
                raise NotFoundError(f"no MLflow run {run_id!r}", field="run_id") from err
            raise

    def history(self, run_id: str, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
        def read() -> dict[str, list[tuple[int, float]]]:
            if self.sql is not None:
                self._check_store()
                return self.sql.history(run_id, keys)
            out: dict[str, list[tuple[int, float]]] = {}
            for key in keys:
                points = self.client.get_metric_history(run_id, key)
                out[key] = sorted((int(m.step), float(m.value)) for m in points)
            return out

        return self.cache.get(
            ("history", run_id, tuple(keys)), lambda: self._call("read metric history", read)
        )

    def artifact_names(self, run_id: str) -> list[str]:
        def read() -> list[str]:
            local = self._local_root(run_id)
            if local is not None:
                return sorted(p.name for p in local.iterdir()) if local.is_dir() else []
            return sorted(f.path for f in self.client.list_artifacts(run_id))

        return self.cache.get(("artifacts", run_id), lambda: self._call("list artifacts", read))

    def artifact(self, run_id: str, path: str, *, reader: Callable[[Path], _T]) -> _T | None:
        """Reads one artifact with ``reader``; ``None`` when the run has no such file."""
        key = (run_id, path)
        if key not in self._artifacts:
            try:
                local = self._local_root(run_id)
                if local is not None:
                    self._artifacts[key] = reader(local / path)
                    return self._artifacts[key]  # type: ignore[no-any-return]
                with tempfile.TemporaryDirectory(prefix="nalu-dash-") as tmp:
                    local = self.client.download_artifacts(run_id, path, tmp)
                    self._artifacts[key] = reader(Path(local))
            except Exception:
                # A missing or unreadable artifact hides one panel, not the page.
                self._artifacts[key] = None
        return self._artifacts[key]  # type: ignore[no-any-return]

    def _local_root(self, run_id: str) -> Path | None:
        """The run's artifact folder when it is local (read without MLflow), else ``None``."""
        if run_id not in self._roots:
            return None
        return local_artifact_dir(self._roots[run_id])


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_parquet_records(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return list(pq.read_table(path).to_pylist())


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()
