"""One error format for every ``nalu-study`` command.

A failed command prints one line per problem, ``error: <field>: <message>`` (the field is a
spec key, a setting, an option or a path), to stderr, or with ``--json`` one JSON object
``{"errors": [{"field": ..., "message": ...}]}`` to stdout; then it exits (2 for bad input,
1 for a study that cannot go on). Every line goes through :func:`study.redact`: no message
shows a password.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import typer

from study._settings import redact

EXIT_INVALID = 2
EXIT_FAILED = 1


def problems(err: BaseException) -> list[tuple[str, str]]:
    """``(field, message)`` for each problem ``err`` reports (several for a whole spec)."""
    nested = getattr(err, "errors", None)
    if isinstance(nested, list) and nested and all(isinstance(e, BaseException) for e in nested):
        return [p for e in nested for p in problems(e)]
    field = getattr(err, "field", None)
    message = str(getattr(err, "message", None) or err)
    if field is None and getattr(err, "param", None) is not None:
        field = f"parameters.{err.param}"  # type: ignore[attr-defined]
    file = getattr(err, "file", None)
    if field is None:
        field = file or "error"
    elif file and not field.startswith(str(file)):
        field = f"{file}: {field}"
    # messages that already start with their field ("training.seeds: must be ...") once only
    message = message.removeprefix(f"{field}: ")
    for prefix in (f"{getattr(err, 'field', '')}: ", f"{file}: "):
        if prefix.strip(": "):
            message = message.removeprefix(prefix)
    return [(str(field), " ".join(message.split()))]


def error_lines(found: Iterable[tuple[str, str]]) -> list[str]:
    return [redact(f"error: {field}: {message}") for field, message in found]


def fail(err: BaseException, code: int = EXIT_INVALID, *, as_json: bool = False) -> typer.Exit:
    """Prints ``err`` in the one format and returns the ``typer.Exit`` to raise."""
    return fail_with(problems(err), code, as_json=as_json)


def fail_with(
    found: list[tuple[str, str]], code: int = EXIT_INVALID, *, as_json: bool = False
) -> typer.Exit:
    if as_json:
        body: dict[str, Any] = {
            "errors": [{"field": f, "message": redact(m)} for f, m in found],
        }
        typer.echo(json.dumps(body, indent=2))
    else:
        for line in error_lines(found):
            typer.echo(line, err=True)
    return typer.Exit(code)


def check_output(path: Any, *, field: str) -> None:
    """Refuses an output path that cannot be written, before any work is done.

    The path's first existing ancestor must be a writable folder (and the path itself, if it
    exists, a file that can be replaced or a folder): an export or a training run never
    finishes its work only to lose the result. Raises :class:`study.StudyError`.
    """
    import os
    from pathlib import Path

    from study._errors import SettingsError

    target = Path(path).expanduser().absolute()
    if target.exists() and not os.access(target, os.W_OK):
        raise SettingsError(f"{target} is not writable", field=field)
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise SettingsError(f"{parent} is a file, not a folder", field=field)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise SettingsError(f"cannot write in {parent}", field=field)
            return
