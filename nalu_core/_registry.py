"""The typed unit registry: unit name -> :class:`UnitSpec` (builder, options, defaults).

Variants are parameters, not classes: ``nac_add`` and ``nac_mul`` are one ``NAC`` class with a
fixed ``op`` option. Every user-settable option is described by an :class:`OptionSpec`, so that a
config can be validated (and a search space checked) without building anything.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from nalu_core._errors import ConfigError

UnitKind = Literal["layer", "recurrent"]
OptionType = type[bool] | type[int] | type[float] | type[str]


@dataclass(frozen=True, kw_only=True)
class OptionSpec:
    """One keyword option of a unit: its type, default and allowed values.

    ``choices`` restricts to a fixed set; ``low``/``high`` bound numbers (inclusive unless
    ``low_open``/``high_open``); ``nullable`` allows ``None`` (e.g. "use the scheme's default").
    An ``int`` is accepted where a ``float`` is expected; a ``bool`` never counts as a number.
    """

    type: OptionType
    default: Any
    doc: str = ""
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False

    def __post_init__(self) -> None:
        self.validate(self.default, field="default")

    def allowed(self) -> str:
        """Human-readable description of the allowed values (used in error messages)."""
        if self.choices is not None:
            text = f"one of {list(self.choices)}"
        else:
            text = f"a {self.type.__name__}"
            if self.low is not None or self.high is not None:
                lo = "(" if self.low_open or self.low is None else "["
                hi = ")" if self.high_open or self.high is None else "]"
                low = "-inf" if self.low is None else repr(self.low)
                high = "inf" if self.high is None else repr(self.high)
                text += f" in {lo}{low}, {high}{hi}"
        return text + (" or null" if self.nullable else "")

    def validate(self, value: Any, *, field: str) -> Any:
        """Return ``value`` (an int coerced to float where a float is expected) or raise."""
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{field} must be {self.allowed()}, got None", field=field)
        value = self._check_type(value, field=field)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{field} must be {self.allowed()}, got {value!r}", field=field)
        if isinstance(value, int | float) and not isinstance(value, bool):
            self._check_bounds(value, field=field)
        return value

    def _check_type(self, value: Any, *, field: str) -> Any:
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok = isinstance(value, self.type) and not (
            self.type is not bool and isinstance(value, bool)
        )
        if not ok:
            raise ConfigError(
                f"{field} must be {self.allowed()}, got {value!r} ({type(value).__name__})",
                field=field,
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{field} must be finite, got {value!r}", field=field)
        return value

    def _check_bounds(self, value: float, *, field: str) -> None:
        too_low = self.low is not None and (
            value <= self.low if self.low_open else value < self.low
        )
        too_high = self.high is not None and (
            value >= self.high if self.high_open else value > self.high
        )
        if too_low or too_high:
            raise ConfigError(f"{field} must be {self.allowed()}, got {value!r}", field=field)


ScheduleKind = Literal["linear", "geometric"]


@dataclass(frozen=True, kw_only=True)
class RegularizerSchedule:
    """A published regulariser schedule.

    ``linear`` (Madsen): λ = λ̂ · clip((t − start)/(end − start), 0, 1), a step at ``start``
    when ``end <= start``. ``geometric`` (Heim's β for the NPU, as nalm-benchmark runs it):
    λ = min(λ̂, ``initial`` · ``growth`` ^ ⌊t / ``every``⌋), e.g. 1e-9 → 1e-8 at 10k → 1e-7.
    ``max_interpolation_mse``: the term applies only to replicas whose last evaluated
    interpolation MSE is below it (Schlör's iNALU regulariser: only once the fit is close).
    """

    lambda_: float
    start: int = 0
    end: int = 0
    kind: ScheduleKind = "linear"
    initial: float = 0.0
    growth: float = 10.0
    every: int = 10_000
    max_interpolation_mse: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "geometric"):
            raise ValueError(f"kind must be linear or geometric, got {self.kind=}")
        if self.kind == "geometric" and (self.every < 1 or self.growth <= 0):
            raise ValueError(f"a geometric schedule needs every >= 1, growth > 0: {self=}")

    def weight(self, step: int) -> float:
        if self.lambda_ == 0:
            return 0.0
        if self.kind == "geometric":
            return min(self.lambda_, self.initial * self.growth ** (step // self.every))
        if self.end <= self.start:
            return self.lambda_ if step >= self.start else 0.0
        return self.lambda_ * min(max((step - self.start) / (self.end - self.start), 0.0), 1.0)


@dataclass(frozen=True, kw_only=True)
class UnitSpec:
    """A registered unit.

    ``builder(in_features, out_features, *, population, device, dtype, **options)`` returns a
    population module; ``fixed`` options (e.g. ``op="mul"`` for ``nac_mul``) are passed to it
    but are not user-settable. ``regularizer`` is the unit's published λ schedule, or ``None``.
    """

    name: str
    kind: UnitKind
    builder: Callable[..., nn.Module]
    options: Mapping[str, OptionSpec] = field(default_factory=dict)
    doc: str = ""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    regularizer: RegularizerSchedule | None = None

    def defaults(self) -> dict[str, Any]:
        return {key: spec.default for key, spec in self.options.items()}

    def validate_options(
        self, options: Mapping[str, Any], *, prefix: str = "options"
    ) -> dict[str, Any]:
        """Return the full option dict (defaults filled in) or raise naming ``prefix.<key>``."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            allowed = sorted(self.options) or "none"
            raise ConfigError(
                f"{prefix}.{unknown[0]}: unknown option for unit {self.name!r}; "
                f"allowed: {allowed}",
                field=f"{prefix}.{unknown[0]}",
            )
        resolved = self.defaults()
        for key, value in options.items():
            resolved[key] = self.options[key].validate(value, field=f"{prefix}.{key}")
        return resolved

    def build(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        **options: Any,
    ) -> nn.Module:
        resolved = self.validate_options(options)
        return self.builder(
            in_features,
            out_features,
            population=population,
            device=device,
            dtype=dtype,
            **self.fixed,
            **resolved,
        )


UNITS: dict[str, UnitSpec] = {}


def register_unit(
    name: str,
    builder: Callable[..., nn.Module],
    *,
    kind: UnitKind = "layer",
    options: Mapping[str, OptionSpec] | None = None,
    doc: str = "",
    fixed: Mapping[str, Any] | None = None,
    regularizer: RegularizerSchedule | None = None,
    replace: bool = False,
) -> UnitSpec:
    """Add a unit to :data:`UNITS` and return its spec.

    ``kind="recurrent"`` marks a cell whose forward is ``(P, B, T, in) -> (P, B, T, out)``; such
    units are built by the sequence tasks, not stacked by :func:`build_network`.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"unit name must be a non-empty string, got {name!r}", field="name")
    if kind not in ("layer", "recurrent"):
        raise ConfigError(f"kind must be 'layer' or 'recurrent', got {kind!r}", field="kind")
    if name in UNITS and not replace:
        raise ValueError(f"unit {name!r} is already registered (pass replace=True to override)")
    spec = UnitSpec(
        name=name,
        kind=kind,
        builder=builder,
        options=dict(options or {}),
        doc=doc,
        fixed=dict(fixed or {}),
        regularizer=regularizer,
    )
    UNITS[name] = spec
    return spec


def get_unit(name: str, *, field: str = "unit") -> UnitSpec:
    """The spec of ``name`` or a :class:`ConfigError` listing the registered units."""
    try:
        return UNITS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"{field}: unknown unit {name!r}; registered: {sorted(UNITS)}", field=field
        ) from None
