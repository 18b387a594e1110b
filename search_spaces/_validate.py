"""Checks against nalu_core: units, options, tasks, and every categorical choice.

Each choice is checked by building the RunConfig it implies and handing it to nalu_core's
own validators, so the space accepts exactly what the trainer accepts.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from nalu_core import TaskConfig
from search_spaces import _core
from search_spaces._build import build_run_config
from search_spaces._errors import SearchSpaceError
from search_spaces._params import (
    CategoricalParameter,
    FixedParameter,
    Parameter,
    Probe,
)
from search_spaces._targets import parse_target

# beyond this many leaves per probe, validation covers each choice once instead of all combos
MAX_COMBINATIONS = 256
MAX_REPORTED = 20
DEFAULT_TASK = "static"


def semantic_errors(
    params: Sequence[Parameter],
    tasks: Sequence[str],
    *,
    file: str,
    parse_errors: Sequence[SearchSpaceError] = (),
) -> list[SearchSpaceError]:
    """Unknown units, options and tasks always; then, if the space is otherwise sound,
    every categorical choice through nalu_core."""
    errors = [*parse_errors, *_static_errors(params, tasks, file=file)]
    if errors:
        return errors
    for task in tasks or (DEFAULT_TASK,):
        errors += _probe_errors(params, TaskConfig(name=task), file=file)
    return _dedupe(errors)[:MAX_REPORTED]


def _static_errors(
    params: Sequence[Parameter], tasks: Sequence[str], *, file: str
) -> list[SearchSpaceError]:
    errors: list[SearchSpaceError] = []
    known_tasks = _core.task_names()
    for task in tasks:
        if task not in known_tasks:
            errors.append(
                SearchSpaceError(f"unknown task {task!r}; known: {known_tasks}", file=file)
            )
    known_units = _core.unit_names()
    possible_units: set[str] = set()
    unit_params: dict[str, set[str]] = {}
    for param in params:
        if not parse_target(param.target).is_unit:
            continue
        if not isinstance(param, CategoricalParameter | FixedParameter):
            errors.append(
                SearchSpaceError("a unit is categorical or fixed", file=file, param=param.name)
            )
            continue
        values = set()
        for unit in param.probe_values("low"):
            if unit not in known_units:
                errors.append(
                    SearchSpaceError(
                        f"unknown unit {unit!r}; known: {known_units}", file=file, param=param.name
                    )
                )
            else:
                values.add(unit)
        unit_params[param.name] = values
        possible_units |= values
    for param in params:
        target = parse_target(param.target)
        if target.kind not in ("option", "layer_option"):
            continue
        key = str(target.key)
        declared = sorted(u for u in possible_units if key in _core.unit_options(u))
        if not declared:
            offered = sorted(set().union(*(_core.unit_options(u) for u in possible_units)))
            errors.append(
                SearchSpaceError(
                    f"unknown option {key!r} for units {sorted(possible_units)}; "
                    f"their options: {offered}",
                    file=file,
                    param=param.name,
                )
            )
            continue
        for cond in param.condition:
            if cond.param not in unit_params or cond.values is None:
                continue
            for unit in cond.values:
                if isinstance(unit, str) and key not in _core.unit_options(unit):
                    errors.append(
                        SearchSpaceError(
                            f"unit {unit!r} has no option {key!r}, but the condition on "
                            f"{cond.param!r} lists it; options of {unit!r}: "
                            f"{sorted(_core.unit_options(unit))}",
                            file=file,
                            param=param.name,
                        )
                    )
    return errors


def _walk(
    params: Sequence[Parameter],
    probe: Probe,
    forced: tuple[str, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every combination of probe values, branching only where a parameter is active."""
    point: dict[str, Any] = {}

    def walk(i: int) -> Iterator[dict[str, Any]]:
        if i == len(params):
            yield dict(point)
            return
        param = params[i]
        if not param.active(point):
            yield from walk(i + 1)
            return
        values = param.probe_values(probe)
        if forced is not None and forced[0] == param.name:
            values = [forced[1]]
        for value in values:
            point[param.name] = value
            yield from walk(i + 1)
        del point[param.name]

    return walk(0)


def probe_points(params: Sequence[Parameter]) -> Iterator[dict[str, Any]]:
    """Points that, together, give every categorical choice (and numeric end) a config.

    All combinations while there are few; past ``MAX_COMBINATIONS`` one point per choice.
    """
    for probe in ("low", "high"):
        seen: set[tuple[str, str]] = set()
        truncated = False
        for n, point in enumerate(_walk(params, probe)):
            if n == MAX_COMBINATIONS:
                truncated = True
                break
            seen |= {(k, repr(v)) for k, v in point.items()}
            yield point
        if not truncated:
            continue
        for param in params:
            for value in param.probe_values(probe):
                if (param.name, repr(value)) in seen:
                    continue
                forced = (param.name, value)
                leaf = next((p for p in _walk(params, probe, forced) if param.name in p), None)
                if leaf is not None:
                    seen |= {(k, repr(v)) for k, v in leaf.items()}
                    yield leaf


def _probe_errors(
    params: Sequence[Parameter], task: TaskConfig, *, file: str
) -> list[SearchSpaceError]:
    errors: list[SearchSpaceError] = []
    for point in probe_points(params):
        try:
            build_run_config(params, point, task=task, train={}, file=file)
        except SearchSpaceError as err:
            if err.param is None:
                err = SearchSpaceError(f"{err.message} (at {point})", file=file)
            errors.append(err)
            if len(errors) >= MAX_REPORTED * 5:
                break
    return errors


def _dedupe(errors: list[SearchSpaceError]) -> list[SearchSpaceError]:
    seen: set[str] = set()
    unique = []
    for err in errors:
        if str(err) not in seen:
            seen.add(str(err))
            unique.append(err)
    return unique
