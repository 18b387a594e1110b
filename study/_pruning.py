"""Optuna on the Ray Tune side: one Optuna study per task × op, and Optuna pruners as a scheduler.

Ray's ``OptunaSearch`` hard-codes Optuna's ``NopPruner`` and Tune calls the scheduler before the
searcher, so pruning lives here: :class:`OptunaPruningScheduler` reports each evaluation to the
trial's Optuna study and asks that study's pruner, and :class:`TaskGridSearcher` then tells the
stopped trial to Optuna as PRUNED (``OptunaSearch`` would tell it COMPLETE). Each task × op gets
its own Optuna study (``<study>.<task>-<op>``) so that pruners and samplers compare trials of the
same task only: a median over add and div trials would prune every div trial.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, cast

import optuna
from optuna.trial import TrialState
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from study._sweep import RANGE_METRIC

METRIC = "objective"
# Final metrics copied into the Optuna trial's user attributes, so that `status` and the end
# summary read them from Optuna storage alone.
SUMMARY_KEYS = (
    "success_rate",
    "success_lower",
    "success_upper",
    "extrapolation_mse_median",
    "interpolation_mse_median",
    "train_seconds",
    "wall_seconds",
    "tracking_seconds",
    "step",
    "node_id",
    "node_ip",
    "restored_step",
    "mlflow_run_id",
)


class TaskSearch(OptunaSearch):  # type: ignore[misc]
    """``OptunaSearch`` for one task × op that leaves reporting to the scheduler.

    ``pruner`` is installed on the study after ``OptunaSearch`` created it with a ``NopPruner``;
    HyperbandPruner-aware samplers (TPE) then see it too.
    """

    def __init__(
        self,
        define: Callable[[optuna.Trial], dict[str, Any] | None],
        *,
        study_name: str,
        storage: optuna.storages.BaseStorage,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
    ) -> None:
        super().__init__(
            space=define,
            metric=METRIC,
            mode="max",
            sampler=sampler,
            study_name=study_name,
            storage=storage,
        )
        study = cast(optuna.Study, self._ot_study)
        study.pruner = pruner
        self.study = study
        self.pruned: set[str] = set()
        self.linked: set[str] = set()

    def optuna_trial(self, trial_id: str) -> optuna.Trial:
        trial: optuna.Trial = self._ot_trials[trial_id]
        return trial

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        # the scheduler has already reported this step; Optuna ignores (and warns on) repeats.
        # The link to the MLflow run is written once, while the trial can still be updated
        # (a trial that Ctrl-C or a lost driver ends FAIL keeps it too)
        run_id = result.get("mlflow_run_id")
        if isinstance(run_id, str) and trial_id not in self.linked and trial_id in self._ot_trials:
            self.optuna_trial(trial_id).set_user_attr("mlflow_run_id", run_id)
            self.linked.add(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self.optuna_trial(trial_id)
        # a range sweep's per-range success rates (study/_sweep.py) too
        ranges = sorted(k for k in (result or {}) if k.startswith(RANGE_METRIC))
        for key in (*SUMMARY_KEYS, *ranges):
            value = (result or {}).get(key)
            if isinstance(value, int | float | str) and not (
                isinstance(value, float) and not math.isfinite(value)
            ):
                ot_trial.set_user_attr(key, value)
        state, value = _final_state(result, error=error, pruned=trial_id in self.pruned)
        ot_trial.set_user_attr("end", state.name.lower() if not error else "error")
        self.study.tell(ot_trial, value, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        return


def _final_state(
    result: Mapping[str, Any] | None, *, error: bool, pruned: bool
) -> tuple[TrialState, float | None]:
    """PRUNED when our scheduler stopped it; COMPLETE only when training ran to the end.

    A trial cut short by anything else (the time limit, an error after its retries) ends FAIL,
    so that it does not count towards the budget and ``resume`` runs it again.
    """
    if pruned:
        return TrialState.PRUNED, None
    value = None if result is None else result.get(METRIC)
    if error or result is None or not result.get("finished") or value is None:
        return TrialState.FAIL, None
    if not math.isfinite(float(value)):
        return TrialState.FAIL, None
    return TrialState.COMPLETE, float(value)


class TaskGridSearcher(Searcher):  # type: ignore[misc]
    """Hands out trials across the task × op studies until each one's quota is used.

    The next trial goes to the task with the most quota left, so that tasks progress evenly
    and a time limit cuts them all at about the same point.
    """

    def __init__(self, searches: Mapping[str, TaskSearch], quotas: Mapping[str, int]) -> None:
        super().__init__(metric=METRIC, mode="max")
        self.searches = dict(searches)
        self.quotas = {key: int(quotas.get(key, 0)) for key in self.searches}
        self.owner: dict[str, str] = {}

    @property
    def total(self) -> int:
        return sum(self.quotas.values())

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if trial_id in self.owner:
            return self.searches[self.owner[trial_id]].suggest(trial_id)  # type: ignore[no-any-return]
        left = {key: n for key, n in self.quotas.items() if n > 0}
        if not left:
            return Searcher.FINISHED  # type: ignore[return-value, no-any-return]
        key = max(left, key=lambda k: left[k])
        config = self.searches[key].suggest(trial_id)
        self.quotas[key] -= 1
        self.owner[trial_id] = key
        return config  # type: ignore[no-any-return]

    def search_for(self, trial_id: str) -> TaskSearch | None:
        key = self.owner.get(trial_id)
        return None if key is None else self.searches[key]

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        search = self.search_for(trial_id)
        if search is not None:
            search.on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        search = self.search_for(trial_id)
        if search is not None:
            search.on_trial_complete(trial_id, result, error=error)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        # the study's state lives in Optuna storage; `resume` rebuilds from there, not from Tune
        return


class OptunaPruningScheduler(FIFOScheduler):  # type: ignore[misc]
    """Tune scheduler that stops a trial when its Optuna study's pruner says so.

    Each result's ``objective`` is reported to Optuna at the trainer ``step`` (not Tune's
    iteration count, which restarts after a retry), so the intermediate values in storage are
    indexed by training step and pruners' ``n_warmup_steps`` mean trainer steps.
    """

    def __init__(self, searcher: TaskGridSearcher) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.searcher = searcher
        self.pruned_count = 0
        # a retried trial replays its steps from the checkpoint; Optuna keeps the first value
        self._reported: dict[str, set[int]] = {}

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
        search = self.searcher.search_for(trial.trial_id)
        value = result.get(METRIC)
        if search is None or value is None:
            return TrialScheduler.CONTINUE  # type: ignore[no-any-return]
        step = int(result["step"])
        seen = self._reported.setdefault(trial.trial_id, set())
        if step in seen:
            return TrialScheduler.CONTINUE  # type: ignore[no-any-return]
        seen.add(step)
        ot_trial = search.optuna_trial(trial.trial_id)
        ot_trial.report(_finite(float(value)), step)
        if not result.get("finished") and ot_trial.should_prune():
            search.pruned.add(trial.trial_id)
            self.pruned_count += 1
            return TrialScheduler.STOP  # type: ignore[no-any-return]
        return TrialScheduler.CONTINUE  # type: ignore[no-any-return]

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> None:
        # A result marked done can reach on_trial_complete without on_trial_result (Tune's
        # stop check comes first): a retry restored at the last step finishes with that one
        # result. Report its step here (once), before the searcher tells Optuna.
        search = self.searcher.search_for(trial.trial_id)
        value = (result or {}).get(METRIC)
        if search is None or value is None or "step" not in result:
            return
        done = search._completed_trials  # already told to Optuna: no more reports
        if trial.trial_id in search.pruned or trial.trial_id in done:
            return
        if trial.trial_id not in search._ot_trials:
            return
        step = int(result["step"])
        seen = self._reported.setdefault(trial.trial_id, set())
        if step not in seen:
            seen.add(step)
            search.optuna_trial(trial.trial_id).report(_finite(float(value)), step)


def _finite(value: float) -> float:
    # a diverged replica can make the tie-break NaN; Optuna's pruners reject NaN intermediates
    return value if math.isfinite(value) else -1.0
