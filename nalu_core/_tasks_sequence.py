"""Recurrent arithmetic (Trask et al. 2018, §4.2) and the evaluation shared by sequence tasks.

The input is a sequence of ``length`` vectors ``x_t ~ U(range)^input_size``; ``a`` and ``b`` sum
two contiguous subsets of every ``x_t`` over all steps, and the target ``a ∘ b`` is read at
the last step. Extrapolation is in sequence length (``extrapolation_length``) and, optionally,
in value range (``extrapolation``). Models are read by
:class:`~nalu_core._recurrent.RecurrentHead`: ``lstm``/``gru``/``rnn`` (Trask's baselines;
``rnn`` is ReLU by default) or any layer unit as an accumulating recurrence (``nac_add``,
``nalu``, ``nau``, ``linear``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from nalu_core._config import ModelConfig, TaskConfig
from nalu_core._errors import ConfigError
from nalu_core._metrics import median
from nalu_core._recurrent import RecurrentHead
from nalu_core._tasks import (
    STATIC_OPS,
    THRESHOLD_EPSILON,
    PopulationModule,
    Ranges,
    Task,
    TaskSpec,
    _madsen_near_perfect,
    parse_ranges,
    place_subsets,
    register_task,
    uniform_to_ranges,
)

_F = "task.options."
# Sequences x steps per forward pass in evaluation, so that P x chunk stays a few MB.
_EVAL_STEPS = 1 << 16


def check_int(value: object, key: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{key} must be an int >= {minimum}: {value=}", field=_F + key)
    return value


# --- evaluation shared by the sequence tasks ----------------------------------------------


@torch.no_grad()
def predict(model: PopulationModule, x: Tensor, *, population: int) -> Tensor:
    """Predictions of every replica on a shared set ``x (N, T, ...)`` -> ``(P, N, out)``."""
    steps = max(1, x[0].numel())
    chunk = max(1, _EVAL_STEPS // steps)
    outputs = []
    for start in range(0, x.shape[0], chunk):
        xc = x[start : start + chunk]
        outputs.append(model(xc.unsqueeze(0).expand(population, *xc.shape)))
    return torch.cat(outputs, dim=1)


def regression_metrics(y: Tensor, t: Tensor) -> dict[str, Tensor]:
    """Per-replica ``mse`` and ``mae`` of ``y (P, N, out)`` against ``t (N, out)`` -> ``(P,)``."""
    err = (y - t).double()
    mse = err.pow(2).flatten(1).mean(1)
    mae = err.abs().flatten(1).mean(1)
    inf = torch.full_like(mse, float("inf"))
    return {
        "mse": torch.where(torch.isfinite(mse), mse, inf),
        "mae": torch.where(torch.isfinite(mae), mae, inf),
    }


@torch.no_grad()
def evaluate_splits(
    task: SequenceTask,
    model: PopulationModule,
    sets: Mapping[str, tuple[Tensor, Tensor]],
    *,
    population: int,
    baseline: PopulationModule | None = None,
) -> dict[str, dict[str, list[float]]]:
    """``{split: {metric: per-replica values}}`` with the task's metrics on every split.

    With a ``baseline`` (a freshly initialised model of the same architecture) each split
    also gets Trask's ``normalized_error``: 100 x MSE / the baseline's MSE, replica by replica.
    """
    report: dict[str, dict[str, list[float]]] = {}
    for split, (x, t) in sets.items():
        metrics = task.split_metrics(predict(model, x, population=population), t)
        if baseline is not None:
            base = task.split_metrics(predict(baseline, x, population=population), t)
            metrics["normalized_error"] = 100.0 * metrics["mse"] / base["mse"]
        report[split] = {key: [float(v) for v in value] for key, value in metrics.items()}
    return report


# Per-trial summaries of the sequence metrics: which way is better for each.
_BETTER: dict[str, str] = {"mae": "min", "accuracy": "max", "sequence_accuracy": "max"}
# The trainer's own metrics already summarise these splits' MSEs (train: each evaluation).
_TRAINER_MSE_SPLITS = frozenset({"interpolation", "extrapolation", "train"})


def summarize_splits(
    report: Mapping[str, Mapping[str, Sequence[float]]], *, diverged: Sequence[bool]
) -> dict[str, float]:
    """Flat per-trial metrics of an :func:`evaluate_splits` report.

    For every split and every metric of ``_BETTER`` the task reports:
    ``{split}_{metric}_median`` over the replicas and ``{split}_{metric}_best`` (the best
    replica, as a paper reporting its best run would). Also ``{split}_mse_median`` for the
    splits the trainer does not summarise itself (``extrapolation_1000``). A diverged
    replica counts as the worst: MAE/MSE inf, accuracy 0; NaN counts as diverged too.
    """
    out: dict[str, float] = {}
    for split, metrics in report.items():
        for name, values in metrics.items():
            if name == "mse" and split in _TRAINER_MSE_SPLITS:
                continue
            better = _BETTER.get(name, "min" if name == "mse" else None)
            if better is None:
                continue
            worst = 0.0 if better == "max" else math.inf
            kept = [
                worst if bad or math.isnan(v) else float(v)
                for v, bad in zip(values, diverged, strict=True)
            ]
            out[f"{split}_{name}_median"] = median(kept)
            if name != "mse":
                out[f"{split}_{name}_best"] = max(kept) if better == "max" else min(kept)
    return out


@dataclass(frozen=True, kw_only=True)
class SequenceTask(Task):
    """A task whose model reads sequences; adds per-split metrics beyond the trainer's MSE."""

    def split_metrics(self, y: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Metrics of predictions ``y (P, N, out)`` on one split, each ``(P,)``."""
        return regression_metrics(y, t)


# --- recurrent arithmetic -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RecurrentArithmetic(SequenceTask):
    """``t = a ∘ b`` where ``a``, ``b`` sum two subsets of ``x_t`` over a sequence."""

    name: ClassVar[str] = "recurrent"
    input_size: int = 10
    subset_ratio: float = 0.25
    overlap_ratio: float = 0.5
    subset_seed: int = 0
    length: int = 10
    extrapolation_length: int = 100
    interpolation: Ranges = ((1.0, 2.0),)
    extrapolation: Ranges | None = None
    epsilon: float = THRESHOLD_EPSILON
    a_slice: tuple[int, int] = field(init=False)
    b_slice: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        if self.op not in STATIC_OPS:
            raise ConfigError(f"op must be one of {list(STATIC_OPS)}: {self.op=}", field="task.op")
        check_int(self.input_size, "input_size", minimum=2)
        check_int(self.subset_seed, "subset_seed", minimum=0)
        check_int(self.length, "length", minimum=1)
        check_int(self.extrapolation_length, "extrapolation_length", minimum=1)
        if not (isinstance(self.epsilon, int | float) and 0 < self.epsilon < 1):
            raise ConfigError(f"epsilon must be in (0, 1): {self.epsilon=}", field=_F + "epsilon")
        for key, value, hi in (
            ("subset_ratio", self.subset_ratio, 0.5),
            ("overlap_ratio", self.overlap_ratio, 1.0),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= hi
            ):
                raise ConfigError(f"{key} must be in [0, {hi}]: {value=}", field=_F + key)
        interpolation = parse_ranges(self.interpolation, field=_F + "interpolation")
        # default: Trask's length-only extrapolation, values from the training range
        extrapolation = parse_ranges(
            self.extrapolation if self.extrapolation is not None else interpolation,
            field=_F + "extrapolation",
        )
        object.__setattr__(self, "interpolation", interpolation)
        object.__setattr__(self, "extrapolation", extrapolation)
        # floor, as stable-nalu's datasets (at least one input per subset)
        size = max(1, math.floor(self.subset_ratio * self.input_size))
        shared = math.floor(self.overlap_ratio * size)
        a_slice, b_slice = place_subsets(
            self.input_size, size, shared, seed=self.subset_seed, field=_F + "subset_ratio"
        )
        object.__setattr__(self, "a_slice", a_slice)
        object.__setattr__(self, "b_slice", b_slice)

    @property
    def in_features(self) -> int:
        return self.input_size

    @property
    def out_features(self) -> int:
        return 1

    def target(self, x: Tensor) -> Tensor:
        """``x (..., T, in)`` -> ``a ∘ b`` ``(..., 1)``."""
        a = x[..., self.a_slice[0] : self.a_slice[1]].sum((-1, -2)).unsqueeze(-1)
        b = x[..., self.b_slice[0] : self.b_slice[1]].sum((-1, -2)).unsqueeze(-1)
        return STATIC_OPS[self.op](a, b)

    def sample(
        self, generators: list[torch.Generator], batch_size: int, *, dtype: torch.dtype
    ) -> tuple[Tensor, Tensor]:
        shape = (batch_size, self.length, self.input_size)
        x = torch.empty(len(generators), *shape, device=generators[0].device, dtype=dtype)
        for p, generator in enumerate(generators):
            x[p].uniform_(0.0, 1.0, generator=generator)
        x = uniform_to_ranges(x, self.interpolation)  # (P, B, T, in)
        return x, self.target(x)  # (P, B, T, in), (P, B, 1)

    def _draw(
        self, generator: torch.Generator, n: int, length: int, ranges: Ranges, dtype: torch.dtype
    ) -> Tensor:
        x = torch.empty(n, length, self.input_size, device=generator.device, dtype=dtype)
        return uniform_to_ranges(x.uniform_(0.0, 1.0, generator=generator), ranges)

    def evaluation_sets(
        self, generator: torch.Generator, n: int, *, dtype: torch.dtype
    ) -> dict[str, tuple[Tensor, Tensor]]:
        sets = {}
        for split, length, ranges in (
            ("interpolation", self.length, self.interpolation),
            ("extrapolation", self.extrapolation_length, self.extrapolation or ()),
        ):
            # long sequences cost T times more: cap the steps, not the sequences
            count = max(16, min(n, 1_000_000 // (length * self.input_size)))
            x = self._draw(generator, count, length, ranges, dtype)  # (N, T, in)
            sets[split] = (x, self.target(x))
        return sets

    def build_model(
        self,
        model: ModelConfig,
        *,
        population: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> PopulationModule:
        return RecurrentHead(
            model, self.input_size, 1, population=population, device=device, dtype=dtype
        )

    def threshold_rule_name(self) -> str:
        return "madsen2020"

    def threshold(self) -> float:
        return _recurrent_threshold(self)

    def to_config(self) -> TaskConfig:
        options: dict[str, Any] = {
            "input_size": self.input_size,
            "subset_ratio": self.subset_ratio,
            "overlap_ratio": self.overlap_ratio,
            "subset_seed": self.subset_seed,
            "length": self.length,
            "extrapolation_length": self.extrapolation_length,
            "interpolation": [list(r) for r in self.interpolation],
            "extrapolation": [list(r) for r in self.extrapolation or ()],
            "epsilon": self.epsilon,
        }
        return TaskConfig(name=self.name, op=self.op, options=options)


@functools.lru_cache(maxsize=64)
def _recurrent_threshold(task: RecurrentArithmetic, samples: int = 20_000) -> float:
    """Madsen's criterion carried over to sequences: the extrapolation MSE of the accumulator
    whose first-layer weights are 1 - ε (relevant) and ε (irrelevant), the op exact, as the
    paper's static definition (float64, fixed seed)."""
    gen = torch.Generator().manual_seed(1_234_567)
    eps = task.epsilon
    assert task.extrapolation is not None  # set in __post_init__
    mask_a = torch.full((task.input_size,), eps, dtype=torch.float64)
    mask_b = mask_a.clone()
    mask_a[task.a_slice[0] : task.a_slice[1]] = 1 - eps
    mask_b[task.b_slice[0] : task.b_slice[1]] = 1 - eps
    chunk = max(1, min(samples, _EVAL_STEPS * 16 // task.extrapolation_length))
    total, done = 0.0, 0
    while done < samples:
        n = min(chunk, samples - done)
        x = task._draw(gen, n, task.extrapolation_length, task.extrapolation, torch.float64)
        s = x.sum(1)  # (N, in): the sums over steps
        y = _madsen_near_perfect(task.op, s @ mask_a, s @ mask_b)  # (N,): the op is exact
        total += float((y - task.target(x).squeeze(-1)).pow(2).sum())
        done += n
    return total / samples


_RECURRENT_OPTIONS = (
    "input_size",
    "subset_ratio",
    "overlap_ratio",
    "subset_seed",
    "length",
    "extrapolation_length",
    "interpolation",
    "extrapolation",
    "epsilon",
)


def _build_recurrent(op: str, options: Mapping[str, Any]) -> Task:
    return RecurrentArithmetic(op=op, **options)


register_task(
    TaskSpec(
        name="recurrent",
        builder=_build_recurrent,
        ops=tuple(STATIC_OPS),
        options=_RECURRENT_OPTIONS,
        doc="Recurrent arithmetic over a sequence (Trask 2018 §4.2); LSTM/GRU/ReLU-RNN baselines.",
    )
)
