"""The population trainer: P seeds of one configuration trained as one batched program.

Replica ``p`` is seeded with ``seed + p``: its initial weights come from its own init
generator and its batches from its own data stream (a counter-based hash of its seed and the
step for tasks with ``counter_sampling``, else its own data generator), so a replica trains
the same way whatever the population size. Replicas share nothing but the program: the
loss is a sum of per-replica losses, clipping is per replica and Adam/RMSprop/SGD are
element-wise, so a diverged replica can be frozen without touching the others.

With ``data_streams = G < P`` the replicas form G consecutive groups of P/G; group g draws
one batch per step from the stream of its first replica (seed ``seed + g·P/G``) and all its
replicas train on it, each with its own init, optimiser state and divergence handling. The
network takes the (G, B, in) batch as it is (one layer-1 GEMM per group, see
``nalu_core._units.ungroup``). Seeds in a group are then correlated: results carry a
design-effect-adjusted interval and the intra-group correlation beside the plain Wilson one.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from nalu_core._config import RunConfig, TrainConfig
from nalu_core._device import resolve_device, resolve_dtype
from nalu_core._metrics import (
    clustered_wilson_interval,
    converged,
    late_share,
    median,
    population_mse,
    quantiles,
    succeeded,
    wilson_interval,
)
from nalu_core._optim import PopulationOptimizer
from nalu_core._registry import RegularizerSchedule
from nalu_core._tasks import PopulationModule, ProbeBin, Task, build_task
from nalu_core._tasks_sequence import SequenceTask, evaluate_splits, summarize_splits
from nalu_core._units import ungroup

Tensor = torch.Tensor

# Data generators are seeded away from init generators so the two streams never coincide.
_DATA_SEED_OFFSET = 0x5EED_0000_0000
_PROBE_SAMPLES_PER_BIN = 2_000
# A replica counts as improving when its interpolation MSE drops by this fraction.
_STALL_TOLERANCE = 1e-3


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass(frozen=True, kw_only=True)
class EvalReport:
    """One evaluation of all replicas. MSEs are those of this step; ``success`` applies
    Madsen's criterion to each replica at its best interpolation step so far."""

    step: int
    interpolation_mse: list[float]
    extrapolation_mse: list[float]
    success: list[bool]
    diverged: list[bool]
    solved_at: list[int | None]
    success_rate: float
    success_ci: tuple[float, float]
    train_seconds: float
    threshold: float | None = None
    # replicas that shared data streams are correlated: the interval widened by the design
    # effect, and the intra-group correlation it was estimated from (NaN: independent seeds)
    success_ci_adjusted: tuple[float, float] = (math.nan, math.nan)
    intra_group_correlation: float = math.nan
    # Trask et al. (2018): 100 = the randomly initialised replicas of this run, 0 = perfect
    normalized_interpolation_error: list[float] = field(default_factory=list)
    normalized_extrapolation_error: list[float] = field(default_factory=list)
    # per-replica MSE of every set the task evaluates, including any beyond the two above
    split_mse: dict[str, list[float]] = field(default_factory=dict)

    def metrics(self) -> dict[str, float]:
        """The flat metric names of docs/CONTRACTS.md."""
        out = {
            "success_rate": self.success_rate,
            **_interval_metrics(self.success_ci, self.success_ci_adjusted),
            "intra_group_correlation": self.intra_group_correlation,
            "diverged": float(sum(self.diverged)),
        }
        for split, values in (
            ("extrapolation", self.extrapolation_mse),
            ("interpolation", self.interpolation_mse),
        ):
            q25, q50, q75 = quantiles(values)
            out |= {f"{split}_mse_median": q50, f"{split}_mse_q25": q25, f"{split}_mse_q75": q75}
        if "train" in self.split_mse:
            # the tasks that evaluate their training distribution: the loss whose plateau
            # decides convergence (TrainResult.metrics)
            out["train_mse_median"] = median(self.split_mse["train"])
        return out


@dataclass(frozen=True, kw_only=True)
class SeedResult:
    """One replica at its best interpolation evaluation (Madsen's model selection)."""

    seed: int
    interpolation_mse: float
    extrapolation_mse: float
    success: bool
    solved_at: int | None
    sparsity_error: float
    diverged: bool
    diverged_at: int | None = None
    best_step: int | None = None
    normalized_extrapolation_error: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "interpolation_mse": _finite_or_none(self.interpolation_mse),
            "extrapolation_mse": _finite_or_none(self.extrapolation_mse),
            "success": self.success,
            "solved_at": self.solved_at,
            "sparsity_error": _finite_or_none(self.sparsity_error),
            "diverged": self.diverged,
            "diverged_at": self.diverged_at,
            "best_step": self.best_step,
            "normalized_extrapolation_error": _finite_or_none(self.normalized_extrapolation_error),
        }


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    config: RunConfig
    threshold: float | None
    success_rate: float
    success_ci: tuple[float, float]
    seeds: list[SeedResult]
    history: list[dict[str, float]]
    division_probe: dict[str, Any] | None
    steps: int = 0
    train_seconds: float = 0.0
    success_ci_adjusted: tuple[float, float] = (math.nan, math.nan)
    intra_group_correlation: float = math.nan
    threshold_rule: str | None = None
    threshold_epsilon: float | None = None
    # sequence tasks: their own metrics (MAE, accuracy) at each replica's best step
    task_metrics: dict[str, float] = field(default_factory=dict)
    _best_state: dict[str, Tensor] = field(default_factory=dict, repr=False, compare=False)

    def metrics(self) -> dict[str, float]:
        """Final flat metrics: the EvalReport names plus solved_at/sparsity/threshold."""
        seeds = self.seeds
        out = {
            "success_rate": self.success_rate,
            **_interval_metrics(self.success_ci, self.success_ci_adjusted),
            "intra_group_correlation": self.intra_group_correlation,
            "diverged": float(sum(s.diverged for s in seeds)),
        }
        for split in ("extrapolation", "interpolation"):
            q25, q50, q75 = quantiles([getattr(s, f"{split}_mse") for s in seeds])
            out |= {f"{split}_mse_median": q50, f"{split}_mse_q25": q25, f"{split}_mse_q75": q75}
        # as stable-nalu's R summary (_compute_summary.r): over the solved seeds only (a seed
        # that crossed the threshold once but fails at its best step does not count) with R's
        # median (the mean of the middle two); the sparsity error's mean likewise
        solved = [s for s in seeds if s.success and s.solved_at is not None]
        out["solved_at_median"] = median([float(s.solved_at) for s in solved])  # type: ignore[arg-type]
        # the median over every seed, as before (not a reference figure), and the reference's mean
        out["sparsity_error_median"] = median([s.sparsity_error for s in seeds])
        sparsity = [s.sparsity_error for s in solved if math.isfinite(s.sparsity_error)]
        out["sparsity_error_mean"] = sum(sparsity) / len(sparsity) if sparsity else math.nan
        out["threshold"] = math.nan if self.threshold is None else self.threshold
        out |= self.task_metrics
        curve = [h["train_mse_median"] for h in self.history if "train_mse_median" in h]
        if curve:
            out["train_mse_late_share"] = late_share(curve)
            out["converged"] = float(converged(curve))
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ``nalu-study train --json`` schema (docs/training.md)."""
        return {
            "schema": "nalu-study/train/1",
            "configuration": self.config.to_dict(),
            "threshold": self.threshold,
            "threshold_rule": self.threshold_rule,
            "threshold_epsilon": self.threshold_epsilon,
            "steps": self.steps,
            "train_seconds": self.train_seconds,
            "success_rate": self.success_rate,
            "success_ci": list(self.success_ci),
            "success_ci_adjusted": [_finite_or_none(v) for v in self.success_ci_adjusted],
            "intra_group_correlation": _finite_or_none(self.intra_group_correlation),
            "metrics": {k: _finite_or_none(v) for k, v in self.metrics().items()},
            "seeds": [s.to_dict() for s in self.seeds],
            "history": [{k: _finite_or_none(v) for k, v in h.items()} for h in self.history],
            "division_probe": self.division_probe,
        }

    def best_replica_state(self) -> dict[str, Tensor]:
        """Parameters (without the replica dim) of the best replica at its best step."""
        return dict(self._best_state)


def _schedules(config: RunConfig) -> list[RegularizerSchedule]:
    """One schedule per layer: the unit's published one (any kind) unless TrainConfig sets
    ``regularizer_*``, which then give a linear schedule (unset fields from the unit's)."""
    from nalu_core._registry import UNITS

    train = config.train
    override = (train.regularizer_lambda, train.regularizer_start, train.regularizer_end)
    out = []
    for layer in config.model.layers:
        spec = UNITS.get(layer.unit)
        published = spec.regularizer if spec is not None else None
        if published is not None and all(v is None for v in override):
            out.append(published)
            continue
        lam = train.regularizer_lambda
        if lam is None:
            lam = published.lambda_ if published is not None else 0.0
        start = train.regularizer_start
        if start is None:
            start = published.start if published is not None else 0
        end = train.regularizer_end
        if end is None:
            end = published.end if published is not None and published.end >= start else start
        out.append(RegularizerSchedule(lambda_=float(lam), start=int(start), end=int(end)))
    return out


@contextlib.contextmanager
def _eval_mode(module: object) -> Iterator[None]:
    """``module.eval()`` for the duration (e.g. the NMRU's exact reciprocal at evaluation)."""
    train = getattr(module, "train", None)
    was = bool(getattr(module, "training", True))
    if train is not None:
        train(False)
    try:
        yield
    finally:
        if train is not None:
            train(was)


def _replica_view(mask: Tensor, like: Tensor) -> Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


class PopulationTrainer:
    """Trains ``config.train.seeds`` replicas of ``config``; see the module docstring.

    ``run()`` yields an :class:`EvalReport` every ``eval_every`` steps and at the last step;
    ``result()`` summarises. ``state_dict()``/``load_state_dict()`` cover everything needed
    for a bit-identical continuation on CPU.
    """

    def __init__(self, config: RunConfig, *, task: Task | None = None) -> None:
        self.config = config
        self.train_config: TrainConfig = config.train
        task = task if task is not None else build_task(config.task)
        self.device = resolve_device(self.train_config.device)
        self.dtype = resolve_dtype(self.train_config.dtype)
        self.population = P = self.train_config.seeds
        seeds = [self.train_config.seed + p for p in range(P)]
        self.seeds = seeds
        # e.g. the static task's per-seed subset offsets (stable-nalu draws them per seed)
        self.task = task.for_replicas(seeds)
        self.init_generators = [self._generator(s) for s in seeds]
        self.data_generators = [self._generator(s + _DATA_SEED_OFFSET) for s in seeds]
        # G groups of P/G replicas; group g draws from its first replica's stream
        self.groups = self.train_config.data_streams or P
        self.group_size = P // self.groups
        leaders = seeds[:: self.group_size]
        # counter-based streams (tasks with ``counter_sampling``): the state is the step
        self.data_seeds = torch.tensor(
            [s + _DATA_SEED_OFFSET for s in leaders], dtype=torch.int64, device=self.device
        )
        # CUDA: no host syncs in the step (masks are applied unconditionally instead)
        self._sync_free = self.device.type != "cpu"
        self._batch_buffer: Tensor | None = None
        self.network: PopulationModule = self.task.build_model(
            config.model, population=P, device=self.device, dtype=self.dtype
        )
        self.network.reset_parameters(self.init_generators)
        self._grouped_input = bool(getattr(self.network, "accepts_groups", False))
        if self.groups < P:
            # shared streams are not pinned to the reference layout's numbers (see
            # nalu_core._units.PopulationModule.batch_major)
            for module in self.network.modules():  # type: ignore[attr-defined]
                if hasattr(module, "batch_major"):
                    module.batch_major = True
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        self.optimizer = self._build_optimizer()
        self.schedules = _schedules(config)
        self.step = 0
        self.train_seconds = 0.0
        self._stop_requested = False
        self.history: list[dict[str, float]] = []

        eval_gen = self._generator(getattr(self.task, "eval_seed", 0))
        self.eval_sets = self.task.evaluation_sets(
            eval_gen, self.train_config.eval_samples, dtype=self.dtype
        )
        self.threshold = self.task.threshold()
        # Trask's normalisation: the mean MSE of the freshly initialised replicas
        initial = self._evaluate_mse()
        self.baseline = {split: _finite_mean(mse) for split, mse in initial.items()}

        inf = torch.full((P,), math.inf, dtype=torch.float64, device=self.device)
        minus_one = torch.full((P,), -1, dtype=torch.long, device=self.device)
        self.best_interpolation = inf.clone()
        self.best_extrapolation = inf.clone()
        self.best_step = minus_one.clone()
        self.solved_at = minus_one.clone()
        self.diverged_at = minus_one.clone()
        self.stalled = torch.zeros(P, dtype=torch.long, device=self.device)
        self.stall_reference = inf.clone()
        # the interpolation MSE of the last evaluation (a gated regulariser reads it)
        self.last_interpolation = inf.clone()
        self.best_params = {n: p.detach().clone() for n, p in self.network.named_parameters()}

    # --- set-up -------------------------------------------------------------------------

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def _build_optimizer(self) -> PopulationOptimizer:
        cfg = self.train_config
        return PopulationOptimizer(self.params, name=cfg.optimizer, lr=cfg.lr)

    # --- masks --------------------------------------------------------------------------

    @property
    def diverged(self) -> Tensor:
        return self.diverged_at >= 0

    @property
    def success(self) -> Tensor:
        return succeeded(self.best_extrapolation, self.threshold) & ~self.diverged

    def _frozen(self) -> Tensor:
        frozen = self.diverged
        if self.train_config.stop_when_solved:
            frozen = frozen | self.success
        return frozen

    # --- training -----------------------------------------------------------------------

    def run(self) -> Iterator[EvalReport]:
        """Trains up to ``train.steps``, yielding a report at every evaluation.

        It returns early, after the current step, once :meth:`request_stop` was called.
        """
        self._stop_requested = False  # here, not in the generator: a stop before its start holds
        return self._run()

    def _run(self) -> Iterator[EvalReport]:
        cfg = self.train_config
        while self.step < cfg.steps and not self._stop_requested:
            start = time.perf_counter()
            self._train_step()
            self.step += 1
            report = None
            if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                report = self._evaluate()
            self.train_seconds += time.perf_counter() - start
            if report is not None:
                yield _with_seconds(report, self.train_seconds)
                if cfg.stop_when_solved and bool(self._frozen().all()):
                    return  # every replica solved (or diverged): nothing left to train

    def request_stop(self) -> None:
        """Ends a ``run()`` in progress (on another thread) after its current step."""
        self._stop_requested = True

    def _regularization(self) -> Tensor | None:
        weights = [s.weight(self.step) for s in self.schedules]
        if not any(weights):
            return None
        gated = any(s.max_interpolation_mse is not None for s in self.schedules)
        layers = getattr(self.network, "layers", None)
        if layers is not None and len(layers) == len(weights) and (len(set(weights)) > 1 or gated):
            terms = []
            for w, s, layer in zip(weights, self.schedules, layers, strict=True):
                if w == 0:
                    continue
                term = w * layer.regularization()  # (P,)
                if s.max_interpolation_mse is not None:
                    # Schlör's iNALU term: only replicas whose fit is already close
                    term = term * (self.last_interpolation < s.max_interpolation_mse)
                terms.append(term)
            return torch.stack(terms).sum(0)  # (P,)
        return weights[-1] * self.network.regularization()  # (P,)

    def _train_step(self) -> None:
        frozen = self._frozen()
        x, t = self._sample()  # (G, B, ...), (G, B, out)
        P = self.population
        if not self._grouped_input:
            x = ungroup(x, P)
        y = self.network(x)  # (P, B, out)
        loss = self.task.loss(y, ungroup(t, P))  # (P,)
        reg = self._regularization()
        if reg is not None:
            loss = loss + reg
        bad = ~torch.isfinite(loss)
        # a replica that is already frozen or blows up now contributes nothing to the sum;
        # on CPU the check saves the masking work, on CUDA it would cost a host sync
        skip = frozen | bad
        masked = self._sync_free or bool(skip.any())
        objective = torch.where(skip, 0.0, loss).sum() if masked else loss.sum()
        self.optimizer.zero_grad()
        objective.backward()  # type: ignore[no-untyped-call]
        bad = bad | self._nonfinite_grads()
        skip = frozen | bad
        if self._sync_free or bool(skip.any()):
            self._mask_grads(skip)
        self._clip_grads()
        before = [p.detach().clone() for p in self.params]
        self.optimizer.step()
        with torch.no_grad():
            self.network.clamp_()
            bad = bad | self._nonfinite_params()
            skip = frozen | bad
            if self._sync_free or bool(skip.any()):
                for p, old in zip(self.params, before, strict=True):
                    # the pre-step values are finite unless someone edited them in between
                    old = torch.nan_to_num(old, nan=0.0, posinf=0.0, neginf=0.0)
                    p.copy_(torch.where(_replica_view(skip, p), old, p))
        new = bad & ~frozen
        if self._sync_free:
            self.diverged_at = torch.where(new, self.step, self.diverged_at)
            self._reset_optimizer_state(new)
        elif bool(new.any()):
            self.diverged_at[new] = self.step
            self._reset_optimizer_state(new)

    def _sample(self) -> tuple[Tensor, Tensor]:
        """This step's batch, one per group: ``x (G, B, ...)``, ``t (G, B, out)``."""
        batch = self.train_config.batch_size
        if not self.task.counter_sampling:
            generators = self.data_generators[:: self.group_size]
            return self.task.sample(generators, batch, dtype=self.dtype)
        x, t = self.task.sample_at(
            self.data_seeds, self.step, batch, dtype=self.dtype, out=self._batch_buffer
        )
        # the last step's batch is dead once its backward ran: reuse its memory
        self._batch_buffer = x
        return x, t

    def _nonfinite_grads(self) -> Tensor:
        bad = torch.zeros(self.population, dtype=torch.bool, device=self.device)
        for p in self.params:
            if p.grad is not None:
                bad |= _nonfinite_rows(p.grad)
        return bad

    def _nonfinite_params(self) -> Tensor:
        bad = torch.zeros(self.population, dtype=torch.bool, device=self.device)
        for p in self.params:
            bad |= _nonfinite_rows(p)
        return bad

    def _mask_grads(self, skip: Tensor) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.copy_(torch.where(_replica_view(skip, p), 0.0, p.grad))

    def _clip_grads(self) -> None:
        cfg = self.train_config
        grads = [p.grad for p in self.params if p.grad is not None]
        if cfg.clip == "value":
            for g in grads:
                g.clamp_(-cfg.clip_value, cfg.clip_value)
        elif cfg.clip == "norm":
            # per replica: one replica's large gradient must not shrink the others' steps
            sq = sum(g.pow(2).flatten(1).sum(1) for g in grads)  # (P,)
            assert isinstance(sq, Tensor)
            scale = (cfg.clip_value / (sq.sqrt() + 1e-6)).clamp(max=1.0)  # (P,)
            for g in grads:
                g.mul_(_replica_view(scale, g))

    def _reset_optimizer_state(self, mask: Tensor) -> None:
        """Zeroes the optimiser's per-element state of the ``mask``ed replicas."""
        for p in self.params:
            state = self.optimizer.state.get(p, {})
            for value in state.values():
                if isinstance(value, Tensor) and value.shape == p.shape:
                    value.copy_(torch.where(_replica_view(mask, value), 0.0, value))

    # --- evaluation ---------------------------------------------------------------------

    def _evaluate_mse(self) -> dict[str, Tensor]:
        with _eval_mode(self.network):
            return self._evaluate_splits()

    def _evaluate_splits(self) -> dict[str, Tensor]:
        return {
            split: population_mse(
                self.network,
                x,
                t,
                population=self.population,
                per_replica_targets=self.task.per_replica_targets,
            )
            for split, (x, t) in self.eval_sets.items()
        }

    def _evaluate(self) -> EvalReport:
        mse = self._evaluate_mse()
        diverged = self.diverged
        inf = torch.full_like(mse["interpolation"], math.inf)
        interp = torch.where(diverged, inf, mse["interpolation"])  # (P,)
        extrap = torch.where(diverged, inf, mse["extrapolation"])  # (P,)
        self.last_interpolation = interp
        improved = interp < self.best_interpolation
        self.best_interpolation = torch.where(improved, interp, self.best_interpolation)
        self.best_extrapolation = torch.where(improved, extrap, self.best_extrapolation)
        self.best_step = torch.where(improved, self.step, self.best_step)
        with torch.no_grad():
            for name, p in self.network.named_parameters():
                best = self.best_params[name]
                best.copy_(torch.where(_replica_view(improved, best), p, best))
        solved_now = succeeded(extrap, self.threshold) & (self.solved_at < 0)
        self.solved_at = torch.where(solved_now, self.step, self.solved_at)
        if self.train_config.reinit_stalled:
            self._reinit_stalled(interp)

        success = self.success
        n_success = int(success.sum())
        report = EvalReport(
            step=self.step,
            interpolation_mse=interp.tolist(),
            extrapolation_mse=extrap.tolist(),
            success=success.tolist(),
            diverged=diverged.tolist(),
            solved_at=[s if s >= 0 else None for s in self.solved_at.tolist()],
            success_rate=n_success / self.population,
            success_ci=wilson_interval(n_success, self.population),
            train_seconds=self.train_seconds,
            threshold=self.threshold,
            **self._clustered(success.tolist()),
            normalized_interpolation_error=self._normalized(interp, "interpolation"),
            normalized_extrapolation_error=self._normalized(extrap, "extrapolation"),
            split_mse={
                split: torch.where(diverged, inf, value).tolist() for split, value in mse.items()
            },
        )
        self.history.append({"step": float(self.step), **report.metrics()})
        return report

    def _clustered(self, success: list[bool]) -> dict[str, Any]:
        interval, rho, _ = clustered_wilson_interval(success, self.groups)
        return {"success_ci_adjusted": interval, "intra_group_correlation": rho}

    def _normalized(self, mse: Tensor, split: str) -> list[float]:
        baseline = self.baseline.get(split, math.nan)
        if not math.isfinite(baseline) or baseline <= 0:
            return [math.nan] * self.population
        return (100.0 * mse / baseline).tolist()

    def _reinit_stalled(self, interp: Tensor) -> None:
        """iNALU (Schlör et al. 2020): re-initialise a replica whose interpolation error has
        not improved for ``reinit_patience`` evaluations and that has not succeeded."""
        improving = interp < self.stall_reference * (1 - _STALL_TOLERANCE)
        self.stall_reference = torch.where(improving, interp, self.stall_reference)
        self.stalled = torch.where(improving, 0, self.stalled + 1)
        reset = (self.stalled >= self.train_config.reinit_patience) & ~self.success
        reset &= ~self.diverged
        if not bool(reset.any()):
            return
        with torch.no_grad():
            old = [p.detach().clone() for p in self.params]
            # every init generator advances, so the result does not depend on which reset
            self.network.reset_parameters(self.init_generators)
            for p, before in zip(self.params, old, strict=True):
                p.copy_(torch.where(_replica_view(reset, p), p, before))
        self._reset_optimizer_state(reset)
        self.stalled = torch.where(reset, 0, self.stalled)
        self.stall_reference = torch.where(
            reset, torch.full_like(self.stall_reference, math.inf), self.stall_reference
        )

    # --- results ------------------------------------------------------------------------

    def _swap_in_best(self) -> list[Tensor]:
        with torch.no_grad():
            current = [p.detach().clone() for p in self.network.parameters()]
            for name, p in self.network.named_parameters():
                p.copy_(self.best_params[name])
        return current

    def _swap_back(self, current: list[Tensor]) -> None:
        with torch.no_grad():
            for p, value in zip(self.network.parameters(), current, strict=True):
                p.copy_(value)

    def result(self) -> TrainResult:
        """Summary of every replica at its best interpolation evaluation."""
        current = self._swap_in_best()
        try:
            with torch.no_grad():
                sparsity = self.network.sparsity_error().double()  # (P,)
            probe = self._division_probe()
            task_metrics = self._task_metrics()
        finally:
            self._swap_back(current)
        success = self.success
        diverged = self.diverged
        n_success = int(success.sum())
        baseline = self.baseline.get("extrapolation", math.nan)
        seeds = []
        for p in range(self.population):
            best_step = int(self.best_step[p])
            extrap = float(self.best_extrapolation[p])
            seeds.append(
                SeedResult(
                    seed=self.seeds[p],
                    interpolation_mse=float(self.best_interpolation[p]),
                    extrapolation_mse=extrap,
                    success=bool(success[p]),
                    solved_at=int(self.solved_at[p]) if self.solved_at[p] >= 0 else None,
                    sparsity_error=float(sparsity[p]),
                    diverged=bool(diverged[p]),
                    diverged_at=int(self.diverged_at[p]) if diverged[p] else None,
                    best_step=best_step if best_step >= 0 else None,
                    normalized_extrapolation_error=100.0 * extrap / baseline
                    if math.isfinite(baseline) and baseline > 0
                    else math.nan,
                )
            )
        return TrainResult(
            config=self.config,
            threshold=self.threshold,
            success_rate=n_success / self.population,
            success_ci=wilson_interval(n_success, self.population),
            **self._clustered(success.tolist()),
            seeds=seeds,
            history=list(self.history),
            division_probe=probe,
            steps=self.step,
            train_seconds=self.train_seconds,
            threshold_rule=self.task.threshold_rule_name(),
            threshold_epsilon=getattr(self.task, "epsilon", None),
            task_metrics=task_metrics,
            _best_state=self._best_replica_state(),
        )

    def _task_metrics(self) -> dict[str, float]:
        """A sequence task's own metrics (MAE, accuracy) of the parameters in the network."""
        if not isinstance(self.task, SequenceTask):
            return {}
        report = evaluate_splits(
            self.task, self.network, self.eval_sets, population=self.population
        )
        return summarize_splits(report, diverged=self.diverged.tolist())

    def _best_replica_state(self) -> dict[str, Tensor]:
        # rank: successes first, then the lowest extrapolation MSE at the best step
        key = torch.nan_to_num(self.best_extrapolation.clone(), nan=math.inf)
        key[self.diverged] = math.inf
        success = self.success
        if bool(success.any()):
            key[~success] = math.inf
        best = int(torch.argmin(key))
        return {n: v[best].detach().cpu().clone() for n, v in self.best_params.items()}

    def _division_probe(self) -> dict[str, Any] | None:
        gen = self._generator(getattr(self.task, "eval_seed", 0) + 1)
        bins: list[ProbeBin] = self.task.division_probe_sets(
            gen, _PROBE_SAMPLES_PER_BIN, dtype=self.dtype
        )
        if not bins:
            return None
        keep = ~self.diverged
        with _eval_mode(self.network):
            return self._probe_bins(bins, keep)

    def _probe_bins(self, bins: list[ProbeBin], keep: Tensor) -> dict[str, Any]:
        out = []
        for b in bins:
            mse, rel = (
                population_mse(
                    self.network,
                    b.x,
                    b.t,
                    population=self.population,
                    relative=relative,
                    shifts=b.shifts,
                )
                for relative in (False, True)
            )
            mse_kept = mse[keep].tolist()
            rel_kept = rel[keep].tolist()
            out.append(
                {
                    "lo": b.lo,
                    "hi": b.hi,
                    "mse_median": _finite_or_none(median(mse_kept)) if mse_kept else None,
                    "relative_error_median": _finite_or_none(median(rel_kept))
                    if rel_kept
                    else None,
                    "mse": [_finite_or_none(v) for v in mse.tolist()],
                    "relative_error": [_finite_or_none(v) for v in rel.tolist()],
                }
            )
        return {"denominator": "|b|", "samples_per_bin": _PROBE_SAMPLES_PER_BIN, "bins": out}

    # --- state --------------------------------------------------------------------------

    _TRACKING = (
        "best_interpolation",
        "best_extrapolation",
        "best_step",
        "solved_at",
        "diverged_at",
        "stalled",
        "stall_reference",
        "last_interpolation",
    )

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "network": {k: v.clone() for k, v in self.network_state().items()},
            "optimizer": self.optimizer.state_dict(),
            "init_generators": [g.get_state() for g in self.init_generators],
            "data_generators": [g.get_state() for g in self.data_generators],
            "tracking": {k: getattr(self, k).clone() for k in self._TRACKING},
            "best_params": {k: v.clone() for k, v in self.best_params.items()},
            "baseline": dict(self.baseline),
            "history": [dict(h) for h in self.history],
        }

    def network_state(self) -> dict[str, Tensor]:
        return {n: p.detach() for n, p in self.network.named_parameters()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["config"] != self.config.to_dict():
            raise ValueError("the saved state belongs to a different configuration")
        with torch.no_grad():
            for name, p in self.network.named_parameters():
                p.copy_(state["network"][name])
            for name, value in state["best_params"].items():
                self.best_params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        for g, s in zip(self.init_generators, state["init_generators"], strict=True):
            g.set_state(s)
        for g, s in zip(self.data_generators, state["data_generators"], strict=True):
            g.set_state(s)
        for key in self._TRACKING:
            if key in state["tracking"]:  # older states lack last_interpolation
                setattr(self, key, state["tracking"][key].clone().to(self.device))
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.baseline = dict(state["baseline"])
        self.history = [dict(h) for h in state["history"]]


def _nonfinite_rows(t: Tensor) -> Tensor:
    """Replicas (P,) of ``t (P, ...)`` holding a NaN or an infinity.

    0·v is 0 for a finite v and NaN otherwise, so a row's sum of them is NaN exactly when
    the row has a non-finite entry (never a finite overflow): two passes over the row where
    ``isfinite(t).all()`` takes four (abs, two compares, the reduction over bools)."""
    with torch.no_grad():
        return torch.isnan(t.detach().flatten(1).mul(0).sum(1))


def _interval_metrics(
    plain: tuple[float, float], adjusted: tuple[float, float]
) -> dict[str, float]:
    return {
        "success_lower": plain[0],
        "success_upper": plain[1],
        "success_lower_adjusted": adjusted[0],
        "success_upper_adjusted": adjusted[1],
    }


def _finite_mean(values: Tensor) -> float:
    finite = values[torch.isfinite(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def _with_seconds(report: EvalReport, seconds: float) -> EvalReport:
    from dataclasses import replace

    return replace(report, train_seconds=seconds)
