"""Study specs: one YAML file says what to search, on which tasks, for how long, and how.

A spec is parsed and validated completely before anything is started or written, so that a
malformed one stops ``nalu-study launch`` with exit code 2 and a :class:`SpecError` naming the
offending key (``pruner.options.n_warmup_steps``). See ``docs/studies.md`` for the format.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import optuna
import yaml

from nalu_core import RANGE_PRESETS, ConfigError, TaskConfig, TrainConfig
from search_spaces._yaml import load_yaml
from study._errors import InvalidSpecError, SettingsError, SpecError
from study._settings import ENV_VARS, check_study_name

SAMPLERS = ("tpe", "cmaes", "random", "grid")
PRUNERS = ("median", "percentile", "successive-halving", "hyperband", "none")
OBJECTIVE_METRICS = ("success_lower", "success_rate")
TIE_BREAKS = ("extrapolation_mse_median", "interpolation_mse_median", "none")
# numpy's and torch's generators take seeds below 2**32; the per-task offsets stay inside
MAX_SEED = 2**32 - 1
# What any one number in a spec may be: far above any real study, far below what would hang
# a launch or allocate without end. Requests are also checked against the cluster at launch.
LIMITS = {
    "budget.num_samples": 1_000_000,
    "budget.max_concurrent": 10_000,
    "training.seeds": 100_000,
    "training.steps": 10**9,
    "training.eval_every": 10**9,
    "training.checkpoint_every": 10**6,
    "training.max_failures": 1000,
    "resources.cpus": 10_000,
    "resources.gpus": 1000,
}
# One trial's tensors (inputs, activations, gradients of every replica), estimated from the
# study's sizes before anything is allocated; more than this fits no machine we know
MAX_TRIAL_BYTES = 256 * 2**30


def _short_repr() -> reprlib.Repr:
    """A ``repr`` of bounded length: error messages never print a huge (expanded) value."""
    short = reprlib.Repr()
    short.maxstring = short.maxother = 60
    short.maxlist = short.maxdict = short.maxtuple = 6
    short.maxlevel = 2
    return short


_show = _short_repr().repr
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SECTIONS = (
    "name",
    "description",
    "tasks",
    "space",
    "training",
    "budget",
    "sampler",
    "pruner",
    "objective",
    "resources",
    "settings",
)


def _fail(message: str, where: str) -> SpecError:
    return SpecError(f"{where}: {message}", field=where)


def _mapping(data: object, where: str) -> Mapping[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise _fail(f"must be a mapping, got {_show(data)}", where)
    return data


def _only(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise _fail(f"unknown key; allowed: {sorted(allowed)}", key)


def _int(value: object, where: str, *, minimum: int = 1, maximum: int | None = None) -> int:
    maximum = LIMITS.get(where, maximum)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(f"must be an int >= {minimum}, got {_show(value)}", where)
    if maximum is not None and value > maximum:
        raise _fail(f"must be at most {maximum}, got {_show(value)}", where)
    return value


def _number(value: object, where: str, *, minimum: float = 0.0) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) < minimum:  # type: ignore[arg-type]
        raise _fail(f"must be a finite number >= {minimum}, got {_show(value)}", where)
    maximum = LIMITS.get(where)
    if maximum is not None and float(value) > maximum:  # type: ignore[arg-type]
        raise _fail(f"must be at most {maximum}, got {_show(value)}", where)
    return float(value)  # type: ignore[arg-type]


def parse_duration(value: object, where: str = "budget.time_limit") -> float | None:
    """``None``, seconds, or a string such as ``"90s"``, ``"10m"``, ``"2h"``."""
    if value is None:
        return None
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise _fail(
                f"must be seconds or a duration like '10m' or '2h', got {_show(value)}", where
            )
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    else:
        seconds = _number(value, where)
    if seconds <= 0:
        raise _fail(f"must be > 0, got {_show(value)}", where)
    return seconds


@dataclass(frozen=True, kw_only=True)
class TrainingSpec:
    """How each trial trains: ``seeds`` replicas of one configuration for ``steps`` steps.

    ``options`` holds any other :class:`nalu_core.TrainConfig` field (``batch_size``, ``device``,
    ...) that the search space does not set. The trainer state is checkpointed every
    ``checkpoint_every`` evaluations; a failed trial is retried ``max_failures`` times from it.
    ``ranges`` (range presets) makes each trial train its configuration on every one of them,
    scored over all their seeds together (Mistry's 9 range pairs; ``study/_sweep.py``).
    """

    seeds: int = 16
    steps: int = 5000
    eval_every: int = 500
    checkpoint_every: int = 2
    max_failures: int = 2
    # G groups of seeds/G replicas sharing one batch per step (None: one stream per seed)
    data_streams: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    ranges: tuple[str, ...] = ()

    def train_overrides(self) -> dict[str, Any]:
        return {
            **dict(self.options),
            "seeds": self.seeds,
            "steps": self.steps,
            "eval_every": self.eval_every,
            "data_streams": self.data_streams,
        }


@dataclass(frozen=True, kw_only=True)
class BudgetSpec:
    """``num_samples`` finished trials per task × op, and/or a wall-clock ``time_limit``.

    ``num_samples: null`` (unlimited) needs a ``time_limit``.
    """

    num_samples: int | None = 8
    time_limit: float | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True, kw_only=True)
class SamplerSpec:
    """``enqueue``: points (parameter -> value) each new per-task study tries first, such as a
    published configuration the search should start from."""

    name: str = "tpe"
    seed: int | None = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    enqueue: tuple[Mapping[str, Any], ...] = ()

    def build(self, *, offset: int = 0, done: int = 0) -> optuna.samplers.BaseSampler:
        """A fresh sampler; ``offset`` decorrelates the per-task studies' seeds.

        ``done`` is the number of trials the study already holds: a resumed launch seeds its
        sampler apart from the first one's, so that a seeded sampler does not replay its
        opening picks (the same seed would draw the same first configurations again).
        """
        seed = None if self.seed is None else (self.seed + offset + 7919 * done) % (MAX_SEED + 1)
        options = dict(self.options)
        if self.name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **options)
        if self.name == "cmaes":
            return optuna.samplers.CmaEsSampler(seed=seed, **options)
        if self.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        grid = {k: list(v) for k, v in options.pop("search_space").items()}
        return BudgetGridSampler(grid, seed=seed, **options)


class BudgetGridSampler(optuna.samplers.GridSampler):
    """``GridSampler`` that leaves stopping to the study's budget.

    Optuna's ``after_trial`` calls ``study.stop()`` once the grid is exhausted, which raises
    ``RuntimeError`` outside ``Study.optimize``: Ray Tune tells trials through ``Study.tell``,
    so the last grid point would crash the launch. Our per-task quota ends the study instead;
    past the grid's end the sampler revisits points, as ``GridSampler`` itself does.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: optuna.trial.TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return


@dataclass(frozen=True, kw_only=True)
class PrunerSpec:
    name: str = "median"
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self, *, max_resource: int) -> optuna.pruners.BasePruner:
        options = dict(self.options)
        if self.name == "median":
            return optuna.pruners.MedianPruner(**options)
        if self.name == "percentile":
            return optuna.pruners.PercentilePruner(**options)
        if self.name == "successive-halving":
            return optuna.pruners.SuccessiveHalvingPruner(**options)
        if self.name == "hyperband":
            options.setdefault("max_resource", max_resource)
            return optuna.pruners.HyperbandPruner(**options)
        return optuna.pruners.NopPruner()


@dataclass(frozen=True, kw_only=True)
class ObjectiveSpec:
    """Maximise ``metric``; ``tie_break`` (an MSE, lower is better) orders equal ``metric``s.

    The score is ``metric - 1e-6 * clip(log10(mse), -30, 30)``: the tie-break term stays within
    ±3e-5, below the smallest step of the Wilson bound for up to 1000 seeds, so it only decides
    between trials that solved the same number of seeds.
    """

    metric: str = "success_lower"
    tie_break: str = "extrapolation_mse_median"

    def score(self, metrics: Mapping[str, float]) -> float:
        value = float(metrics[self.metric])
        if self.tie_break == "none":
            return value
        mse = float(metrics.get(self.tie_break, math.inf))
        decades = math.log10(mse) if math.isfinite(mse) and mse > 0 else 30.0
        if mse == 0:
            decades = -30.0
        return value - 1e-6 * min(max(decades, -30.0), 30.0)


@dataclass(frozen=True, kw_only=True)
class ResourcesSpec:
    """Per-trial resources; ``gpus`` may be fractional (0.25 packs four trials on a GPU)."""

    cpus: float = 1.0
    gpus: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)

    def as_tune(self) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpus, **dict(self.custom)}


@dataclass(frozen=True, kw_only=True)
class StudySpec:
    """A validated study spec. ``tasks`` is the expanded task × op grid."""

    name: str
    description: str = ""
    tasks: tuple[TaskConfig, ...]
    space: str
    training: TrainingSpec = field(default_factory=TrainingSpec)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    resources: ResourcesSpec = field(default_factory=ResourcesSpec)
    settings: Mapping[str, str | None] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def task_keys(self) -> list[str]:
        return [task_key(t) for t in self.tasks]

    def train_config(self) -> TrainConfig:
        """The study's training settings alone (the space adds its hyperparameters)."""
        return TrainConfig.from_dict(self.training.train_overrides(), prefix="training")


def local_capacity() -> dict[str, float]:
    """What a local Ray instance started here will offer: Ray counts CPUs and GPUs this way."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_schedulable(spec: StudySpec, nodes: list[dict[str, float]]) -> None:
    """Refuses per-trial resources that no node can ever offer (Tune would wait forever).

    A trial runs on one node, so each request is compared with the largest node's.
    """
    wanted = {
        "CPU": (spec.resources.cpus, "resources.cpus"),
        "GPU": (spec.resources.gpus, "resources.gpus"),
        **{k: (v, f"resources.custom.{k}") for k, v in spec.resources.custom.items()},
    }
    for key, (amount, where) in wanted.items():
        if amount <= 0:
            continue
        most = max((n.get(key, 0.0) for n in nodes), default=0.0)
        if amount > most:
            raise SpecError(
                f"{where}: each trial asks for {amount:g} {key}, but the largest Ray node "
                f"offers {most:g}; no trial could ever be scheduled",
                field=where,
            )


def task_key(task: TaskConfig) -> str:
    """``static-add``: names the per-task Optuna study and the checkpoint folder."""
    return f"{task.name}-{task.op}"


def _parse_tasks(data: object) -> tuple[TaskConfig, ...]:
    if not isinstance(data, list) or not data:
        raise _fail(
            f"must be a non-empty list of {{name, ops, options}}, got {_show(data)}", "tasks"
        )
    tasks: list[TaskConfig] = []
    for i, entry in enumerate(data):
        where = f"tasks[{i}]"
        entry = _mapping(entry, where)
        _only(entry, ("name", "ops", "op", "options"), where)
        ops = entry.get("ops", [entry["op"]] if "op" in entry else None)
        if not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops):
            raise _fail(f"must be a non-empty list of op names, got {_show(ops)}", f"{where}.ops")
        for op in ops:
            try:
                task = TaskConfig(
                    name=entry.get("name", "static"), op=op, options=entry.get("options") or {}
                )
                _validate_task(task)
            except ConfigError as err:
                key = (err.field or "name").removeprefix("task.")
                raise _fail(str(err), f"{where}.{key}") from err
            tasks.append(task)
    keys = [task_key(t) for t in tasks]
    duplicate = next((k for k in keys if keys.count(k) > 1), None)
    if duplicate:
        raise _fail(f"task × op {_show(duplicate)} appears twice", "tasks")
    return tuple(tasks)


def _validate_task(task: TaskConfig) -> None:
    import nalu_core

    validate = getattr(nalu_core, "validate_task_config", None)
    if validate is not None:
        validate(task)


def _check_kwargs(factory: Callable[..., Any], options: Mapping[str, Any], where: str) -> None:
    """Rejects options that ``factory`` does not take, naming the first one."""
    params = inspect.signature(factory).parameters
    for key in options:
        if key not in params or key == "self":
            raise _fail(f"unknown option; allowed: {sorted(params)}", f"{where}.{key}")


def _parse_sampler(data: object) -> SamplerSpec:
    data = _mapping({"name": data} if isinstance(data, str) else data, "sampler")
    _only(data, ("name", "seed", "options", "enqueue"), "sampler")
    name = data.get("name", "tpe")
    if name not in SAMPLERS:
        raise _fail(f"must be one of {list(SAMPLERS)}, got {_show(name)}", "sampler.name")
    seed = data.get("seed", 0)
    if seed is not None:
        _int(seed, "sampler.seed", minimum=0, maximum=MAX_SEED)
    options = dict(_mapping(data.get("options"), "sampler.options"))
    if name == "grid":
        grid = options.get("search_space")
        if not isinstance(grid, Mapping) or not grid:
            raise _fail(
                "grid needs a mapping of parameter -> list of values",
                "sampler.options.search_space",
            )
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise _fail("must be a non-empty list", f"sampler.options.search_space.{key}")
    factories: dict[str, Callable[..., Any]] = {
        "tpe": optuna.samplers.TPESampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "random": optuna.samplers.RandomSampler,
        "grid": optuna.samplers.GridSampler,
    }
    _check_kwargs(factories[name], options, "sampler.options")
    enqueue = data.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(p, Mapping) for p in enqueue):
        raise _fail(f"must be a list of points (mappings), got {enqueue!r}", "sampler.enqueue")
    spec = SamplerSpec(
        name=name, seed=seed, options=options, enqueue=tuple(dict(p) for p in enqueue)
    )
    _try_build("sampler.options", lambda: spec.build())
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError as err:
            raise _fail("the cmaes sampler needs `pip install cmaes`", "sampler.name") from err
    return spec


def _parse_pruner(data: object, *, steps: int) -> PrunerSpec:
    data = _mapping({"name": data} if isinstance(data, str) else data, "pruner")
    _only(data, ("name", "options"), "pruner")
    name = data.get("name", "median")
    if name not in PRUNERS:
        raise _fail(f"must be one of {list(PRUNERS)}, got {_show(name)}", "pruner.name")
    options = dict(_mapping(data.get("options"), "pruner.options"))
    factories: dict[str, Callable[..., Any]] = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "none": optuna.pruners.NopPruner,
    }
    _check_kwargs(factories[name], options, "pruner.options")
    if name == "percentile" and "percentile" not in options:
        raise _fail("the percentile pruner needs a percentile", "pruner.options.percentile")
    spec = PrunerSpec(name=name, options=options)
    _try_build("pruner.options", lambda: spec.build(max_resource=steps))
    return spec


def _try_build(where: str, build: Callable[[], object]) -> None:
    try:
        build()
    except (TypeError, ValueError) as err:
        raise _fail(str(err), where) from err


def _parse_training(data: object) -> TrainingSpec:
    data = _mapping(data, "training")
    keys = (
        "seeds",
        "steps",
        "eval_every",
        "checkpoint_every",
        "max_failures",
        "data_streams",
        "options",
    )
    _only(data, (*keys, "ranges"), "training")
    defaults = TrainingSpec()
    values = {k: data.get(k, getattr(defaults, k)) for k in keys[:-1]}
    for key, value in values.items():
        if not (key == "data_streams" and value is None):
            _int(value, f"training.{key}", minimum=0 if key == "max_failures" else 1)
    options = dict(_mapping(data.get("options"), "training.options"))
    clash = sorted(set(options) & {"seeds", "steps", "eval_every", "data_streams"})
    if clash:
        raise _fail("set it in training, not in training.options", f"training.options.{clash[0]}")
    spec = TrainingSpec(**values, options=options, ranges=_parse_ranges(data.get("ranges")))
    try:
        TrainConfig.from_dict(spec.train_overrides(), prefix="")
    except ConfigError as err:
        key = err.field or ""
        where = f"training.{key}" if key in keys else f"training.options.{key}"
        raise _fail(str(err), where) from err
    return spec


def _parse_ranges(data: object) -> tuple[str, ...]:
    if data is None:
        return ()
    if not isinstance(data, list) or not data or not all(isinstance(r, str) for r in data):
        raise _fail(f"must be a non-empty list of range presets, got {data!r}", "training.ranges")
    for i, preset in enumerate(data):
        if preset not in RANGE_PRESETS:
            raise _fail(
                f"unknown range preset {preset!r}; known: {sorted(RANGE_PRESETS)}",
                f"training.ranges[{i}]",
            )
    if len(set(data)) != len(data):
        raise _fail(f"a range appears twice: {data!r}", "training.ranges")
    return tuple(data)


def _parse_budget(data: object) -> BudgetSpec:
    data = _mapping(data, "budget")
    _only(data, ("num_samples", "time_limit", "max_concurrent"), "budget")
    max_concurrent = data.get("max_concurrent")
    time_limit = parse_duration(data.get("time_limit"))
    num_samples = data.get("num_samples", 8)
    if num_samples is None and time_limit is None:
        raise _fail("null (unlimited) needs a budget.time_limit", "budget.num_samples")
    return BudgetSpec(
        num_samples=None if num_samples is None else _int(num_samples, "budget.num_samples"),
        time_limit=time_limit,
        max_concurrent=None
        if max_concurrent is None
        else _int(max_concurrent, "budget.max_concurrent"),
    )


def _parse_objective(data: object) -> ObjectiveSpec:
    data = _mapping(data, "objective")
    _only(data, ("metric", "tie_break", "direction"), "objective")
    metric = data.get("metric", "success_lower")
    if metric not in OBJECTIVE_METRICS:
        raise _fail(
            f"must be one of {list(OBJECTIVE_METRICS)}, got {_show(metric)}", "objective.metric"
        )
    tie_break = data.get("tie_break", "extrapolation_mse_median")
    if tie_break not in TIE_BREAKS:
        raise _fail(
            f"must be one of {list(TIE_BREAKS)}, got {_show(tie_break)}", "objective.tie_break"
        )
    if data.get("direction", "maximize") != "maximize":
        raise _fail("success rates are maximised; only 'maximize'", "objective.direction")
    return ObjectiveSpec(metric=metric, tie_break=tie_break)


def _parse_resources(data: object) -> ResourcesSpec:
    data = _mapping(data, "resources")
    _only(data, ("cpus", "gpus", "custom"), "resources")
    custom = _mapping(data.get("custom"), "resources.custom")
    for key, value in custom.items():
        _number(value, f"resources.custom.{key}")
    cpus = _number(data.get("cpus", 1), "resources.cpus")
    gpus = _number(data.get("gpus", 0), "resources.gpus")
    if gpus > 1 and gpus != int(gpus):
        raise _fail(f"fractions are only allowed below 1 GPU, got {gpus}", "resources.gpus")
    return ResourcesSpec(
        cpus=cpus, gpus=gpus, custom={str(k): float(v) for k, v in custom.items()}
    )


def _parse_settings(data: object) -> dict[str, str | None]:
    data = _mapping(data, "settings")
    _only(data, tuple(ENV_VARS), "settings")
    out: dict[str, str | None] = {}
    for key, value in data.items():
        if value is not None and not isinstance(value, str):
            raise _fail(f"must be a string, got {_show(value)}", f"settings.{key}")
        out[key] = value
    return out


def _parse_space(data: object, base_dir: Path | None) -> str:
    if not isinstance(data, str) or not data:
        raise _fail(f"must be a preset name or a file path, got {_show(data)}", "space")
    ref = data
    if base_dir is not None and (ref.endswith((".yaml", ".yml")) or "/" in ref):
        candidate = (base_dir / ref).resolve()
        if candidate.exists():
            ref = str(candidate)
    try:
        load_space(ref)
    except (ValueError, OSError) as err:
        raise _fail(str(err), "space") from err
    return ref


def _check_space_tasks(space_ref: str, tasks: tuple[TaskConfig, ...]) -> None:
    allowed = tuple(getattr(load_space(space_ref), "tasks", ()) or ())
    for i, task in enumerate(tasks):
        if allowed and task.name not in allowed:
            raise _fail(
                f"the space {_show(space_ref)} is written for tasks {list(allowed)}, "
                f"not {_show(task.name)}",
                f"tasks[{i}].name",
            )


def _check_enqueued(
    space_ref: str, sampler: SamplerSpec, tasks: tuple[TaskConfig, ...], training: TrainingSpec
) -> None:
    """Each enqueued point must build a RunConfig on every task, as a sampled one would."""
    space = load_space(space_ref)
    for i, point in enumerate(sampler.enqueue):
        for task in tasks:
            try:
                space.to_run_config(point, task=task, train=training.train_overrides())
            except (ValueError, TypeError) as err:
                raise _fail(str(err), f"sampler.enqueue[{i}]") from err


def load_space(ref: str) -> Any:
    """The search space for ``ref`` (preset name or file), from :mod:`search_spaces`."""
    import search_spaces

    loader = getattr(search_spaces, "load_space", None)
    if loader is None:
        raise SpecError("search_spaces.load_space is not available yet", field="space")
    return loader(ref)


def _largest(space: Any, name: str, default: int) -> int:
    """The largest value the space can give ``name`` (a fixed, int or categorical parameter)."""
    for param in getattr(space, "parameters", ()):
        if param.name != name:
            continue
        values = [getattr(param, a, None) for a in ("value", "high")]
        values += list(getattr(param, "choices", ()))
        numbers = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
        return max(numbers, default=default)
    return default


def trial_bytes(
    *, seeds: int, batch: int, width: int, dtype: str = "float32", eval_samples: int = 0
) -> int:
    """A rough upper bound of one trial's tensors: inputs, activations and gradients.

    Training: every replica holds a (batch, width) block per layer, and each is kept about
    8 times (input, output, gradients, Adam's moments, copies). Evaluation: the two shared
    (eval_samples, width) sets and each replica's targets on them, (seeds, eval_samples);
    the forward passes themselves go a chunk at a time (nalu_core's population_mse), so they
    add no (seeds, eval_samples, width) block.
    """
    itemsize = 8 if dtype == "float64" else 4
    train = seeds * batch * max(1, width) * 8
    evaluation = 2 * eval_samples * (max(1, width) + seeds)
    return (train + evaluation) * itemsize


def check_trial_size(
    *,
    seeds: int,
    batch: int,
    width: int,
    dtype: str,
    where: str,
    limit: int,
    eval_samples: int = 0,
) -> None:
    """Refuses sizes whose tensors could never be allocated, before anything is."""
    need = trial_bytes(
        seeds=seeds, batch=batch, width=width, dtype=dtype, eval_samples=eval_samples
    )
    if need > limit:
        raise _fail(
            f"one trial would need about {need / 2**30:.3g} GiB ({seeds} seeds × batch "
            f"{batch} × width {width}); at most {limit / 2**30:.3g} GiB fits",
            where,
        )


def _check_sizes(training: TrainingSpec, tasks: tuple[TaskConfig, ...], space_ref: str) -> None:
    space = load_space(space_ref)
    options = dict(training.options)
    defaults = TrainConfig()
    batch = _largest(space, "batch_size", int(options.get("batch_size", defaults.batch_size)))
    eval_samples = _largest(
        space, "eval_samples", int(options.get("eval_samples", defaults.eval_samples))
    )
    hidden = _largest(space, "hidden_size", 2)
    for i, task in enumerate(tasks):
        size = task.options.get("input_size", 2)
        width = max(size if isinstance(size, int) else 2, hidden)
        check_trial_size(
            seeds=training.seeds,
            batch=batch,
            eval_samples=eval_samples,
            width=width,
            dtype=str(options.get("dtype", "float32")),
            where=f"tasks[{i}].options.input_size" if width == size else "training",
            limit=MAX_TRIAL_BYTES,
        )


def parse_spec(data: object, *, base_dir: Path | None = None) -> StudySpec:
    """Validates a spec mapping (as read from YAML) into a :class:`StudySpec`.

    Every section is checked, and every problem found is reported at once
    (:class:`InvalidSpecError`, one :class:`SpecError` per problem), as ``spaces validate``
    reports a space's.
    """
    data = _mapping(data, "spec")
    errors: list[SpecError] = []

    def check(parse: Callable[[], Any], default: Any = None) -> Any:
        try:
            return parse()
        except InvalidSpecError as err:
            errors.extend(err.errors)
        except SpecError as err:
            errors.append(err)
        return default

    check(lambda: _only(data, _SECTIONS, ""))
    name = data.get("name")

    def parse_name() -> str:
        try:
            return check_study_name(name)  # type: ignore[arg-type]
        except SettingsError as err:
            raise _fail(str(err).removeprefix("name: "), "name") from err

    check(parse_name)
    description = data.get("description", "")
    if not isinstance(description, str):
        errors.append(_fail(f"must be a string, got {_show(description)}", "description"))
    training = check(lambda: _parse_training(data.get("training")))
    tasks = check(lambda: _parse_tasks(data.get("tasks")))
    space = check(lambda: _parse_space(data.get("space"), base_dir))
    if space is not None and tasks is not None:
        check(lambda: _check_space_tasks(space, tasks))
        if training is not None:
            check(lambda: _check_sizes(training, tasks, space))
    steps = training.steps if training is not None else TrainingSpec().steps
    sections = {
        "budget": check(lambda: _parse_budget(data.get("budget"))),
        "sampler": check(lambda: _parse_sampler(data.get("sampler"))),
        "pruner": check(lambda: _parse_pruner(data.get("pruner"), steps=steps)),
        "objective": check(lambda: _parse_objective(data.get("objective"))),
        "resources": check(lambda: _parse_resources(data.get("resources"))),
        "settings": check(lambda: _parse_settings(data.get("settings"))),
    }
    if None not in (space, tasks, training, sections["sampler"]):
        check(lambda: _check_enqueued(space, sections["sampler"], tasks, training))
    if errors:
        raise errors[0] if len(errors) == 1 else InvalidSpecError(errors)
    return StudySpec(
        name=name,  # type: ignore[arg-type]
        description=description,
        tasks=tasks,
        space=space,
        training=training,
        raw=dict(data),
        **sections,
    )


def shipped_specs() -> list[str]:
    """Names of the specs shipped in ``study/specs/``."""
    folder = resources.files("study") / "specs"
    return sorted(p.name.rsplit(".", 1)[0] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_spec(ref: str | Path, *, overrides: Mapping[str, Any] | None = None) -> StudySpec:
    """Loads a spec file, or a shipped spec by name; ``overrides`` replace top-level keys.

    ``overrides`` takes dotted keys for nested ones (``{"budget.num_samples": 4}``).
    """
    path = Path(ref)
    if not path.exists() and isinstance(ref, str) and "/" not in ref and "." not in ref:
        shipped = resources.files("study") / "specs" / f"{ref}.yaml"
        if not shipped.is_file():
            raise SpecError(
                f"no spec file {_show(ref)} and no shipped spec of that name; shipped: "
                f"{shipped_specs()}",
                field="spec",
            )
        text, base_dir = shipped.read_text(), None
    else:
        try:
            text, base_dir = path.read_text(), path.resolve().parent
        except OSError as err:
            raise SpecError(f"cannot read spec {_show(str(ref))}: {err}", field="spec") from err
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        # one line: PyYAML's own message spans several, with the file as "<unicode string>"
        detail = " ".join(str(err).replace('in "<unicode string>",', "").split())
        raise SpecError(f"{ref}: not valid YAML: {detail}", field="spec") from err
    data = dict(_mapping(data, "spec"))
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return parse_spec(data, base_dir=base_dir)


def _set_dotted(data: dict[str, Any], dotted: str, value: object) -> None:
    head, _, rest = dotted.partition(".")
    if not rest:
        data[head] = value
        return
    child = data.get(head)
    child = dict(child) if isinstance(child, Mapping) else {}
    _set_dotted(child, rest, value)
    data[head] = child
