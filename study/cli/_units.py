"""``nalu-study units``: every registered unit with its options, defaults and schedule."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nalu_core import UNITS, OptionSpec, UnitSpec


def _option(spec: OptionSpec) -> dict[str, Any]:
    return {
        "type": spec.type.__name__,
        "default": spec.default,
        "allowed": spec.allowed(),
        "choices": list(spec.choices) if spec.choices is not None else None,
        "doc": spec.doc,
    }


def describe_unit(spec: UnitSpec) -> dict[str, Any]:
    """The JSON form of one unit (what ``nalu-study units --json`` prints per unit)."""
    schedule = spec.regularizer
    return {
        "name": spec.name,
        "kind": spec.kind,
        "doc": spec.doc,
        "options": {key: _option(option) for key, option in spec.options.items()},
        "fixed": dict(spec.fixed),
        "regularizer": None
        if schedule is None
        else {"lambda": schedule.lambda_, "start": schedule.start, "end": schedule.end},
    }


def units(
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """List every unit with its options, defaults and published regulariser schedule."""
    described = [describe_unit(UNITS[name]) for name in sorted(UNITS)]
    if as_json:
        typer.echo(json.dumps({"schema": "nalu-study/units/1", "units": described}, indent=2))
        return
    table = Table(title="nalu-study units")
    for column in ("unit", "kind", "options (default)", "regulariser", "description"):
        table.add_column(column)
    for unit in described:
        options = "\n".join(
            f"{key} ({option['default']!r}; {option['allowed']})"
            for key, option in unit["options"].items()
        )
        reg = unit["regularizer"]
        schedule = "-" if reg is None else f"λ̂={reg['lambda']:g}, {reg['start']:g}→{reg['end']:g}"
        table.add_row(unit["name"], unit["kind"], options or "-", schedule, unit["doc"])
    Console(width=200).print(table)


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command("units")(units)
