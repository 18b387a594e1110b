"""Study specs: one YAML file says what to search, on which tasks, for how long, and how.

A spec is parsed and validated completely before anything is started or written, so that a
malformed one stops ``nalu-study launch`` with exit code 2 and a :class:`SpecError` naming the
offending key (``pruner.options.n_warmup_steps``). See ``docs/studies.md`` for the format.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import optuna
import yaml

from nalu_core import RANGE_PRESETS, ConfigError, TaskConfig, TrainConfig
from study._errors import SpecError
from study._settings import ENV_VARS

SAMPLERS = ("tpe", "cmaes", "random", "grid")
PRUNERS = ("median", "percentile", "successive-halving", "hyperband", "none")
OBJECTIVE_METRICS = ("success_lower", "success_rate")
TIE_BREAKS = ("extrapolation_mse_median", "interpolation_mse_median", "none")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
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
        raise _fail(f"must be a mapping, got {data!r}", where)
    return data


def _only(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise _fail(f"unknown key; allowed: {sorted(allowed)}", key)


def _int(value: object, where: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(f"must be an int >= {minimum}, got {value!r}", where)
    return value


def _number(value: object, where: str, *, minimum: float = 0.0) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) < minimum:  # type: ignore[arg-type]
        raise _fail(f"must be a finite number >= {minimum}, got {value!r}", where)
    return float(value)  # type: ignore[arg-type]


def parse_duration(value: object, where: str = "budget.time_limit") -> float | None:
    """``None``, seconds, or a string such as ``"90s"``, ``"10m"``, ``"2h"``."""
    if value is None:
        return None
    if isinstance(value, str):
        match = _DURATION.match(value)
        if not match:
            raise _fail(f"must be seconds or a duration like '10m' or '2h', got {value!r}", where)
        seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    else:
        seconds = _number(value, where)
    if seconds <= 0:
        raise _fail(f"must be > 0, got {value!r}", where)
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

    def build(self, *, offset: int = 0) -> optuna.samplers.BaseSampler:
        """A fresh sampler; ``offset`` decorrelates the per-task studies' seeds."""
        seed = None if self.seed is None else self.seed + offset
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


def task_key(task: TaskConfig) -> str:
    """``static-add``: names the per-task Optuna study and the checkpoint folder."""
    return f"{task.name}-{task.op}"


def _parse_tasks(data: object) -> tuple[TaskConfig, ...]:
    if not isinstance(data, list) or not data:
        raise _fail(f"must be a non-empty list of {{name, ops, options}}, got {data!r}", "tasks")
    tasks: list[TaskConfig] = []
    for i, entry in enumerate(data):
        where = f"tasks[{i}]"
        entry = _mapping(entry, where)
        _only(entry, ("name", "ops", "op", "options"), where)
        ops = entry.get("ops", [entry["op"]] if "op" in entry else None)
        if not isinstance(ops, list) or not ops or not all(isinstance(o, str) for o in ops):
            raise _fail(f"must be a non-empty list of op names, got {ops!r}", f"{where}.ops")
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
        raise _fail(f"task × op {duplicate!r} appears twice", "tasks")
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
        raise _fail(f"must be one of {list(SAMPLERS)}, got {name!r}", "sampler.name")
    seed = data.get("seed", 0)
    if seed is not None:
        _int(seed, "sampler.seed", minimum=0)
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
        raise _fail(f"must be one of {list(PRUNERS)}, got {name!r}", "pruner.name")
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
            f"must be one of {list(OBJECTIVE_METRICS)}, got {metric!r}", "objective.metric"
        )
    tie_break = data.get("tie_break", "extrapolation_mse_median")
    if tie_break not in TIE_BREAKS:
        raise _fail(f"must be one of {list(TIE_BREAKS)}, got {tie_break!r}", "objective.tie_break")
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
            raise _fail(f"must be a string, got {value!r}", f"settings.{key}")
        out[key] = value
    return out


def _parse_space(data: object, base_dir: Path | None) -> str:
    if not isinstance(data, str) or not data:
        raise _fail(f"must be a preset name or a file path, got {data!r}", "space")
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
                f"the space {space_ref!r} is written for tasks {list(allowed)}, not {task.name!r}",
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


def parse_spec(data: object, *, base_dir: Path | None = None) -> StudySpec:
    """Validates a spec mapping (as read from YAML) into a :class:`StudySpec`."""
    data = _mapping(data, "spec")
    _only(data, _SECTIONS, "")
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _fail(
            f"must be 1-100 letters, digits, '_', '.' or '-' (a folder name), got {name!r}",
            "name",
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise _fail(f"must be a string, got {description!r}", "description")
    training = _parse_training(data.get("training"))
    tasks = _parse_tasks(data.get("tasks"))
    space = _parse_space(data.get("space"), base_dir)
    _check_space_tasks(space, tasks)
    sampler = _parse_sampler(data.get("sampler"))
    _check_enqueued(space, sampler, tasks, training)
    return StudySpec(
        name=name,
        description=description,
        tasks=tasks,
        space=space,
        training=training,
        budget=_parse_budget(data.get("budget")),
        sampler=sampler,
        pruner=_parse_pruner(data.get("pruner"), steps=training.steps),
        objective=_parse_objective(data.get("objective")),
        resources=_parse_resources(data.get("resources")),
        settings=_parse_settings(data.get("settings")),
        raw=dict(data),
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
                f"no spec file {ref!r} and no shipped spec of that name; shipped: "
                f"{shipped_specs()}",
                field="spec",
            )
        text, base_dir = shipped.read_text(), None
    else:
        try:
            text, base_dir = path.read_text(), path.resolve().parent
        except OSError as err:
            raise SpecError(f"cannot read spec {str(ref)!r}: {err}", field="spec") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SpecError(f"spec {str(ref)!r} is not valid YAML: {err}", field="spec") from err
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
