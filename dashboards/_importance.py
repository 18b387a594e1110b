"""Hyperparameter importance with Optuna's evaluators.

With an Optuna storage the study's own trials (and their declared distributions) are used.
Without one, the COMPLETE trials read from MLflow are rebuilt into an in-memory Optuna study,
with distributions inferred from the logged values, so the page works for any tracking store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

from dashboards._data import Trial, check_sqlite_exists
from dashboards._errors import DashboardError, NotFoundError, StoreUnavailableError
from dashboards._models import Importance, ImportanceResponse
from dashboards._views import _as_number, _in_slice, hyperparameters

EVALUATORS = ("ped_anova", "fanova", "mdi")
DEFAULT_EVALUATOR = "ped_anova"
TARGET = "success_rate"
# fANOVA's forest costs ~6 s for 500 trials and minutes for 10,000 on this 2-core box; a
# seeded random subsample keeps every evaluator bounded and the result reproducible.
MAX_TRIALS = 2000


def check_evaluator(name: str) -> None:
    if name not in EVALUATORS:
        raise DashboardError(
            f"evaluator must be one of {list(EVALUATORS)}, got {name!r}", field="evaluator"
        )


def make_evaluator(name: str) -> Any:
    check_evaluator(name)
    import optuna.importance as imp

    factories: dict[str, Callable[[], Any]] = {
        "fanova": lambda: imp.FanovaImportanceEvaluator(seed=0),
        "ped_anova": lambda: imp.PedAnovaImportanceEvaluator(),
        "mdi": lambda: imp.MeanDecreaseImpurityImportanceEvaluator(seed=0),
    }
    return factories[name]()


def _distribution(values: list[str]) -> Any:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    numbers = [_as_number(v) for v in values]
    if all(n is not None for n in numbers):
        nums = [float(n) for n in numbers if n is not None]
        low, high = min(nums), max(nums)
        if all(n.is_integer() for n in nums) and all(
            "." not in v and "e" not in v for v in values
        ):
            return IntDistribution(int(low), int(high))
        return FloatDistribution(low, high, log=low > 0 and high / low >= 100)
    return CategoricalDistribution(sorted(set(values)))


def _param_value(dist: Any, raw: str) -> Any:
    from optuna.distributions import FloatDistribution, IntDistribution

    if isinstance(dist, IntDistribution):
        return int(float(raw))
    if isinstance(dist, FloatDistribution):
        return float(raw)
    return raw


def frozen_from_mlflow(trials: list[Trial]) -> list[Any]:
    """COMPLETE MLflow trials as Optuna FrozenTrials over the params that vary."""
    import optuna

    done = [t for t in trials if t.state == "COMPLETE" and t.metric(TARGET) is not None]
    names, _ = hyperparameters(done)

    def raw(trial: Trial, name: str) -> str:
        return trial.unit if name == "unit" else trial.params.get(name, "")

    dists = {name: _distribution([raw(t, name) for t in done]) for name in names}
    return [
        optuna.trial.create_trial(
            params={name: _param_value(dists[name], raw(t, name)) for name in names},
            distributions=dists,
            value=t.metric(TARGET),
        )
        for t in done
    ]


def frozen_from_optuna(
    study: str, storage: str, *, task: str | None, op: str | None
) -> tuple[list[Any], str]:
    import optuna

    check_sqlite_exists(storage, what="Optuna storage", field_name="storage")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        names = optuna.get_all_study_names(storage)
        # the launcher keeps one Optuna study per task × op, named "<study>.<task>-<op>"
        wanted = [f"{study}.{task}-{op}", study]
        name = next((n for n in wanted if n in names), None)
        if name is None:
            raise NotFoundError(
                f"no Optuna study {wanted[0]!r} or {study!r} in {storage}; it has {names}",
                field="study",
            )
        loaded = optuna.load_study(study_name=name, storage=storage)
    except NotFoundError:
        raise
    except Exception as err:
        raise StoreUnavailableError(
            f"cannot read Optuna storage {storage}: {type(err).__name__}: {err}", field="storage"
        ) from err
    done = loaded.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    # Only slice when the search itself varied task/op; otherwise they are fixed by the spec.
    done = [
        t
        for t in done
        if (task is None or t.params.get("task", task) == task)
        and (op is None or t.params.get("op", op) == op)
    ]
    target = (loaded.metric_names or ["objective"])[0]
    if len(loaded.directions) > 1:
        done = [
            optuna.trial.create_trial(
                params=t.params, distributions=t.distributions, value=t.values[0]
            )
            for t in done
        ]
    sign = -1.0 if loaded.directions[0] == optuna.study.StudyDirection.MINIMIZE else 1.0
    return done, target if sign > 0 else f"-{target}"


def watch_parent(parent: int) -> None:
    """Worker initializer: exit when the dashboard dies (SIGTERM/SIGKILL skip its clean-up,
    and a pool worker holds its own task pipe open, so it would otherwise live on)."""
    import os
    import threading
    import time

    def loop() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=loop, daemon=True, name="watch-parent").start()


def preload() -> None:
    """Imports optuna's importance code (~2 s) in the worker before the first request."""
    import optuna.importance  # noqa: F401


def importance(
    study: str,
    trials: list[Trial],
    *,
    task: str | None = None,
    op: str | None = None,
    evaluator: str = DEFAULT_EVALUATOR,
    storage: str | None = None,
    max_trials: int = MAX_TRIALS,
) -> ImportanceResponse:
    import random

    import optuna

    check_evaluator(evaluator)  # before any work
    if storage:
        frozen, target = frozen_from_optuna(study, storage, task=task, op=op)
        source = "optuna"
        direction: Literal["minimize", "maximize"] = (
            "minimize" if target.startswith("-") else "maximize"
        )
        target = target.lstrip("-")
        total = len(frozen)
        if total > max_trials:
            frozen = random.Random(0).sample(frozen, max_trials)
    else:
        done = [
            t
            for t in trials
            if _in_slice(t, task, op) and t.state == "COMPLETE" and t.metric(TARGET) is not None
        ]
        total = len(done)
        if total > max_trials:  # sample before building: FrozenTrials cost ~0.1 ms each
            done = random.Random(0).sample(done, max_trials)
        frozen = frozen_from_mlflow(done)
        source, target, direction = "mlflow", TARGET, "maximize"
    result = ImportanceResponse(
        study=study,
        task=task,
        op=op,
        evaluator=evaluator,
        source=source,
        target=target,
        trials=len(frozen),
        importances=[],
    )
    if len(frozen) < 2 or not frozen[0].distributions:
        result.note = "needs at least 2 complete trials and one hyperparameter that varies"
        return result
    values = [t.value for t in frozen if t.value is not None]
    if len(set(values)) < 2:
        result.note = f"every trial has the same {target}; nothing to attribute"
        return result
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    memory = optuna.create_study(direction=direction)
    memory.add_trials(frozen)
    scores = optuna.importance.get_param_importances(
        memory, evaluator=make_evaluator(evaluator), normalize=True
    )
    result.importances = [
        Importance(param=name, importance=float(score))
        for name, score in scores.items()
        if math.isfinite(float(score))
    ]
    if total > len(frozen):
        result.note = f"a seeded random sample of {len(frozen)} of {total} complete trials"
    return result
