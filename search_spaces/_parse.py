"""From a YAML mapping to typed parameters, collecting every structural error."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from search_spaces._errors import SearchSpaceError
from search_spaces._params import (
    CategoricalParameter,
    Condition,
    FixedParameter,
    FloatParameter,
    IntParameter,
    Parameter,
    Scalar,
    is_number,
    same_value,
)
from search_spaces._targets import default_target, parse_target

TOP_KEYS = ("name", "description", "tasks", "parameters")
_COMMON = ("type", "condition", "target", "description")
PARAM_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("low", "high", "log", "step", *_COMMON),
    "int": ("low", "high", "step", "log", *_COMMON),
    "categorical": ("choices", *_COMMON),
    "fixed": ("value", *_COMMON),
}
# no "/" (Ray Tune unflattens on it) and nothing a YAML or MLflow key would choke on
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class _Skip(Exception):
    """The current parameter is broken; its error is already recorded."""


@dataclass
class ParsedSpace:
    name: str
    description: str
    tasks: tuple[str, ...]
    parameters: tuple[Parameter, ...]
    errors: list[SearchSpaceError] = field(default_factory=list)


class _Parser:
    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[SearchSpaceError] = []

    def error(self, message: str, param: str | None = None) -> None:
        self.errors.append(SearchSpaceError(message, file=self.file, param=param))

    def fail(self, message: str, param: str) -> _Skip:
        self.error(message, param)
        return _Skip()

    def space(self, data: object, default_name: str) -> ParsedSpace:
        if not isinstance(data, Mapping):
            self.error(f"a search space must be a mapping, got {type(data).__name__}")
            return ParsedSpace(default_name, "", (), (), self.errors)
        for key in data:
            if key not in TOP_KEYS:
                self.error(f"unknown key {key!r}; allowed: {list(TOP_KEYS)}")
        name = self._text(data, "name", default_name)
        description = self._text(data, "description", "")
        tasks = self._tasks(data.get("tasks"))
        raw = data.get("parameters")
        if not isinstance(raw, Mapping) or not raw:
            self.error("'parameters' must be a non-empty mapping of name -> parameter")
            return ParsedSpace(name, description, tasks, (), self.errors)
        params: list[Parameter] = []
        for pname, spec in raw.items():
            try:
                params.append(self.parameter(str(pname), spec))
            except _Skip:
                continue
        ordered = self._check_conditions(params, set(map(str, raw)))
        return ParsedSpace(name, description, tasks, tuple(ordered), self.errors)

    def _text(self, data: Mapping[str, Any], key: str, default: str) -> str:
        value = data.get(key, default)
        if not isinstance(value, str):
            self.error(f"{key!r} must be a string, got {value!r}")
            return default
        return value

    def _tasks(self, value: object) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
            self.error(f"'tasks' must be a list of task names, got {value!r}")
            return ()
        return tuple(value)

    def parameter(self, name: str, spec: object) -> Parameter:
        if not _NAME.match(name):
            raise self.fail("a parameter name is letters, digits, '_' and '.'", name)
        spec = _long_form(spec)
        if not isinstance(spec, Mapping):
            raise self.fail(f"must be a value, a list of choices or a mapping, got {spec!r}", name)
        kind = spec.get("type")
        if kind not in PARAM_KEYS:
            raise self.fail(f"type must be one of {list(PARAM_KEYS)}, got {kind!r}", name)
        unknown = [k for k in spec if k not in PARAM_KEYS[kind]]
        if unknown:
            raise self.fail(
                f"unknown key {unknown[0]!r} for a {kind} parameter; allowed: "
                f"{list(PARAM_KEYS[kind])}",
                name,
            )
        target = spec.get("target", default_target(name))
        try:
            parse_target(str(target))
        except ValueError as err:
            raise self.fail(str(err), name) from None
        description = spec.get("description")
        if description is not None and not isinstance(description, str):
            raise self.fail(f"description must be a string, got {description!r}", name)
        common: dict[str, Any] = {
            "name": name,
            "target": str(target),
            "condition": self._condition(name, spec.get("condition")),
            "description": description,
        }
        match kind:
            case "float":
                return self._float(name, spec, common)
            case "int":
                return self._int(name, spec, common)
            case "categorical":
                return self._categorical(name, spec, common)
            case _:
                return self._fixed(name, spec, common)

    def _number(self, name: str, spec: Mapping[str, Any], key: str, *, integer: bool) -> Any:
        if key not in spec:
            raise self.fail(f"{key!r} is required", name)
        value = spec[key]
        if integer and not (isinstance(value, int) and not isinstance(value, bool)):
            raise self.fail(f"{key} must be an integer, got {value!r}", name)
        if not is_number(value) or not math.isfinite(value):
            raise self.fail(f"{key} must be a finite number, got {value!r}", name)
        return value

    def _flag(self, name: str, spec: Mapping[str, Any], key: str) -> bool:
        value = spec.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(f"{key} must be true or false, got {value!r}", name)
        return value

    def _range(self, name: str, low: float, high: float, log: bool) -> None:
        if high < low:
            raise self.fail(f"inverted range: low={low!r} > high={high!r}", name)
        if high == low:
            raise self.fail(f"empty range: low == high == {low!r}; use type: fixed", name)
        if log and low <= 0:
            raise self.fail(f"a log range needs low > 0, got low={low!r}", name)

    def _float(self, name: str, spec: Mapping[str, Any], common: dict[str, Any]) -> Parameter:
        low = float(self._number(name, spec, "low", integer=False))
        high = float(self._number(name, spec, "high", integer=False))
        log = self._flag(name, spec, "log")
        self._range(name, low, high, log)
        step = spec.get("step")
        if step is not None:
            step = float(self._number(name, spec, "step", integer=False))
            if step <= 0:
                raise self.fail(f"step must be > 0, got {step!r}", name)
            if log:
                raise self.fail("step and log cannot be combined", name)
        return FloatParameter(low=low, high=high, log=log, step=step, **common)

    def _int(self, name: str, spec: Mapping[str, Any], common: dict[str, Any]) -> Parameter:
        low = self._number(name, spec, "low", integer=True)
        high = self._number(name, spec, "high", integer=True)
        log = self._flag(name, spec, "log")
        self._range(name, low, high, log)
        step = self._number(name, spec, "step", integer=True) if "step" in spec else 1
        if step < 1:
            raise self.fail(f"step must be >= 1, got {step!r}", name)
        if log and step != 1:
            raise self.fail("step and log cannot be combined", name)
        if (high - low) % step:
            raise self.fail(
                f"high - low must be a multiple of step, got {low=} {high=} {step=}", name
            )
        return IntParameter(low=low, high=high, step=step, log=log, **common)

    def _categorical(
        self, name: str, spec: Mapping[str, Any], common: dict[str, Any]
    ) -> Parameter:
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise self.fail(f"choices must be a non-empty list, got {choices!r}", name)
        for i, choice in enumerate(choices):
            if not _is_scalar(choice):
                raise self.fail(f"choices[{i}] must be a string, number, bool or null", name)
            if any(same_value(choice, c) for c in choices[:i]):
                raise self.fail(f"choice {choice!r} is listed twice", name)
        return CategoricalParameter(choices=tuple(choices), **common)

    def _fixed(self, name: str, spec: Mapping[str, Any], common: dict[str, Any]) -> Parameter:
        if "value" not in spec:
            raise self.fail("'value' is required", name)
        value = spec["value"]
        if not _is_scalar(value):
            raise self.fail(f"value must be a string, number, bool or null, got {value!r}", name)
        return FixedParameter(value=value, **common)

    def _condition(self, name: str, raw: object) -> tuple[Condition, ...]:
        if raw is None:
            return ()
        if not isinstance(raw, Mapping) or not raw:
            raise self.fail(
                "condition must map parameter names to a value, a list of values or "
                f"{{min, max}}, got {raw!r}",
                name,
            )
        conditions = []
        for other, rule in raw.items():
            other = str(other)
            if other == name:
                raise self.fail("a parameter cannot be conditional on itself", name)
            if isinstance(rule, Mapping):
                unknown = [k for k in rule if k not in ("min", "max")]
                bounds = [rule.get(k) for k in ("min", "max")]
                if unknown or not rule or not all(b is None or is_number(b) for b in bounds):
                    raise self.fail(
                        f"condition on {other!r}: a range is {{min: NUMBER, max: NUMBER}}, "
                        f"got {dict(rule)!r}",
                        name,
                    )
                lo, hi = bounds
                if lo is not None and hi is not None and hi < lo:
                    raise self.fail(f"condition on {other!r}: inverted range {lo} > {hi}", name)
                conditions.append(Condition(param=other, min=lo, max=hi))
                continue
            values = rule if isinstance(rule, list) else [rule]
            if not values or not all(_is_scalar(v) for v in values):
                raise self.fail(f"condition on {other!r}: bad values {rule!r}", name)
            conditions.append(Condition(param=other, values=tuple(values)))
        return tuple(conditions)

    def _check_conditions(self, params: list[Parameter], declared: set[str]) -> list[Parameter]:
        """Conditions must name existing parameters and values they can take; sort by them."""
        by_name = {p.name: p for p in params}
        for param in params:
            for cond in param.condition:
                other = by_name.get(cond.param)
                if other is None:
                    if cond.param not in declared:
                        self.error(
                            f"condition on parameter {cond.param!r}, which does not exist",
                            param.name,
                        )
                    continue
                if cond.values is not None:
                    for value in cond.values:
                        if not other.contains(value):
                            self.error(
                                f"condition on {cond.param!r}: {value!r} is not a value it "
                                f"takes ({_values(other)})",
                                param.name,
                            )
                elif not _can_hold(cond, other):
                    self.error(
                        f"condition on {cond.param!r} can never hold: {cond.to_yaml()!r} is "
                        f"outside {_values(other)}",
                        param.name,
                    )
        return self._topological(params)

    def _topological(self, params: list[Parameter]) -> list[Parameter]:
        # stable: declaration order wherever the conditions allow it
        names = {p.name for p in params}
        pending = list(params)
        placed: set[str] = set()
        ordered: list[Parameter] = []
        while pending:
            ready = next(
                (
                    p
                    for p in pending
                    if all(c.param in placed or c.param not in names for c in p.condition)
                ),
                None,
            )
            if ready is None:
                cycle = sorted(p.name for p in pending)
                self.error(f"conditions form a cycle between {cycle}", cycle[0])
                return ordered
            pending.remove(ready)
            placed.add(ready.name)
            ordered.append(ready)
        return ordered


def _long_form(spec: object) -> object:
    """``name: VALUE`` is a fixed value and ``name: [A, B]`` a categorical."""
    if isinstance(spec, list):
        return {"type": "categorical", "choices": spec}
    if _is_scalar(spec):
        return {"type": "fixed", "value": spec}
    if isinstance(spec, Mapping) and "type" not in spec:
        if "choices" in spec:
            return {"type": "categorical", **spec}
        if "value" in spec:
            return {"type": "fixed", **spec}
    return spec


def _is_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _values(param: Parameter) -> str:
    if isinstance(param, FloatParameter | IntParameter):
        return f"range [{param.low}, {param.high}]"
    if isinstance(param, CategoricalParameter):
        return f"choices {list(param.choices)}"
    assert isinstance(param, FixedParameter)
    return f"fixed value {param.value!r}"


def _can_hold(cond: Condition, param: Parameter) -> bool:
    if isinstance(param, FloatParameter | IntParameter):
        lo = -math.inf if cond.min is None else cond.min
        hi = math.inf if cond.max is None else cond.max
        return lo <= param.high and hi >= param.low
    values: tuple[Scalar, ...] = ()
    if isinstance(param, CategoricalParameter):
        values = param.choices
    elif isinstance(param, FixedParameter):
        values = (param.value,)
    return any(cond.holds({cond.param: v}) for v in values)


def parse_space(data: object, *, file: str, default_name: str) -> ParsedSpace:
    return _Parser(file).space(data, default_name)
