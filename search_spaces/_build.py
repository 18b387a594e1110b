"""From a sampled point to a validated RunConfig."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from nalu_core import (
    ConfigError,
    LayerConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    published_row,
)
from search_spaces import _core
from search_spaces._errors import SearchSpaceError
from search_spaces._params import FixedParameter, FloatParameter, Parameter
from search_spaces._targets import (
    STUDY_TRAIN_FIELDS,
    TRAIN_FIELDS,
    Target,
    parse_target_cached,
)

_LAYER_OPTION = re.compile(r"layers\[(\d+)\]\.options\.(\w+)")
_LAYER = re.compile(r"layers\[(\d+)\]")


def plain(value: Any) -> Any:
    """numpy scalars (Ray Tune samples them) become Python ones."""
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, str | int | float | bool):
        return item()
    return value


def active_point(
    params: Sequence[Parameter], point: Mapping[str, Any], *, file: str
) -> dict[str, Any]:
    """The parameters that exist at ``point``, in order, with fixed values filled in.

    Inactive parameters are dropped (Ray Tune samples them anyway); unknown names, missing
    or out-of-range values are errors.
    """
    known = {p.name for p in params}
    for name in point:
        if name not in known:
            raise SearchSpaceError(
                f"is not a parameter of this space; known: {sorted(known)}", file=file, param=name
            )
    active: dict[str, Any] = {}
    for param in params:
        if not param.active(active):
            continue
        if isinstance(param, FixedParameter) and param.name not in point:
            active[param.name] = param.value
            continue
        if param.name not in point:
            raise SearchSpaceError(
                "is active at this point but has no value", file=file, param=param.name
            )
        value = plain(point[param.name])
        if isinstance(param, FloatParameter) and isinstance(value, int):
            value = float(value)
        if not param.contains(value):
            raise SearchSpaceError(
                f"value {value!r} is outside {param.to_dict()}", file=file, param=param.name
            )
        active[param.name] = value
    return active


class _Builder:
    def __init__(self, params: Sequence[Parameter], active: Mapping[str, Any], file: str) -> None:
        self.file = file
        self.active = active
        self.targets: dict[str, Target] = {}
        self.by_target: dict[str, str] = {}
        for param in params:
            if param.name not in active:
                continue
            target = parse_target_cached(param.target)
            key = str(target)
            if key in self.by_target:
                raise self.error(
                    f"sets {key} like {self.by_target[key]!r}; only one of them may be active",
                    param.name,
                )
            self.targets[param.name] = target
            self.by_target[key] = param.name

    def error(self, message: str, param: str | None) -> SearchSpaceError:
        return SearchSpaceError(message, file=self.file, param=param)

    def values(self, *kinds: str) -> list[tuple[str, Target, Any]]:
        return [(n, t, self.active[n]) for n, t in self.targets.items() if t.kind in kinds]

    def one(self, kind: str) -> Any:
        found = self.values(kind)
        return found[0][2] if found else None

    def units(self, depth: int) -> list[str]:
        unit, output_unit = self.one("unit"), self.one("output_unit")
        per_layer = {t.layer: v for _, t, v in self.values("layer_unit")}
        units = []
        for i in range(depth):
            chosen = per_layer.get(i)
            if chosen is None and i == depth - 1:
                chosen = output_unit
            chosen = unit if chosen is None else chosen
            if chosen is None:
                raise self.error(
                    f"layer {i} has no unit: add a 'unit' (or 'unit_{i}') parameter", None
                )
            units.append(chosen)
        return units

    def depth(self) -> int:
        depth = self.one("depth")
        if depth is not None:
            return int(depth)
        indices = [t.layer for _, t, _ in self.values("layer_unit", "layer_option")]
        return max((i for i in indices if i is not None), default=0) + 1

    def row(self, task: TaskConfig) -> RunConfig | None:
        """The published row's configuration for ``task.op``, when the point names one."""
        key = self.one("published_row")
        if key is None:
            return None
        structural = self.values("unit", "output_unit", "layer_unit", "depth", "hidden_size")
        if structural:
            raise self.error(
                "the published row fixes the model; drop this parameter", structural[0][0]
            )
        return published_row(str(key)).run_config(task.op)

    def model(self, row: RunConfig | None = None) -> ModelConfig:
        if row is not None:
            # the row's stack, with the space's unit options on the layers that declare them
            stack = list(row.model.layers)
            for _, target, value in self.values("option", "layer_option"):
                for i, layer in enumerate(stack):
                    if target.kind == "layer_option" and i != target.layer:
                        continue
                    if target.key in _core.unit_options(layer.unit):
                        merged = {**layer.options, str(target.key): value}
                        stack[i] = LayerConfig(unit=layer.unit, options=merged)
            return ModelConfig(layers=tuple(stack), hidden_size=row.model.hidden_size)
        depth = self.depth()
        for name, target, _ in self.values("layer_unit", "layer_option"):
            if target.layer is not None and target.layer >= depth:
                raise self.error(
                    f"sets layer {target.layer} but depth is {depth}; add the condition "
                    f"depth: {{min: {target.layer + 1}}}",
                    name,
                )
        units = self.units(depth)
        options: list[dict[str, Any]] = [{} for _ in units]
        for name, target, value in self.values("option"):
            accepting = [i for i, u in enumerate(units) if target.key in _core.unit_options(u)]
            if not accepting:
                raise self.error(
                    f"option {target.key!r} applies to no layer (units {units}); "
                    "add a condition on the unit",
                    name,
                )
            for i in accepting:
                options[i][str(target.key)] = value
        for _, target, value in self.values("layer_option"):
            options[int(target.layer or 0)][str(target.key)] = value
        hidden = self.one("hidden_size")
        layers = tuple(LayerConfig(unit=u, options=o) for u, o in zip(units, options, strict=True))
        if hidden is None:
            return ModelConfig(layers=layers)
        return ModelConfig(layers=layers, hidden_size=hidden)

    def train(self, study: Mapping[str, Any], row: RunConfig | None = None) -> TrainConfig:
        values = {str(t.key): v for _, t, v in self.values("train")}
        for key in study:
            if key in values:
                raise self.error(
                    f"train.{key} is set both by the study and by this space",
                    self.by_target[f"train.{key}"],
                )
        # the row's published flags (lr, clipping, λ̂ and its schedule); the study owns
        # seeds, steps and evaluation, the space may override the rest
        base = {}
        if row is not None:
            base = {k: v for k, v in row.train.to_dict().items() if k not in STUDY_TRAIN_FIELDS}
        return TrainConfig.from_dict({**base, **values, **study})

    def task(self, task: TaskConfig, row: RunConfig | None = None) -> TaskConfig:
        options = {str(t.key): v for _, t, v in self.values("task_option")}
        for key in task.options:
            if key in options:
                raise self.error(
                    f"task option {key!r} is set both by the study and by this space",
                    self.by_target[f"task.options.{key}"],
                )
        # the row's task (Madsen's 100 inputs, ranges); the study's options win over it
        base = dict(row.task.options) if row is not None else {}
        return TaskConfig(name=task.name, op=task.op, options={**base, **task.options, **options})

    def param_for(self, section: str, field: str | None) -> str | None:
        """The active parameter a nalu_core ``ConfigError.field`` points at, if any."""
        if field is None:
            return None
        candidates: list[str] = []
        if section == "model":
            if match := _LAYER_OPTION.search(field):
                i, key = match[1], match[2]
                candidates += [f"model.layers[{i}].options.{key}", f"model.options.{key}"]
            elif match := _LAYER.search(field):
                i = int(match[1])
                candidates.append(f"model.layers[{i}].unit")
                if i == self.depth() - 1:
                    candidates.append("model.output_unit")
                candidates.append("model.unit")
            elif field.endswith("hidden_size"):
                candidates.append("model.hidden_size")
            elif field.endswith(("layers", "depth")):
                candidates.append("model.depth")
            elif field.endswith("unit"):
                candidates += ["model.unit", "model.output_unit"]
        elif section == "train":
            key = field.removeprefix("train.")
            if key in TRAIN_FIELDS:
                candidates.append(f"train.{key}")
        else:
            key = field.removeprefix("task.").removeprefix("options.")
            candidates.append(f"task.options.{key}")
        return next((self.by_target[c] for c in candidates if c in self.by_target), None)

    def run_config(self, *, task: TaskConfig, train: Mapping[str, Any]) -> RunConfig:
        section = "model"
        try:
            row = self.row(task)
            model = self.model(row)
            _core.validate_model(model)
            section = "train"
            train_config = self.train(train, row)
            section = "task"
            task_config = self.task(task, row)
            _core.validate_task(task_config)
            section = "model"
            _core.check_buildable(task_config, model)
        except SearchSpaceError:
            raise
        except (ValueError, TypeError, RuntimeError) as err:
            field = err.field if isinstance(err, ConfigError) else None
            param = self.param_for(section, field)
            value = f"{self.active[param]!r} is rejected: " if param else ""
            raise self.error(f"{value}{err}", param) from err
        return RunConfig(task=task_config, model=model, train=train_config)


def build_run_config(
    params: Sequence[Parameter],
    point: Mapping[str, Any],
    *,
    task: TaskConfig,
    train: Mapping[str, Any],
    file: str,
) -> RunConfig:
    active = active_point(params, point, file=file)
    return _Builder(params, active, file).run_config(task=task, train=train)
