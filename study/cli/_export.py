"""``nalu-study export``: the best configuration per task x op, or every trial."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, cast

import typer

FORMATS = ("yaml", "json", "parquet")


def export(
    name: Annotated[str, typer.Argument(help="The study's name (its MLflow experiment).")],
    fmt: Annotated[
        str, typer.Option("--format", help="yaml (one train config per task x op), json, parquet.")
    ] = "yaml",
    all_trials: Annotated[
        bool, typer.Option("--all", help="Every trial as one Parquet table instead.")
    ] = False,
    out: Annotated[
        Path | None, typer.Option("--out", help="File or folder; default <study folder>/export/.")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option("--tracking-uri", help="MLflow tracking URI of the study.")
    ] = None,
    workdir: Annotated[
        Path | None, typer.Option("--workdir", help="Folder holding the studies.")
    ] = None,
) -> None:
    """Export the best configuration per task x op of a study, ranked by the Wilson lower
    bound of the success rate, then by median extrapolation MSE, with its evidence.

    The tracking URI comes from --tracking-uri, else NALU_STUDY_TRACKING_URI, else the one the
    study was launched with (study.json), else the embedded SQLite default."""
    from nalu_core import ConfigError
    from study._errors import StudyError
    from study._export import ExportFormat, default_out, study_context, write_export
    from study._settings import redact, resolve_settings
    from study._studies import sqlite_path
    from study.cli._output import check_output, fail, fail_with

    # MLflow draws a progress bar per downloaded config.yaml; the output is the list of files.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if fmt not in FORMATS:
        raise fail_with([("format", f"must be one of {list(FORMATS)}, got {fmt!r}")])
    if all_trials and fmt != "parquet":
        raise fail_with([("format", "--all writes Parquet: pass --format parquet")])
    try:
        settings = resolve_settings(
            name,
            cli={
                "tracking_uri": tracking_uri,
                "workdir": str(workdir) if workdir is not None else None,
            },
            file=_recorded_settings(name, workdir),
        )
        chosen = cast(ExportFormat, fmt)
        target = out or default_out(settings.study_dir(name), fmt=chosen, all_trials=all_trials)
        # an export only reads the store: a missing SQLite file means no such study (opening
        # it would create an empty store)
        store = sqlite_path(settings.tracking_uri)
        if store is not None and not store.is_file():
            raise StudyError(
                f"no study {name!r}: no tracking store at {redact(settings.tracking_uri)}",
                field="name",
            )
        check_output(target, field="out")  # before the (slow) reads
        stores, space = (
            study_context(name, workdir=workdir, tracking_uri=settings.tracking_uri)
            if all_trials
            else ({}, None)
        )
        written = write_export(
            settings.tracking_uri,
            name,
            fmt=chosen,
            out=target,
            all_trials=all_trials,
            space=space,
            storage=stores.get("storage"),
        )
    except (StudyError, ConfigError) as err:
        raise fail(err) from None
    except OSError as err:  # the disk filled up, or the folder went away meanwhile
        raise fail_with([("out", str(err))]) from None
    for path in written:
        typer.echo(str(path))


def _recorded_settings(name: str, workdir: Path | None) -> dict[str, str | None]:
    """The tracking URI the study was launched with (its ``study.json``), if there is one."""
    from study._errors import StudyError
    from study._settings import resolve_settings
    from study._studies import read_record

    try:
        where = resolve_settings(name, cli={"workdir": str(workdir) if workdir else None})
        recorded = read_record(where.study_dir(name)).get("settings", {})
    except StudyError:
        return {}  # a bad name is reported by the caller's own resolve_settings
    uri = recorded.get("tracking_uri") if isinstance(recorded, dict) else None
    return {"tracking_uri": uri} if isinstance(uri, str) else {}


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command("export")(export)
