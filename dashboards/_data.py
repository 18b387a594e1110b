"""Reading MLflow (and Optuna storage) with a short-lived cache.

A page view costs at most one MLflow query: the trials of a study are read once with
``search_runs`` in pages of 1000 and kept for ``ttl`` seconds. When the entry is stale the
old trials are served and one background thread refreshes them, so a 10,000-trial study only
pays its read time on the very first view. Artifacts are immutable and are cached for good.
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
from typing import Any, Generic, TypeVar
from urllib.parse import urlparse

from dashboards._errors import NotFoundError, StoreUnavailableError

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


def _state_of(run: Any) -> str:
    tag = run.data.tags.get("nalu.state")
    if tag:
        return str(tag).upper()
    return {"FINISHED": "COMPLETE", "FAILED": "FAIL", "KILLED": "FAIL"}.get(
        run.info.status, str(run.info.status)
    )


def trial_from_run(run: Any, *, study: str) -> Trial:
    params = {str(k): str(v) for k, v in run.data.params.items()}
    tags = {str(k): str(v) for k, v in run.data.tags.items()}
    return Trial(
        run_id=run.info.run_id,
        experiment_id=run.info.experiment_id,
        study=tags.get("nalu.study", study),
        task=tags.get("nalu.task") or params.get("task", "?"),
        op=tags.get("nalu.op") or params.get("op", "?"),
        unit=tags.get("nalu.unit") or params.get("unit", "?"),
        state=_state_of(run),
        params=params,
        metrics={str(k): float(v) for k, v in run.data.metrics.items()},
        tags=tags,
        start_time=run.info.start_time,
        artifact_uri=run.info.artifact_uri,
    )


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

    def invalidate(self, key: object) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    path = uri[len("sqlite:///") :] if uri.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


def check_sqlite_exists(uri: str, *, what: str, field_name: str) -> None:
    """MLflow and Optuna both create a missing SQLite file; a viewer must not."""
    path = _sqlite_path(uri)
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

    def __init__(self, tracking_uri: str, *, ttl: float = 30.0, ui_url: str | None = None) -> None:
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
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def experiments(self) -> list[Experiment]:
        def load() -> list[Experiment]:
            found = self._call("list experiments", lambda: self.client.search_experiments())
            return [Experiment(e.name, e.experiment_id) for e in found if e.name != "Default"]

        return self.cache.get("experiments", load)

    def experiment(self, study: str) -> Experiment:
        for exp in self.experiments():
            if exp.name == study:
                return exp
        exp = self._call("find the study", lambda: self.client.get_experiment_by_name(study))
        if exp is None:
            raise NotFoundError(f"no study named {study!r} in {self.tracking_uri}", field="study")
        self.cache.invalidate("experiments")  # a new study appeared since the list was read
        return Experiment(exp.name, exp.experiment_id)

    def trials(self, study: str) -> list[Trial]:
        exp = self.experiment(study)
        return self.cache.get(("trials", exp.experiment_id), lambda: self._load(exp))

    def _load(self, exp: Experiment) -> list[Trial]:
        def read() -> list[Trial]:
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

        return self._call(f"read the trials of {exp.name!r}", read)

    def trial(self, run_id: str) -> tuple[Trial, str]:
        run = self._call("read the run", lambda: self._get_run(run_id))
        exp = self._call(
            "read the run's study", lambda: self.client.get_experiment(run.info.experiment_id)
        )
        return trial_from_run(run, study=exp.name), exp.name

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
            return sorted(f.path for f in self.client.list_artifacts(run_id))

        return self.cache.get(("artifacts", run_id), lambda: self._call("list artifacts", read))

    def artifact(self, run_id: str, path: str, *, reader: Callable[[Path], _T]) -> _T | None:
        """Reads one artifact with ``reader``; ``None`` when the run has no such file."""
        key = (run_id, path)
        if key not in self._artifacts:
            try:
                with tempfile.TemporaryDirectory(prefix="nalu-dash-") as tmp:
                    local = self.client.download_artifacts(run_id, path, tmp)
                    self._artifacts[key] = reader(Path(local))
            except Exception:
                # A missing or unreadable artifact hides one panel, not the page.
                self._artifacts[key] = None
        return self._artifacts[key]  # type: ignore[no-any-return]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_parquet_records(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return list(pq.read_table(path).to_pylist())


def read_bytes(path: Path) -> bytes:
    return path.read_bytes()
