"""``nalu-study dashboard`` and ``nalu-study report``, added through the
``nalu_study.commands`` entry point so that :mod:`study` never imports :mod:`dashboards`."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from study import ENV_VARS, SettingsError, redact, resolve_settings
from study._stores import legacy_studies, sqlite_file, study_stores

DEFAULT_PORT = 8050


def _settings(
    study: str | None, *, tracking_uri: str | None, storage: str | None, workdir: Path | None
) -> tuple[str, str | None]:
    """Tracking URI and Optuna storage by the usual precedence: CLI > env > the workdir's.

    Without a URI the workdir's own stores (``<workdir>/mlflow.db``, ``optuna.db``) serve
    every study in it. A ``study`` of the old per-study layout (its ``study.json`` names
    stores in its own folder) is read from those.
    """
    cli = {
        "tracking_uri": tracking_uri,
        "storage": storage,
        "workdir": str(workdir) if workdir else None,
    }
    explicit_uri = tracking_uri or os.environ.get(ENV_VARS["tracking_uri"])
    # with a tracking URI given, ``study`` is only an MLflow experiment name, which may be any
    # string; it must be a valid folder name only to find a study folder in the workdir
    try:
        settings = resolve_settings(study if study and not explicit_uri else "_", cli=cli)
    except SettingsError as err:
        raise typer.BadParameter(
            str(err), param_hint=f"--{(err.field or '').replace('_', '-')}"
        ) from err
    explicit_storage = storage or os.environ.get(ENV_VARS["storage"])
    uri: str = settings.tracking_uri
    default_storage: str | None = settings.storage
    recorded = study_stores(settings.workdir).get(study) if study else None
    if recorded is not None:
        uri, default_storage = recorded["tracking_uri"], recorded["storage"]
    if explicit_uri:
        return explicit_uri, explicit_storage
    db = sqlite_file(uri)
    if db is not None and not db.exists():
        raise typer.BadParameter(
            f"no study store at {db}: launch a study into {settings.workdir} first, pass "
            f"--workdir, or give --tracking-uri (or set {ENV_VARS['tracking_uri']})",
            param_hint="--workdir",
        )
    # Importance falls back to the trials in MLflow when there is no Optuna file.
    optuna_file = sqlite_file(default_storage or "")
    if optuna_file is not None and not optuna_file.exists():
        default_storage = None
    return uri, explicit_storage or default_storage


def _legacy_note(workdir: Path | None, study: str | None) -> str | None:
    """Which studies of the workdir this server does not show (old per-study stores)."""
    if study is not None:
        return None
    settings = resolve_settings("_", cli={"workdir": str(workdir) if workdir else None})
    legacy = legacy_studies(settings.workdir)
    if not legacy:
        return None
    names = ", ".join(legacy)
    return (
        f"not shown: {len(legacy)} study(ies) in the old per-study layout ({names}); "
        f"view one with: nalu-study dashboard --workdir {settings.workdir} --study {legacy[0]}"
    )


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
        study: str | None = typer.Option(
            None, help="Read this study's stores (needed only for the old per-study layout)."
        ),
        workdir: Path | None = typer.Option(
            None, help="Studies folder whose stores to serve [default: ./studies]."
        ),
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
        note = None if tracking_uri else _legacy_note(workdir, study)
        if note:
            typer.echo(note)
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
