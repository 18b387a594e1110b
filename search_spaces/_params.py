"""The four parameter types of a search space, their conditions and their Optuna form."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

Scalar = str | int | float | bool | None
Probe = Literal["low", "high"]

# an int range this small is enumerated whole when validation probes the space (depth 1..4)
SMALL_INT_RANGE = 8


def same_value(a: object, b: object) -> bool:
    """Equality that keeps ``True`` apart from ``1``: YAML users mean different things."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class Condition:
    """``param`` is active and its value is one of ``values`` or within ``[min, max]``."""

    param: str
    values: tuple[Scalar, ...] | None = None
    min: float | None = None
    max: float | None = None

    def holds(self, point: Mapping[str, Any]) -> bool:
        if self.param not in point:
            return False
        value = point[self.param]
        if self.values is not None:
            return any(same_value(value, v) for v in self.values)
        if not is_number(value):
            return False
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def to_yaml(self) -> Any:
        if self.values is not None:
            return list(self.values)
        bounds: dict[str, float] = {}
        if self.min is not None:
            bounds["min"] = self.min
        if self.max is not None:
            bounds["max"] = self.max
        return bounds


@dataclass(frozen=True, kw_only=True)
class Parameter:
    """One named hyperparameter; ``target`` says which RunConfig field it sets."""

    kind: ClassVar[str]
    name: str
    target: str
    condition: tuple[Condition, ...] = ()
    description: str | None = None

    @property
    def conditional(self) -> bool:
        return bool(self.condition)

    def active(self, point: Mapping[str, Any]) -> bool:
        """Whether the parameter exists at ``point`` (its conditions hold there)."""
        return all(c.holds(point) for c in self.condition)

    def suggest(self, trial: optuna.Trial) -> Any:
        raise NotImplementedError

    def distribution(self) -> BaseDistribution | None:
        """The Optuna distribution, ``None`` for a fixed value."""
        raise NotImplementedError

    def contains(self, value: object) -> bool:
        raise NotImplementedError

    def probe_values(self, probe: Probe) -> list[Any]:
        """The values validation builds configurations for."""
        raise NotImplementedError

    def _body(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.kind, **self._body(), "target": self.target}
        if self.condition:
            data["condition"] = {c.param: c.to_yaml() for c in self.condition}
        if self.description:
            data["description"] = self.description
        return data


@dataclass(frozen=True, kw_only=True)
class FloatParameter(Parameter):
    kind: ClassVar[str] = "float"
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def suggest(self, trial: optuna.Trial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def distribution(self) -> FloatDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: object) -> bool:
        return is_number(value) and self.low <= value <= self.high  # type: ignore[operator]

    def probe_values(self, probe: Probe) -> list[Any]:
        return [self.low if probe == "low" else self.high]

    def _body(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "log": self.log, "step": self.step}


@dataclass(frozen=True, kw_only=True)
class IntParameter(Parameter):
    kind: ClassVar[str] = "int"
    low: int
    high: int
    step: int = 1
    log: bool = False

    def suggest(self, trial: optuna.Trial) -> int:
        return trial.suggest_int(self.name, self.low, self.high, step=self.step, log=self.log)

    def distribution(self) -> IntDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: object) -> bool:
        return (
            isinstance(value, int)
            and not isinstance(value, bool)
            and self.low <= value <= self.high
        )

    def grid(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def probe_values(self, probe: Probe) -> list[Any]:
        grid = self.grid()
        if len(grid) <= SMALL_INT_RANGE:
            return grid
        return [grid[0] if probe == "low" else grid[-1]]

    def _body(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "step": self.step, "log": self.log}


@dataclass(frozen=True, kw_only=True)
class CategoricalParameter(Parameter):
    kind: ClassVar[str] = "categorical"
    choices: tuple[Scalar, ...]

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(list(self.choices))

    def contains(self, value: object) -> bool:
        return any(same_value(value, c) for c in self.choices)

    def probe_values(self, probe: Probe) -> list[Any]:
        return list(self.choices)

    def _body(self) -> dict[str, Any]:
        return {"choices": list(self.choices)}


@dataclass(frozen=True, kw_only=True)
class FixedParameter(Parameter):
    kind: ClassVar[str] = "fixed"
    value: Scalar

    def suggest(self, trial: optuna.Trial) -> Any:
        return self.value

    def distribution(self) -> None:
        return None

    def contains(self, value: object) -> bool:
        return same_value(value, self.value)

    def probe_values(self, probe: Probe) -> list[Any]:
        return [self.value]

    def _body(self) -> dict[str, Any]:
        return {"value": self.value}


def finite(value: float) -> bool:
    return math.isfinite(value)
