"""Typed, validated configuration shared by the trainer, the search spaces and the study.

These dataclasses are the contract between the packages: a search-space point becomes a
:class:`RunConfig`, a study trial trains one, and an export writes one back as YAML that
``nalu-study train --config FILE`` accepts. Unit- and task-specific options live in
``options`` mappings and are validated by the unit registry and the task builder.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, get_args

from nalu_core._errors import ConfigError

OptimizerName = Literal["adam", "rmsprop", "sgd"]
ClipMode = Literal["none", "value", "norm"]
MAX_DEPTH = 4

_T = TypeVar("_T")


def _check_choice(name: str, value: object, literal: Any) -> None:
    allowed = get_args(literal)
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {list(allowed)}, got {value!r}", field=name)


def _check_positive(name: str, value: float, *, strict: bool = True) -> None:
    bad = value <= 0 if strict else value < 0
    if isinstance(value, bool) or not math.isfinite(value) or bad:
        sign = "> 0" if strict else ">= 0"
        raise ConfigError(f"{name} must be finite and {sign}, got {value!r}", field=name)


def _from_mapping(cls: type[_T], data: Mapping[str, Any], *, prefix: str) -> _T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}", field=prefix)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(
            f"unknown option {where!r}; allowed: {sorted(names)}",
            field=where,
        )
    try:
        return cls(**data)
    except ConfigError as err:
        if prefix and err.field and not err.field.startswith(prefix + "."):
            err.field = f"{prefix}.{err.field}"
            err.args = (f"{prefix}.{err.args[0]}",)
        raise
    except TypeError as err:
        raise ConfigError(f"{prefix}: {err}", field=prefix) from err


@dataclass(frozen=True, kw_only=True)
class LayerConfig:
    """One layer of a network: a registered unit name and its keyword options."""

    unit: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.unit, str) or not self.unit:
            raise ConfigError(f"unit must be a non-empty string, got {self.unit!r}", field="unit")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options must be a mapping, got {self.options!r}", field="options")
        object.__setattr__(self, "options", dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        return {"unit": self.unit, "options": dict(self.options)}


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A stack of 1..4 layers; every hidden layer has ``hidden_size`` outputs."""

    layers: tuple[LayerConfig, ...]
    hidden_size: int = 2

    def __post_init__(self) -> None:
        layers = tuple(
            layer
            if isinstance(layer, LayerConfig)
            else _from_mapping(LayerConfig, layer, prefix="")
            for layer in self.layers
        )
        object.__setattr__(self, "layers", layers)
        if not 1 <= len(layers) <= MAX_DEPTH:
            raise ConfigError(
                f"layers must hold 1 to {MAX_DEPTH} layers (the depth), got {len(layers)}",
                field="layers",
            )
        if isinstance(self.hidden_size, bool) or not isinstance(self.hidden_size, int):
            raise ConfigError(
                f"hidden_size must be an int, got {self.hidden_size!r}", field="hidden_size"
            )
        if self.hidden_size < 1:
            raise ConfigError(
                f"hidden_size must be >= 1, got {self.hidden_size!r}", field="hidden_size"
            )

    @property
    def depth(self) -> int:
        return len(self.layers)

    @classmethod
    def stacked(
        cls,
        unit: str,
        *,
        depth: int = 1,
        hidden_size: int = 2,
        options: Mapping[str, Any] | None = None,
        output_unit: str | None = None,
        output_options: Mapping[str, Any] | None = None,
    ) -> ModelConfig:
        """``depth`` layers of ``unit``; the last one may be a different ``output_unit``."""
        if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
            raise ConfigError(
                f"depth must be between 1 and {MAX_DEPTH}, got {depth!r}", field="depth"
            )
        layers = [LayerConfig(unit=unit, options=dict(options or {})) for _ in range(depth)]
        if output_unit is not None:
            layers[-1] = LayerConfig(unit=output_unit, options=dict(output_options or {}))
        return cls(layers=tuple(layers), hidden_size=hidden_size)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": [layer.to_dict() for layer in self.layers],
            "hidden_size": self.hidden_size,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, prefix: str = "model") -> ModelConfig:
        return _from_mapping(cls, data, prefix=prefix)


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    """A registered task name, its operation and its task-specific options."""

    name: str = "static"
    op: str = "add"
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"name must be a non-empty string, got {self.name!r}", field="name")
        if not isinstance(self.options, Mapping):
            raise ConfigError(f"options must be a mapping, got {self.options!r}", field="options")
        object.__setattr__(self, "options", dict(self.options))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, prefix: str = "task") -> TaskConfig:
        return _from_mapping(cls, data, prefix=prefix)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How the population trainer trains ``seeds`` replicas of one configuration.

    Replica ``i`` is seeded with ``seed + i``: the same seed gives the same replica whatever
    the population size. ``regularizer_*`` left as ``None`` take the units' published
    defaults (Madsen & Johansen 2020).
    """

    seeds: int = 32
    seed: int = 0
    # G groups of seeds/G replicas, each group sharing one fresh batch per step; None: one
    # stream per replica (independent seeds). See docs/training.md, "Shared data streams".
    data_streams: int | None = None
    steps: int = 50_000
    batch_size: int = 128
    optimizer: OptimizerName = "adam"
    lr: float = 1e-3
    clip: ClipMode = "none"
    clip_value: float = 1.0
    regularizer_lambda: float | None = None
    regularizer_start: int | None = None
    regularizer_end: int | None = None
    reinit_stalled: bool = False
    reinit_patience: int = 10
    stop_when_solved: bool = False
    eval_every: int = 1000
    eval_samples: int = 10_000
    device: str = "auto"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in (
            "seeds",
            "steps",
            "batch_size",
            "eval_every",
            "eval_samples",
            "reinit_patience",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}", field=name)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {self.seed!r}", field="seed")
        streams = self.data_streams
        if streams is not None:
            if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
                raise ConfigError(
                    f"data_streams must be an int >= 1 or null, got {streams!r}",
                    field="data_streams",
                )
            seeds = self.seeds
            if seeds % streams:
                raise ConfigError(
                    f"data_streams must divide seeds into equal groups: {seeds=} {streams=}",
                    field="data_streams",
                )
        _check_choice("optimizer", self.optimizer, OptimizerName)
        _check_choice("clip", self.clip, ClipMode)
        _check_positive("lr", self.lr)
        _check_positive("clip_value", self.clip_value)
        if self.regularizer_lambda is not None:
            _check_positive("regularizer_lambda", self.regularizer_lambda, strict=False)
        for name in ("regularizer_start", "regularizer_end"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ConfigError(f"{name} must be an int >= 0 or null, got {value!r}", field=name)
        if (
            self.regularizer_start is not None
            and self.regularizer_end is not None
            and self.regularizer_end < self.regularizer_start
        ):
            raise ConfigError(
                "regularizer_end must be >= regularizer_start, got "
                f"{self.regularizer_start=} {self.regularizer_end=}",
                field="regularizer_end",
            )
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(
                f"dtype must be 'float32' or 'float64', got {self.dtype!r}", field="dtype"
            )
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ConfigError(
                f"device must be auto, cpu or cuda, got {self.device!r}", field="device"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, prefix: str = "train") -> TrainConfig:
        return _from_mapping(cls, data, prefix=prefix)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Everything one trial trains: a task, a model and the training settings."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig.stacked("nau"))
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task.to_dict(),
            "model": self.model.to_dict(),
            "train": self.train.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        if not isinstance(data, Mapping):
            raise ConfigError(f"a run config must be a mapping, got {data!r}", field=None)
        unknown = sorted(set(data) - {"task", "model", "train"})
        if unknown:
            raise ConfigError(
                f"unknown section {unknown[0]!r}; allowed: ['model', 'task', 'train']",
                field=unknown[0],
            )
        return cls(
            task=TaskConfig.from_dict(data.get("task", {})),
            model=ModelConfig.from_dict(data["model"])
            if "model" in data
            else ModelConfig.stacked("nau"),
            train=TrainConfig.from_dict(data.get("train", {})),
        )
