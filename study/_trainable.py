"""The Tune trainable: one trial trains one configuration over many seeds at once.

:class:`NaluTrainable` runs inside Ray workers (Ray pickles it by this module path) and is a thin
adapter around the population trainer; the driver (:mod:`study._launch`) schedules it.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from nalu_core import EvalReport, PopulationTrainer, RunConfig
from study._pruning import METRIC
from study._spec import ObjectiveSpec, task_key
from study._studies import optuna_study_name
from study._sweep import RangeSweep

CHECKPOINT_FILE = "trainer.pt"
# a finished trial's record: its config, final metrics, per-seed results and seed 0's history
CELL_FILE = "cell.json"


def _save_state(path: Path, state: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous checkpoint


def _load_state(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    # tensors, numbers and strings only: never unpickle arbitrary objects
    state: dict[str, Any] = torch.load(path, weights_only=True, map_location="cpu")
    return state


def _import_tune() -> Any:
    from ray import tune

    return tune


class NaluTrainable(_import_tune().Trainable):  # type: ignore[misc]
    """One trial: the population trainer on one configuration, a Tune result per evaluation.

    ``config`` holds ``run_config`` (a :class:`RunConfig` dict), ``checkpoint_dir``,
    ``checkpoint_every``, ``objective`` and ``tracking`` (or ``None``). The optional
    ``fail_at_step`` raises once at that trainer step (in the Optuna trials numbered in
    ``fail_trials``, default all): fault injection for the retry tests. The optional
    ``barrier`` (``{"dir", "parties", "timeout"}``) holds each trial at its first evaluation,
    its MLflow run open, until ``parties`` trials got there: the concurrency test's overlap.
    """

    def setup(self, config: dict[str, Any]) -> None:
        torch.set_num_threads(max(1, int(config.get("threads", 1))))
        self.started = time.perf_counter()
        self.run_config = RunConfig.from_dict(config["run_config"])
        self.objective = ObjectiveSpec(**config["objective"])
        self.checkpoint_path = Path(config["checkpoint_dir"]) / CHECKPOINT_FILE
        self.checkpoint_every = int(config["checkpoint_every"])
        self.fail_at_step = config.get("fail_at_step")
        self.optuna_number = int(config["optuna_number"])
        self.barrier = config.get("barrier")
        if config["optuna_number"] not in config.get("fail_trials", [config["optuna_number"]]):
            self.fail_at_step = None
        ranges = config.get("ranges")
        # a sweep trains the configuration on several range pairs at once (study/_sweep.py)
        self.trainer: Any = (
            RangeSweep(self.run_config, ranges) if ranges else PopulationTrainer(self.run_config)
        )
        # seed 0's evaluations, kept through checkpoints: the cell record a replay test checks
        self.seed_history: list[dict[str, float]] = []
        state = _load_state(self.checkpoint_path)
        if state is not None:
            self._restore(state)
        self.restored_step = self.trainer.step
        self.restored_train_seconds = self.trainer.train_seconds
        self.reports = self.trainer.run()
        self.ahead: Future[EvalReport | None] | None = None
        self.evaluations = 0
        self.last: dict[str, Any] = {}
        self.finished = False
        self.tracker = _open_tracker(config, self.run_config, self.trial_id)
        self._relog_history()

    def step(self) -> dict[str, Any]:
        try:
            return self._step()
        except Exception:
            # the run ends FAILED now; a retry from the checkpoint continues the same run
            if self.tracker is not None:
                self.tracker.finish("FAIL")
            self.finished = True
            raise

    def _step(self) -> dict[str, Any]:
        report = self._next_report()
        if report is None:
            return self._finish()
        self.evaluations += 1
        self.seed_history.append(_seed_row(report))
        metrics = report.metrics()
        if self.tracker is not None:
            self.tracker.log_eval(report.step, metrics)
        if self.evaluations % self.checkpoint_every == 0:
            _save_state(self.checkpoint_path, self._state())
        self._await_barrier()
        self._maybe_fail(report.step)
        self.last = self._result(metrics, step=report.step, train_seconds=report.train_seconds)
        if report.step >= self.run_config.train.steps:
            return self._finish()
        # Tune handles each result in the driver (Optuna's report and pruning decision,
        # 20-30 ms) while this actor would wait for the next call; train on meanwhile
        self.ahead = _trainer_thread().submit(next, self.reports, None)
        return self.last

    def _next_report(self) -> EvalReport | None:
        ahead, self.ahead = self.ahead, None
        return next(self.reports, None) if ahead is None else ahead.result()

    def _halt_ahead(self) -> None:
        """Ends the training ahead at its current step; the next ``step()`` carries on there."""
        if self.ahead is None:
            return
        self.trainer.request_stop()
        wait([self.ahead])
        if self.ahead.exception() is None and self.ahead.result() is None:
            self.ahead = None  # stopped between two evaluations: nothing to report yet
        self.reports = self.trainer.run()  # from the trainer's step, with the stop cleared

    def _result(self, metrics: Mapping[str, float], *, step: int, train_seconds: float) -> dict:  # type: ignore[type-arg]
        import ray

        return {
            **metrics,
            METRIC: self.objective.score(metrics),
            "step": step,
            "train_seconds": train_seconds,
            "wall_seconds": time.perf_counter() - self.started,
            "restored_step": self.restored_step,
            "total_steps": self.run_config.train.steps,
            # training done before the restore (by an earlier process): not in wall_seconds
            "restored_train_seconds": self.restored_train_seconds,
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]
            "finished": False,
            # the Optuna trial's link to its MLflow run (known once the run has opened)
            "mlflow_run_id": None if self.tracker is None else self.tracker.run_id,
        }

    def _finish(self) -> dict[str, Any]:
        result = self.trainer.result()
        _save_state(self.checkpoint_path, self._state())
        _write_cell(self.checkpoint_path.with_name(CELL_FILE), result, self.seed_history)
        tracking = time.perf_counter()
        if self.tracker is not None:
            self.tracker.log_result(result)
            self.tracker.finish("COMPLETE")
        self.finished = True
        # built last, so that wall_seconds covers the artifacts and the MLflow flush too
        self.last = {
            **self._result(
                result.metrics(), step=self.trainer.step, train_seconds=result.train_seconds
            ),
            "tracking_seconds": time.perf_counter() - tracking,
            "finished": True,
            "done": True,
        }
        return self.last

    def _maybe_fail(self, step: int) -> None:
        if self.fail_at_step is None or step < int(self.fail_at_step):
            return
        marker = self.checkpoint_path.with_name("injected-failure")
        if not marker.exists():
            marker.touch()
            raise RuntimeError(f"injected failure at step {step} (fail_at_step)")

    def _await_barrier(self) -> None:
        if not self.barrier:
            return
        barrier, self.barrier = self.barrier, None
        deadline = time.monotonic() + float(barrier.get("timeout", 120.0))
        if self.tracker is not None:
            self.tracker.wait_opened(timeout=max(0.0, deadline - time.monotonic()))
        folder = Path(barrier["dir"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / str(self.optuna_number)).touch()
        while len(list(folder.iterdir())) < int(barrier["parties"]):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        """Tune's own checkpoints (pause, retries on another node): the same state file."""
        self._halt_ahead()  # Tune asks for one when it stops a trial: don't wait for the eval
        state = self._state()
        _save_state(Path(checkpoint_dir) / CHECKPOINT_FILE, state)
        _save_state(self.checkpoint_path, state)

    def load_checkpoint(self, checkpoint: str | dict[str, Any] | None) -> None:
        if not isinstance(checkpoint, str):
            return
        state = _load_state(Path(checkpoint) / CHECKPOINT_FILE)
        if state is not None:
            self._halt_ahead()
            self.ahead = None
            self._restore(state)
            self.restored_step = self.trainer.step
            self.restored_train_seconds = self.trainer.train_seconds
            self.reports = self.trainer.run()
            self._relog_history()

    def _state(self) -> dict[str, Any]:
        return {**self.trainer.state_dict(), "seed_history": list(self.seed_history)}

    def _restore(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state)
        self.seed_history = [dict(row) for row in state.get("seed_history", [])]

    def _relog_history(self) -> None:
        """Logs the evaluations of a restored trainer again.

        Those the lost worker had not delivered yet exist nowhere else; the tracker skips
        the steps its (continued) run already holds, and a re-run trial's new run gets them
        all.
        """
        if self.tracker is None:
            return
        for row in self.trainer.history:
            metrics = {k: v for k, v in row.items() if k != "step"}
            self.tracker.log_eval(int(row["step"]), metrics)

    def cleanup(self) -> None:
        self._halt_ahead()
        # stopped before the end: the scheduler pruned it, or the time limit cut it
        if self.tracker is not None and not self.finished:
            self.tracker.finish("PRUNED")

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        """Actor reuse: the next trial reuses this process (saves ~2 s of start-up each)."""
        self.cleanup()
        self.setup(new_config)
        return True


def _seed_row(report: EvalReport) -> dict[str, float]:
    """Seed 0 (the first replica) at one evaluation: what a replay must reproduce."""
    return {
        "step": float(report.step),
        "interpolation_mse": float(report.interpolation_mse[0]),
        "extrapolation_mse": float(report.extrapolation_mse[0]),
    }


def _write_cell(path: Path, result: Any, seed_history: list[dict[str, float]]) -> None:
    """``cell.json`` next to the checkpoint (small: committed as a study's result record)."""
    record = cell_record(result, seed_history)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def cell_record(result: Any, seed_history: list[dict[str, float]]) -> dict[str, Any]:
    """A trial's result as a ``cell.json`` record (also built for a running trial's checkpoint
    by ``benchmarks/collect_cells.py --partial``)."""

    def finite(value: float) -> float | None:
        return value if math.isfinite(value) else None

    return {
        "schema": "nalu-study/cell/1",
        "configuration": result.config.to_dict(),
        "steps": int(result.steps),
        "train_seconds": float(result.train_seconds),
        "metrics": {k: finite(float(v)) for k, v in result.metrics().items()},
        "seeds": [s.to_dict() for s in result.seeds],
        "seed0_history": [{k: finite(v) for k, v in row.items()} for row in seed_history],
    }


@functools.cache
def _trainer_thread() -> ThreadPoolExecutor:
    """The actor's one thread that trains ahead (see ``NaluTrainable._step``)."""
    return ThreadPoolExecutor(1, thread_name_prefix="train-ahead")


def _open_tracker(config: Mapping[str, Any], run_config: RunConfig, trial_id: str) -> Any:
    tracking = config.get("tracking")
    if not tracking:
        return None
    from study import _tracking

    params = _tracking.config_params(run_config)
    tags = {
        _tracking.STUDY_TAG: tracking["study"],
        "nalu.task": run_config.task.name,
        "nalu.op": run_config.task.op,
        "nalu.unit": run_config.model.layers[0].unit,
        _tracking.OPTUNA_TRIAL_TAG: str(config["optuna_number"]),
        _tracking.OPTUNA_STUDY_TAG: optuna_study_name(
            tracking["study"], task_key(run_config.task)
        ),
        _tracking.RAY_TRIAL_TAG: trial_id,
        _tracking.NODE_TAG: platform.node(),
    }
    if config.get("ranges"):
        # a range sweep: the config's own range is replaced by each of these (study/_sweep.py)
        tags["nalu.ranges"] = ",".join(config["ranges"])
    return _tracking.TrialTracker(
        tracking["uri"],
        experiment_id=tracking["experiment_id"],
        parent_run_id=tracking["parent_run_id"],
        trial_name=f"{task_key(run_config.task)}-{config['optuna_number']}",
        params=params,
        tags=tags,
    )
