"""``nalu-study dashboard`` and ``nalu-study report``, added through the
``nalu_study.commands`` entry point so that :mod:`study` never imports :mod:`dashboards`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from study import ENV_VARS, SettingsError, redact, resolve_settings
from study._settings import ANY_STUDY, STUDY_NAME

DEFAULT_PORT = 8050


def _settings(
    study: str | None, *, tracking_uri: str | None, storage: str | None, workdir: Path | None
) -> tuple[str, str | None]:
    """Tracking URI and Optuna storage by the usual precedence: CLI > env > study default."""
    cli = {
        "tracking_uri": tracking_uri,
        "storage": storage,
        "workdir": str(workdir) if workdir else None,
    }
    if study is None and not (tracking_uri or os.environ.get(ENV_VARS["tracking_uri"])):
        raise typer.BadParameter(
            f"give --tracking-uri, set {ENV_VARS['tracking_uri']}, or name a --study whose "
            "default SQLite store to read",
            param_hint="--tracking-uri",
        )
    try:
        # a study's default stores are files in its folder, so only a folder name may pick
        # them; with explicit stores the name is only an MLflow experiment's (any text)
        explicit = tracking_uri or os.environ.get(ENV_VARS["tracking_uri"])
        folder = study if study and (not explicit or STUDY_NAME.fullmatch(study)) else None
        settings = resolve_settings(folder or ANY_STUDY, cli=cli)
    except SettingsError as err:
        raise typer.BadParameter(
            str(err), param_hint=f"--{(err.field or '').replace('_', '-')}"
        ) from err
    explicit_storage = storage or os.environ.get(ENV_VARS["storage"])
    # The default Optuna file is only used when the study has one; importance then falls
    # back to the trials in MLflow.
    default_storage = (
        settings.storage if folder and settings.storage.startswith("sqlite:") else None
    )
    if default_storage and not Path(default_storage.removeprefix("sqlite:///")).exists():
        default_storage = None
    return settings.tracking_uri, explicit_storage or default_storage


def register(app: typer.Typer) -> None:
    """Adds ``dashboard`` and ``report`` to the ``nalu-study`` command line."""

    @app.command("dashboard")
    def dashboard(
        tracking_uri: str | None = typer.Option(
            None, help="MLflow tracking URI to read [env NALU_STUDY_TRACKING_URI]."
        ),
        storage: str | None = typer.Option(
            None, help="Optuna storage URL, for importance [env NALU_STUDY_STORAGE]."
        ),
        study: str | None = typer.Option(None, help="Study whose default SQLite stores to read."),
        workdir: Path | None = typer.Option(None, help="Studies folder (with --study)."),
        host: str = typer.Option("127.0.0.1", help="Interface to bind; loopback by default."),
        port: int = typer.Option(DEFAULT_PORT, help="Port to listen on."),
        ttl: float = typer.Option(30.0, help="Seconds MLflow reads are reused for."),
        mlflow_ui: str | None = typer.Option(None, help="MLflow UI base URL for run links."),
        snapshot_dir: Path | None = typer.Option(
            None,
            help="Where the last read of each study is kept for a fast restart "
            "[default: ~/.cache/nalu-study/dashboard].",
        ),
        no_snapshot: bool = typer.Option(
            False, "--no-snapshot", help="Keep no snapshot; always read the store."
        ),
    ) -> None:
        """Serve the web dashboard (HTML pages and a JSON API documented at /docs)."""
        import uvicorn

        from dashboards._app import create_app
        from dashboards._service import Dashboard
        from dashboards._snapshot import default_snapshot_dir

        uri, optuna_storage = _settings(
            study, tracking_uri=tracking_uri, storage=storage, workdir=workdir
        )
        snapshots = None if no_snapshot else (snapshot_dir or default_snapshot_dir())
        dash = Dashboard(
            uri, storage=optuna_storage, ttl=ttl, ui_url=mlflow_ui, snapshot_dir=snapshots
        )
        dash.warm_up()
        typer.echo(f"nalu-study dashboard on http://{host}:{port}/ reading {redact(uri)}")
        typer.echo(f"JSON API: http://{host}:{port}/docs")
        uvicorn.run(create_app(dash), host=host, port=port, log_level="warning")

    @app.command("report")
    def report(
        name: str = typer.Argument(..., help="Study (MLflow experiment) name."),
        out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
        tracking_uri: str | None = typer.Option(None, help="MLflow tracking URI to read."),
        storage: str | None = typer.Option(None, help="Optuna storage URL (for importance)."),
        workdir: Path | None = typer.Option(None, help="Studies folder for the default stores."),
        evaluator: str = typer.Option("ped_anova", help="ped_anova, fanova or mdi."),
        mlflow_ui: str | None = typer.Option(None, help="MLflow UI base URL for run links."),
    ) -> None:
        """Write every view of one study as a single self-contained HTML file."""
        from dashboards._errors import DashboardError
        from dashboards._report import write_report
        from dashboards._service import Dashboard

        uri, optuna_storage = _settings(
            name, tracking_uri=tracking_uri, storage=storage, workdir=workdir
        )
        dash = Dashboard(uri, storage=optuna_storage, ui_url=mlflow_ui)
        try:
            path = write_report(dash, name, out, evaluator=evaluator)
        except DashboardError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from err
        size = path.stat().st_size / 1e6
        typer.echo(f"wrote {path} ({size:.1f} MB, self-contained; open it in any browser)")
