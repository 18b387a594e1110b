"""One trial over several range pairs: Mistry's protocol scores a configuration on 9 of them.

A :class:`RangeSweep` holds one :class:`PopulationTrainer` per range preset (the same seeds,
the same configuration, only ``task.options.range_preset`` differs) and trains them in lockstep,
one evaluation interval each per round. It offers the trainer interface that
:class:`study._trainable.NaluTrainable` uses (``run``, ``step``, ``history``, ``result``,
``state_dict``...), so a trial is a sweep or a single trainer alike. Its reports and result pool
every replica of every range (success over 9 × 25 seeds), and add the per-range success rates
as ``success_rate/<preset>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nalu_core import EvalReport, PopulationTrainer, RunConfig, TrainResult, wilson_interval

RANGE_METRIC = "success_rate/"


def with_range(config: RunConfig, preset: str) -> RunConfig:
    """``config`` on the range pair ``preset`` (replacing any explicit ranges)."""
    options = {
        k: v
        for k, v in config.task.options.items()
        if k not in ("interpolation", "extrapolation", "range_preset")
    }
    task = dataclasses.replace(config.task, options={**options, "range_preset": preset})
    return dataclasses.replace(config, task=task)


@dataclass(frozen=True, kw_only=True)
class SweepReport(EvalReport):
    """The pooled evaluation of every range, plus each range's success rate."""

    per_range: Mapping[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        return super().metrics() | {RANGE_METRIC + k: v for k, v in self.per_range.items()}


@dataclass(frozen=True, kw_only=True)
class SweepResult(TrainResult):
    """Every range's seeds pooled; ``per_range`` keeps each range's own result."""

    per_range: Mapping[str, TrainResult] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        rates = {RANGE_METRIC + k: r.success_rate for k, r in self.per_range.items()}
        return super().metrics() | rates


def _pool(reports: Mapping[str, EvalReport], *, step: int, seconds: float) -> SweepReport:
    def cat(name: str) -> list[Any]:
        return [v for r in reports.values() for v in getattr(r, name)]

    success = cat("success")
    n = sum(success)
    splits = {s for r in reports.values() for s in r.split_mse}
    return SweepReport(
        step=step,
        interpolation_mse=cat("interpolation_mse"),
        extrapolation_mse=cat("extrapolation_mse"),
        success=success,
        diverged=cat("diverged"),
        solved_at=cat("solved_at"),
        success_rate=n / len(success),
        success_ci=wilson_interval(n, len(success)),
        train_seconds=seconds,
        threshold=None,  # one per range
        normalized_interpolation_error=cat("normalized_interpolation_error"),
        normalized_extrapolation_error=cat("normalized_extrapolation_error"),
        split_mse={
            s: [v for r in reports.values() for v in r.split_mse.get(s, [])] for s in splits
        },
        per_range={k: r.success_rate for k, r in reports.items()},
    )


class RangeSweep:
    """``config`` trained on every preset of ``ranges``, in lockstep (see the module doc)."""

    def __init__(self, config: RunConfig, ranges: Sequence[str]) -> None:
        if not ranges:
            raise ValueError(f"a sweep needs at least one range preset: {ranges=}")
        self.config = config
        self.ranges = tuple(ranges)
        self.trainers = {r: PopulationTrainer(with_range(config, r)) for r in self.ranges}
        self.latest: dict[str, EvalReport] = {}
        self.history: list[dict[str, float]] = []
        self._stop_requested = False

    @property
    def step(self) -> int:
        """The furthest step of any range (they advance together; solved ones stop early)."""
        return max(t.step for t in self.trainers.values())

    @property
    def train_seconds(self) -> float:
        return sum(t.train_seconds for t in self.trainers.values())

    def _finished(self, trainer: PopulationTrainer) -> bool:
        cfg = trainer.train_config
        solved = cfg.stop_when_solved and bool(trainer._frozen().all())
        return trainer.step >= cfg.steps or solved

    def run(self) -> Iterator[EvalReport]:
        self._stop_requested = False
        return self._run()

    def _run(self) -> Iterator[EvalReport]:
        runs = {r: t.run() for r, t in self.trainers.items() if not self._finished(t)}
        while runs:
            advanced = False
            for key, run in list(runs.items()):
                report = next(run, None)
                if report is None:
                    if self._stop_requested:
                        return
                    del runs[key]  # this range is done (its last steps, or all solved)
                    continue
                self.latest[key] = report
                advanced = True
            if self._stop_requested or not advanced:
                return
            if len(self.latest) == len(self.trainers):
                pooled = _pool(self.latest, step=self.step, seconds=self.train_seconds)
                self.history.append({"step": float(pooled.step), **pooled.metrics()})
                yield pooled

    def request_stop(self) -> None:
        self._stop_requested = True
        for trainer in self.trainers.values():
            trainer.request_stop()

    def result(self) -> SweepResult:
        per_range = {r: t.result() for r, t in self.trainers.items()}
        seeds = [s for r in per_range.values() for s in r.seeds]
        n = sum(s.success for s in seeds)
        first = per_range[self.ranges[0]]
        return SweepResult(
            config=self.config,
            threshold=None,
            success_rate=n / len(seeds),
            success_ci=wilson_interval(n, len(seeds)),
            seeds=seeds,
            history=list(self.history),
            division_probe=None,
            steps=self.step,
            train_seconds=self.train_seconds,
            threshold_rule=first.threshold_rule,
            threshold_epsilon=first.threshold_epsilon,
            per_range=per_range,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "ranges": list(self.ranges),
            "trainers": {r: t.state_dict() for r, t in self.trainers.items()},
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("config") != self.config.to_dict() or list(state["ranges"]) != list(
            self.ranges
        ):
            raise ValueError("the saved state belongs to a different sweep")
        for key, trainer in self.trainers.items():
            trainer.load_state_dict(state["trainers"][key])
        self.history = [dict(h) for h in state["history"]]
        # the next round's reports replace these; until then, each range's last evaluation
        self.latest = {}
        for key, trainer in self.trainers.items():
            if trainer.history:
                self.latest[key] = _from_history(trainer)

    def network_state(self) -> dict[str, Any]:
        return {r: t.network_state() for r, t in self.trainers.items()}


def _from_history(trainer: PopulationTrainer) -> EvalReport:
    """A restored range's last evaluation, rebuilt from its state (per replica)."""
    success = trainer.success
    n = int(success.sum())
    inf = float("inf")
    best = trainer.best_extrapolation.tolist()
    return EvalReport(
        step=trainer.step,
        interpolation_mse=trainer.best_interpolation.tolist(),
        extrapolation_mse=[
            inf if d else b for b, d in zip(best, trainer.diverged.tolist(), strict=True)
        ],
        success=success.tolist(),
        diverged=trainer.diverged.tolist(),
        solved_at=[s if s >= 0 else None for s in trainer.solved_at.tolist()],
        success_rate=n / trainer.population,
        success_ci=wilson_interval(n, trainer.population),
        train_seconds=trainer.train_seconds,
        threshold=trainer.threshold,
    )
