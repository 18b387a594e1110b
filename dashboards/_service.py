"""The dashboard's one entry point for data: every page and API call goes through here."""

from __future__ import annotations

import math
import multiprocessing
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from dashboards import _views as views
from dashboards._data import (
    Experiment,
    MlflowSource,
    Trial,
    read_json,
    read_parquet_records,
)
from dashboards._errors import DashboardError
from dashboards._importance import (
    DEFAULT_EVALUATOR,
    check_evaluator,
    importance,
    preload,
    watch_parent,
)
from dashboards._models import (
    CurvePoint,
    DivisionCurve,
    DivisionResponse,
    ImportanceResponse,
    LeaderboardResponse,
    MadsenTableResponse,
    ParallelResponse,
    ScatterResponse,
    SeedRow,
    StudiesResponse,
    StudySummary,
    TrialResponse,
)
from dashboards._snapshot import Snapshots
from study import redact

_V = TypeVar("_V")

CURVE_KEYS = (
    "success_rate",
    "interpolation_mse_median",
    "extrapolation_mse_median",
    "extrapolation_mse_q25",
    "extrapolation_mse_q75",
)


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _finite(value)
    return int(number) if number is not None else None


def _bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def seed_rows(records: list[dict[str, Any]]) -> list[SeedRow]:
    return [
        SeedRow(
            seed=int(r.get("seed", i)),
            interpolation_mse=_finite(r.get("interpolation_mse")),
            extrapolation_mse=_finite(r.get("extrapolation_mse")),
            success=_bool(r.get("success")),
            solved_at=_int(r.get("solved_at")),
            sparsity_error=_finite(r.get("sparsity_error")),
            diverged=_bool(r.get("diverged")),
        )
        for i, r in enumerate(records)
    ]


class Dashboard:
    """Reads one tracking store (and optionally one Optuna storage) for all views."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        storage: str | None = None,
        ttl: float = 30.0,
        ui_url: str | None = None,
        snapshot_dir: Path | None = None,
    ) -> None:
        snapshots = Snapshots(snapshot_dir, tracking_uri) if snapshot_dir is not None else None
        self.source = MlflowSource(tracking_uri, ttl=ttl, ui_url=ui_url, snapshots=snapshots)
        self.storage = storage
        # Importance can take seconds to minutes (fANOVA fits a forest) of pure-Python work:
        # on a thread it would hold the GIL and slow every page 2-5x meanwhile, so it runs in
        # one worker process (spawned: the server has threads). Results kept per read.
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=watch_parent,
            initargs=(os.getpid(),),
        )
        self._importance: dict[tuple[object, ...], Future[ImportanceResponse]] = {}
        self._lock = threading.Lock()
        # Views are pure functions of one read of the trials: keep each until the read changes.
        self._views: dict[tuple[object, ...], tuple[list[Trial], Any]] = {}

    @property
    def tracking_uri(self) -> str:
        return self.source.tracking_uri

    def run_url(self, trial: Trial) -> str | None:
        return self.source.run_url(trial.experiment_id, trial.run_id)

    def trials(self, study: str) -> list[Trial]:
        return self.source.trials(study)

    def memo(
        self, study: str, key: tuple[object, ...], compute: Callable[[list[Trial]], _V]
    ) -> _V:
        """``compute(trials)`` once per read of the study's trials (views and rendered HTML)."""
        trials = self.trials(study)
        full = (study, *key)
        with self._lock:
            hit = self._views.get(full)
        if hit is not None and hit[0] is trials:
            return hit[1]  # type: ignore[no-any-return]
        value = compute(trials)
        with self._lock:
            self._views[full] = (trials, value)
            while len(self._views) > 64:
                self._views.pop(next(iter(self._views)))
        return value

    def warm_up(self) -> threading.Thread:
        """Reads every study in the background, so that the first page view is a warm one.

        Then starts the importance worker process and imports optuna there (~3 s of CPU):
        after the reads, so that it does not slow them down, and before the first importance
        view.
        """

        def work() -> None:
            try:
                for summary in self.studies().studies:
                    self.leaderboard(summary.name)
            except Exception:
                pass  # the pages report a broken store themselves
            self._pool.submit(preload)

        thread = threading.Thread(target=work, daemon=True, name="dashboard-warm-up")
        thread.start()
        return thread

    def studies(self) -> StudiesResponse:
        summaries = [self._summary(exp) for exp in self.source.experiments()]
        return StudiesResponse(tracking_uri=redact(self.tracking_uri), studies=summaries)

    def _summary(self, exp: Experiment) -> StudySummary:
        return self.memo(
            exp.name,
            ("summary",),
            lambda trials: views.study_summary(exp.name, exp.experiment_id, trials),
        )

    def studies_slices(self, study: str) -> list[str]:
        return self.memo(study, ("slices",), views.slices)

    def leaderboard(
        self, study: str, *, task: str | None = None, op: str | None = None, top: int = 50
    ) -> LeaderboardResponse:
        return self.memo(
            study,
            ("leaderboard", task, op, top),
            lambda trials: views.leaderboard(
                study, trials, task=task, op=op, top=top, run_url=self.run_url
            ),
        )

    def table(self, study: str, *, task: str | None = None) -> MadsenTableResponse:
        return self.memo(
            study, ("table", task), lambda trials: views.madsen_table(study, trials, task=task)
        )

    def probe(self, trial: Trial) -> Any:
        return self.source.artifact(trial.run_id, "division_probe.json", reader=read_json)

    def division(
        self, study: str, *, task: str | None = None, op: str = "div"
    ) -> DivisionResponse:
        return self.memo(
            study,
            ("division", task, op),
            lambda trials: views.division(study, trials, probe=self.probe, task=task, op=op),
        )

    def importance(
        self,
        study: str,
        *,
        task: str | None = None,
        op: str | None = None,
        evaluator: str = DEFAULT_EVALUATOR,
        wait: float | None = None,
    ) -> ImportanceResponse:
        """Importance, computed once per (trials read, slice, evaluator) on a worker thread.

        Waits up to ``wait`` seconds (``None``: until done); a slower evaluator gives a
        ``pending`` answer so the page stays fast and the next view has the result.
        """
        check_evaluator(evaluator)
        trials = self.trials(study)
        # per task × op: what makes add succeed says little about div
        task, op = views.pick_slice(trials, task, op)
        key = (study, task, op, evaluator, id(trials))
        with self._lock:
            future = self._importance.get(key)
            if future is None:
                # only the slice travels to the worker (pickled); none when Optuna is read
                chosen = (
                    [] if self.storage else [t for t in trials if (t.task, t.op) == (task, op)]
                )
                future = self._pool.submit(
                    importance,
                    study,
                    chosen,
                    task=task,
                    op=op,
                    evaluator=evaluator,
                    storage=self.storage,
                )
                self._importance[key] = future
                while len(self._importance) > 32:  # old reads of the trials
                    self._importance.pop(next(iter(self._importance)))
        try:
            return future.result(timeout=wait)
        except TimeoutError:
            return ImportanceResponse(
                study=study,
                task=task,
                op=op,
                evaluator=evaluator,
                source="optuna" if self.storage else "mlflow",
                target="success_rate",
                trials=0,
                importances=[],
                note=f"computing {evaluator} importance in the background; reload shortly",
                pending=True,
            )
        except DashboardError:
            with self._lock:
                self._importance.pop(key, None)
            raise

    def parallel(
        self,
        study: str,
        *,
        task: str | None = None,
        op: str | None = None,
        params: list[str] | None = None,
    ) -> ParallelResponse:
        chosen = tuple(params or ())
        return self.memo(
            study,
            ("parallel", task, op, chosen),
            lambda trials: views.parallel(
                study, trials, task=task, op=op, params=list(chosen) or None
            ),
        )

    def scatter(
        self, study: str, *, task: str | None = None, op: str | None = None
    ) -> ScatterResponse:
        return self.memo(
            study,
            ("scatter", task, op),
            lambda trials: views.scatter(study, trials, task=task, op=op),
        )

    def trial(self, run_id: str) -> TrialResponse:
        trial, study = self.source.trial(run_id)
        history = self.source.history(run_id, list(CURVE_KEYS))
        records = self.source.artifact(run_id, "seeds.parquet", reader=read_parquet_records)
        division: DivisionCurve | None = None
        if trial.op == "div":
            points = views.parse_probe(self.probe(trial))
            division = views.division_curve(trial, points) if points else None
        return TrialResponse(
            trial=views.trial_row(trial, self.run_url),
            study=study,
            params=trial.params,
            metrics=trial.metrics,
            tags={k: v for k, v in trial.tags.items() if not k.startswith("mlflow.")},
            curves={
                k: [CurvePoint(step=s, value=v) for s, v in pts] for k, pts in history.items()
            },
            seeds=seed_rows(records or []),
            division=division,
            artifacts=self.source.artifact_names(run_id),
        )
