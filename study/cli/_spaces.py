"""``nalu-study spaces list|show|validate``: the search spaces, shipped and written."""

from __future__ import annotations

import json
from typing import Any

import typer

from search_spaces import (
    InvalidSearchSpaceError,
    SearchSpaceError,
    list_presets,
    load_space,
    preset_text,
)
from search_spaces._yaml import load_yaml
from study.cli._output import fail

spaces = typer.Typer(
    name="spaces",
    help="Search spaces: list the shipped presets, show one resolved, validate a file.",
    no_args_is_help=True,
)

_EXIT_INVALID = 2


def _fail(err: SearchSpaceError) -> typer.Exit:
    # every problem, one line each: error: <file>: parameters.<name>: <message>
    assert isinstance(err, InvalidSearchSpaceError | SearchSpaceError)
    return fail(err, _EXIT_INVALID)


@spaces.command("list")
def list_spaces(
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (JSON)."),
) -> None:
    """The shipped search spaces, with their tasks and a one-line description."""
    rows: list[dict[str, Any]] = []
    for name in list_presets():
        # read, not validated: listing should be instant (spaces show NAME validates)
        data = load_yaml(preset_text(name))
        description = " ".join(str(data.get("description", "")).split())
        tasks = list(data.get("tasks") or [])
        count = len(data.get("parameters") or {})
        rows.append(
            {"name": name, "tasks": tasks, "parameters": count, "description": description}
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        shown = ",".join(row["tasks"] or ["any"])
        typer.echo(
            f"{row['name']:<20} {shown:<26} {row['parameters']:>3} params  "
            f"{row['description'][:70]}"
        )


@spaces.command("show")
def show(
    name: str = typer.Argument(..., help="preset name or YAML file"),
) -> None:
    """Print a space as YAML with every default and target resolved."""
    try:
        space = load_space(name)
    except SearchSpaceError as err:
        raise _fail(err) from None
    typer.echo(space.to_yaml(), nl=False)


@spaces.command("validate")
def validate(
    file: str = typer.Argument(..., help="YAML file (or preset name) to check"),
) -> None:
    """Check a space against the units, options and tasks: exit 0 if valid, 2 otherwise."""
    try:
        space = load_space(file)
    except SearchSpaceError as err:
        raise _fail(err) from None
    conditional = sum(p.conditional for p in space.parameters)
    typer.echo(
        f"{file}: valid search space {space.name!r}: {len(space.parameters)} parameters "
        f"({conditional} conditional)"
    )


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.add_typer(spaces, name="spaces")
