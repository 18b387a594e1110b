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
import yaml
from rich.console import Console
from rich.table import Table

from study._errors import SettingsError, SpecError, StudyError
from study._settings import ANY_STUDY, Settings, redact, resolve_settings
from study._spec import StudySpec, check_schedulable, load_spec, local_capacity
from study._studies import (
    SPEC,
    TaskSummary,
    check_stores,
    format_ci,
    format_number,
    list_studies,
    read_record,
    study_status,
)
from study.cli._output import EXIT_FAILED, EXIT_INVALID, fail

# the query that opens MLflow 3.x's classic runs view (see browse_lines)
MLFLOW_CLASSIC_VIEW = "workflowType=machine_learning"
# a pipe or a CI log is not 80 columns wide: keep the summary table's rows on one line each
_console = Console() if sys.stdout.isatty() else Console(width=200)


def _fail(err: Exception, code: int, *, as_json: bool = False) -> typer.Exit:
    return fail(err, code, as_json=as_json)


# Help texts shared by the commands
_HELP = {
    "address": "Ray cluster: auto | HOST:PORT | ray://HOST:PORT [env NALU_STUDY_RAY_ADDRESS; "
    "default: a local Ray instance].",
    "tracking_uri": "MLflow tracking URI: http://HOST:5000, sqlite:////abs/mlflow.db, "
    "postgresql://… [env NALU_STUDY_TRACKING_URI; default: a SQLite file in the study folder].",
    "storage": "Optuna storage URL: postgresql://USER@HOST/DB or sqlite:////abs/optuna.db "
    "[env NALU_STUDY_STORAGE; default: a SQLite file in the study folder].",
    "workdir": "Folder holding the studies [env NALU_STUDY_WORKDIR; default: ./studies].",
    "json": "Machine-readable output (JSON), errors included.",
}


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
    try:
        # the checks launch() makes first, before its (slow) imports of Ray and Tune
        check_stores(settings)
        if settings.ray_address is None:
            check_schedulable(spec, [local_capacity()])
        from study._launch import launch

        result = launch(
            spec,
            settings,
            resume=resume,
            num_samples=num_samples,
            echo=lambda line: _console.print(redact(line), highlight=False, soft_wrap=True),
        )
    except (SpecError, SettingsError) as err:
        raise _fail(err, EXIT_INVALID) from None
    except StudyError as err:
        raise _fail(err, EXIT_FAILED) from None
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted: the running trials are marked FAIL; continue with "
            f"`nalu-study resume {spec.name}`",
            err=True,
        )
        raise typer.Exit(130) from None
    _console.print(summary_table(result.tasks, title=f"study {spec.name}: best per task × op"))
    stats = result.stats
    if stats.get("trials"):
        _console.print(overhead_line(stats), highlight=False, soft_wrap=True)
    _console.print(
        redact(
            "\n".join(
                browse_lines(
                    spec.name,
                    settings,
                    study_dir=result.study_dir,
                    experiment_id=result.experiment_id,
                )
            ),
        ),
        highlight=False,
        markup=False,  # the lines hold [ui] and other brackets that are not rich markup
        soft_wrap=True,
    )


def _set_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set KEY=YAML`` pairs as ``load_spec`` overrides; a malformed one is a SpecError."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise SpecError(f"--set takes KEY=YAML, got {pair!r}", field="set")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise SpecError(f"--set {key.strip()}: not valid YAML: {err}", field="set") from err
    return out


def _check_name(name: str | None) -> None:
    if name is not None:
        from study._settings import check_study_name

        check_study_name(name)


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
        address: str | None = typer.Option(None, "--address", help=_HELP["address"]),
        tracking_uri: str | None = typer.Option(
            None, "--tracking-uri", help=_HELP["tracking_uri"]
        ),
        storage: str | None = typer.Option(None, "--storage", help=_HELP["storage"]),
        workdir: Path | None = typer.Option(None, "--workdir", help=_HELP["workdir"]),
        seeds: int | None = typer.Option(
            None, "--seeds", min=1, help="Seeds per trial (training.seeds)."
        ),
        steps: int | None = typer.Option(
            None, "--steps", min=1, help="Steps per trial (training.steps)."
        ),
        set_: list[str] = typer.Option(  # noqa: B008
            [],
            "--set",
            help="KEY=YAML: override a spec key (dotted), e.g. "
            "'budget.time_limit=30m' or 'tasks=[{name: static, ops: [mul]}]'. Repeatable.",
        ),
    ) -> None:
        """Launch a study: Ray Tune trials, Optuna sampling and pruning, MLflow tracking."""
        try:
            _check_name(name)
            overrides: dict[str, Any] = {} if name is None else {"name": name}
            overrides |= _set_overrides(set_)
            if num_samples is not None:
                overrides["budget.num_samples"] = num_samples
            if seeds is not None:
                overrides["training.seeds"] = seeds
            if steps is not None:
                overrides["training.steps"] = steps
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
            raise _fail(err, EXIT_INVALID) from None
        _run(parsed, settings, resume=False, num_samples=None)

    @app.command("resume")
    def resume_cmd(
        name: str = typer.Argument(..., help="The study to continue."),
        num_samples: int | None = typer.Option(
            None, "--num-samples", min=1, help="Raise or lower the per-task budget."
        ),
        address: str | None = typer.Option(None, "--address", help=_HELP["address"]),
        tracking_uri: str | None = typer.Option(
            None, "--tracking-uri", help=_HELP["tracking_uri"]
        ),
        storage: str | None = typer.Option(None, "--storage", help=_HELP["storage"]),
        workdir: Path | None = typer.Option(None, "--workdir", help=_HELP["workdir"]),
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
        except (SpecError, SettingsError, StudyError) as err:
            # a missing or corrupt record is bad input as well: the name or the file is wrong
            raise _fail(err, EXIT_INVALID) from None
        _run(parsed, settings, resume=True, num_samples=num_samples)

    @app.command("list")
    def list_cmd(
        workdir: Path | None = typer.Option(None, "--workdir", help=_HELP["workdir"]),
        as_json: bool = typer.Option(False, "--json", help=_HELP["json"]),
    ) -> None:
        """The studies in the workdir, newest first, with their status."""
        try:
            settings = _settings(
                ANY_STUDY, file={}, address=None, tracking_uri=None, storage=None, workdir=workdir
            )
        except SettingsError as err:
            raise _fail(err, EXIT_INVALID, as_json=as_json) from None
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
                str(row["status"]) + (f" ({row['error']})" if row.get("error") else ""),
                str(row["tasks"]),
                str(row["launches"]),
                f"{row['elapsed_s']:.0f}s",
                str(row["created"]),
            )
        _console.print(table)

    @app.command("status")
    def status_cmd(
        name: str = typer.Argument(..., help="The study to report on."),
        workdir: Path | None = typer.Option(None, "--workdir", help=_HELP["workdir"]),
        storage: str | None = typer.Option(
            None, "--storage", help=_HELP["storage"].replace("default: a SQLite", "default: the")
        ),
        as_json: bool = typer.Option(False, "--json", help=_HELP["json"]),
    ) -> None:
        """Trial counts by state, the best so far, elapsed and remaining budget (reads only)."""
        try:
            settings = _settings(
                name, file={}, address=None, tracking_uri=None, storage=storage, workdir=workdir
            )
            status = study_status(settings.study_dir(name), storage_url=storage)
        except (SettingsError, StudyError) as err:
            raise _fail(err, EXIT_INVALID, as_json=as_json) from None
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
