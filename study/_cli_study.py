"""``nalu-study launch | resume | list | status``: running studies and looking at them.

Spec and settings errors exit with code 2 and name the field before anything is started or
written; other study errors exit with code 1. Ray, Tune and MLflow are imported only by the
commands that run trials, so ``list`` and ``status`` answer quickly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from study._errors import SettingsError, SpecError, StudyError
from study._settings import Settings, resolve_settings
from study._spec import StudySpec, load_spec
from study._studies import (
    SPEC,
    TaskSummary,
    format_ci,
    format_number,
    list_studies,
    read_record,
    study_status,
)

# the query that opens MLflow 3.x's classic runs view (see browse_lines)
MLFLOW_CLASSIC_VIEW = "workflowType=machine_learning"
# a pipe or a CI log is not 80 columns wide: keep the summary table's rows on one line each
_console = Console() if sys.stdout.isatty() else Console(width=200)


def _fail(err: Exception, code: int) -> typer.Exit:
    field = getattr(err, "field", None)
    where = f" [{field}]" if field else ""
    Console(stderr=True).print(
        f"[red]error{escape(where)}:[/red] {escape(str(err))}", highlight=False, soft_wrap=True
    )
    return typer.Exit(code)


def _settings(
    name: str,
    *,
    file: dict[str, str | None],
    address: str | None,
    tracking_uri: str | None,
    storage: str | None,
    workdir: Path | None,
) -> Settings:
    cli = {
        "ray_address": address,
        "tracking_uri": tracking_uri,
        "storage": storage,
        "workdir": None if workdir is None else str(workdir),
    }
    return resolve_settings(name, cli=cli, file=file)


def summary_table(tasks: list[TaskSummary], *, title: str) -> Table:
    """The best configuration per task × op, with its success rate and Wilson CI."""
    table = Table(title=title, title_justify="left")
    for column in ("task × op", "trials", "best #", "success", "95% CI", "extrap. MSE", "config"):
        table.add_column(column, overflow="fold")
    for task in tasks:
        row = task.row()
        counts = row["counts"]
        trials = " ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) or "-"
        params = ", ".join(f"{k}={_short(v)}" for k, v in row["params"].items()) or "-"
        table.add_row(
            task.key,
            trials,
            "-" if row["best_trial"] is None else str(row["best_trial"]),
            format_number(row["success_rate"], ".2f"),
            format_ci(*row["success_ci"]),
            format_number(row["extrapolation_mse_median"]),
            params,
        )
    return table


def overhead_line(stats: dict[str, float]) -> str:
    """Where the wall time went: training, in-trial overhead, and scheduling overhead.

    In-trial overhead is a trial's wall time (from its set-up to its last result) minus the
    trainer's own ``train_seconds``; scheduling overhead is what the concurrent slots spent
    outside any trial during the Tune run (actor start-up, Tune and Optuna in the driver),
    less the slot-time left idle once the last trial had started (reported apart: the budget
    had nothing more to run). Starting a local Ray instance comes before the Tune run and is
    reported apart too.
    """
    n = stats["trials"]
    in_trial = (stats["trial_wall_seconds"] - stats["trial_train_seconds"]) / n
    line = (
        f"{int(n)} trial(s) in {stats['study_wall_seconds']:.1f}s wall; training "
        f"{stats['trial_train_seconds']:.1f}s in all; in-trial overhead {in_trial:.2f}s/trial"
    )
    if stats.get("slots"):
        unused = stats.get("idle_after_last_start_seconds", 0.0)
        idle = stats["study_wall_seconds"] * stats["slots"] - stats["trial_wall_seconds"]
        line += (
            f"; scheduling overhead {(idle - unused) / n:.2f}s/trial "
            f"({int(stats['slots'])} slots; {unused:.1f} slot-s idle at the end, "
            "nothing left to run)"
        )
    if stats.get("ray_start_seconds"):
        line += f"; Ray start {stats['ray_start_seconds']:.1f}s"
    return line


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _run(
    spec: StudySpec,
    settings: Settings,
    *,
    resume: bool,
    num_samples: int | None,
) -> None:
    from study._launch import launch

    try:
        result = launch(
            spec,
            settings,
            resume=resume,
            num_samples=num_samples,
            echo=lambda line: _console.print(line, highlight=False, soft_wrap=True),
        )
    except (SpecError, SettingsError) as err:
        raise _fail(err, 2) from err
    except StudyError as err:
        raise _fail(err, 1) from err
    _console.print(summary_table(result.tasks, title=f"study {spec.name}: best per task × op"))
    stats = result.stats
    if stats.get("trials"):
        _console.print(overhead_line(stats), highlight=False, soft_wrap=True)
    _console.print(
        "\n".join(
            browse_lines(
                spec.name,
                settings,
                study_dir=result.study_dir,
                experiment_id=result.experiment_id,
            )
        ),
        highlight=False,
        soft_wrap=True,
    )


def browse_lines(
    name: str, settings: Settings, *, study_dir: Path, experiment_id: str | None = None
) -> list[str]:
    """Commands that work here to look at the study: ours always, the ecosystem's UIs when
    they are installed (optuna-dashboard comes with the ``ui`` extra).

    MLflow 3.17's UI opens experiments in its GenAI view unless the URL says
    ``workflowType=machine_learning`` (its global GenAI / Model training switch, kept in the
    browser, wins over the experiment's ``mlflow.experimentKind`` tag), so the page to open
    is printed with it."""
    import shutil

    workdir = settings.workdir
    lines = [
        f"results: {study_dir}",
        f"  status:    nalu-study status {name} --workdir {workdir}",
        f"  dashboard: nalu-study dashboard --workdir {workdir}   (every study of the workdir)",
        f"  export:    nalu-study export {name} --workdir {workdir}",
    ]
    page = "/#/experiments" + (f"/{experiment_id}/runs" if experiment_id else "")
    page += f"?{MLFLOW_CLASSIC_VIEW}"
    if settings.tracking_uri.startswith(("http://", "https://")):
        lines.append(f"  mlflow:    open {settings.tracking_uri.rstrip('/')}{page}")
    else:
        lines.append(f"  mlflow:    mlflow ui --backend-store-uri {settings.tracking_uri}")
        lines.append(f"             then open http://127.0.0.1:5000{page}")
    if shutil.which("optuna-dashboard"):
        lines.append(f"  optuna:    optuna-dashboard {settings.storage}")
    else:
        lines.append("  optuna:    pip install -e '.[ui]' for optuna-dashboard")
    return lines


def register(app: typer.Typer) -> None:
    """Adds ``launch``, ``resume``, ``list`` and ``status`` to ``app``."""

    @app.command("launch")
    def launch_cmd(
        spec: str = typer.Argument(..., help="A spec file, or the name of a shipped spec."),
        name: str | None = typer.Option(None, "--name", help="Study name (default: the spec's)."),
        num_samples: int | None = typer.Option(
            None, "--num-samples", min=1, help="Finished trials per task × op."
        ),
        address: str | None = typer.Option(None, "--address", help="auto | HOST:PORT | ray://…"),
        tracking_uri: str | None = typer.Option(None, "--tracking-uri"),
        storage: str | None = typer.Option(None, "--storage", help="Optuna storage URL."),
        workdir: Path | None = typer.Option(None, "--workdir"),
    ) -> None:
        """Launch a study: Ray Tune trials, Optuna sampling and pruning, MLflow tracking."""
        try:
            overrides: dict[str, Any] = {} if name is None else {"name": name}
            if num_samples is not None:
                overrides["budget.num_samples"] = num_samples
            parsed = load_spec(spec, overrides=overrides)
            settings = _settings(
                parsed.name,
                file=dict(parsed.settings),
                address=address,
                tracking_uri=tracking_uri,
                storage=storage,
                workdir=workdir,
            )
        except (SpecError, SettingsError) as err:
            raise _fail(err, 2) from err
        _run(parsed, settings, resume=False, num_samples=None)

    @app.command("resume")
    def resume_cmd(
        name: str = typer.Argument(..., help="The study to continue."),
        num_samples: int | None = typer.Option(
            None, "--num-samples", min=1, help="Raise or lower the per-task budget."
        ),
        address: str | None = typer.Option(None, "--address"),
        tracking_uri: str | None = typer.Option(None, "--tracking-uri"),
        storage: str | None = typer.Option(None, "--storage"),
        workdir: Path | None = typer.Option(None, "--workdir"),
    ) -> None:
        """Continue an interrupted study (even after kill -9): same budget, no duplicates."""
        try:
            base = _settings(
                name, file={}, address=None, tracking_uri=None, storage=None, workdir=workdir
            )
            study_dir = base.study_dir(name)
            record = read_record(study_dir)
            parsed = load_spec(study_dir / SPEC)
            recorded = dict(record.get("settings", {}))
            recorded.pop("workdir", None)
            settings = _settings(
                name,
                file={**dict(parsed.settings), **recorded},
                address=address,
                tracking_uri=tracking_uri,
                storage=storage,
                workdir=workdir,
            )
        except (SpecError, SettingsError) as err:
            raise _fail(err, 2) from err
        except StudyError as err:
            raise _fail(err, 1) from err
        _run(parsed, settings, resume=True, num_samples=num_samples)

    @app.command("list")
    def list_cmd(
        workdir: Path | None = typer.Option(None, "--workdir"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """The studies in the workdir, newest first, with their status."""
        try:
            settings = _settings(
                "_", file={}, address=None, tracking_uri=None, storage=None, workdir=workdir
            )
        except SettingsError as err:
            raise _fail(err, 2) from err
        rows = list_studies(settings.workdir)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        if not rows:
            _console.print(f"no studies in {settings.workdir}")
            return
        table = Table(title=f"studies in {settings.workdir}", title_justify="left")
        for column in ("name", "status", "tasks", "launches", "elapsed", "created"):
            table.add_column(column)
        for row in rows:
            table.add_row(
                str(row["name"]),
                str(row["status"]),
                str(row["tasks"]),
                str(row["launches"]),
                f"{row['elapsed_s']:.0f}s",
                str(row["created"]),
            )
        _console.print(table)

    @app.command("status")
    def status_cmd(
        name: str = typer.Argument(...),
        workdir: Path | None = typer.Option(None, "--workdir"),
        storage: str | None = typer.Option(None, "--storage"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Trial counts by state, the best so far, elapsed and remaining budget."""
        try:
            settings = _settings(
                name, file={}, address=None, tracking_uri=None, storage=storage, workdir=workdir
            )
            status = study_status(settings.study_dir(name), storage_url=storage)
        except SettingsError as err:
            raise _fail(err, 2) from err
        except StudyError as err:
            raise _fail(err, 1) from err
        if as_json:
            typer.echo(json.dumps(status.to_dict(), indent=2, default=str))
            return
        budget = status.to_dict()["budget"]
        totals = " ".join(f"{k.lower()} {v}" for k, v in sorted(status.totals.items())) or "none"
        remaining = budget["remaining_trials"]
        _console.print(
            f"study {status.name}: {status.status} ({status.launches} launch(es))\n"
            f"trials: {totals}\n"
            f"budget: {status.finished} finished of "
            f"{status.budget_total if status.budget_total is not None else 'unlimited'}"
            f"{'' if remaining is None else f', {remaining} left'}; elapsed "
            f"{status.elapsed:.0f}s"
            + (
                ""
                if status.remaining_seconds is None
                else f", {status.remaining_seconds:.0f}s of time limit left"
            ),
            highlight=False,
        )
        _console.print(summary_table(status.tasks, title="best so far per task × op"))
