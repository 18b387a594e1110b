"""The FastAPI app: HTML pages under ``/``, the same data as JSON under ``/api`` (OpenAPI at
``/docs`` and ``/openapi.json``). Errors become a readable page or JSON body, never a trace."""

from __future__ import annotations

import logging
from functools import cache
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Query, Request
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response

from dashboards import _pages as pages
from dashboards._errors import DashboardError, NotFoundError, StoreUnavailableError
from dashboards._importance import DEFAULT_EVALUATOR
from dashboards._models import (
    DivisionResponse,
    ErrorResponse,
    ImportanceResponse,
    LeaderboardResponse,
    MadsenTableResponse,
    ParallelResponse,
    ScatterResponse,
    StudiesResponse,
    TrialResponse,
)
from dashboards._service import Dashboard
from study import redact

log = logging.getLogger("dashboards")

PLOTLY_SRC = '<script src="/static/plotly.min.js"></script>'
Task = Annotated[str | None, Query(description="task name, e.g. static; default: the commonest")]
Op = Annotated[str | None, Query(description="op, e.g. add, sub, mul, div")]
Params = Annotated[
    str | None,
    Query(max_length=2000, description="comma-separated parameters to draw, e.g. unit,lr"),
]


def _axes(params: str | None) -> list[str] | None:
    chosen = [p.strip() for p in (params or "").split(",") if p.strip()]
    return chosen or None


Evaluator = Annotated[
    str, Query(description="Optuna importance evaluator: ped_anova (default), fanova or mdi")
]
# Pages answer within this; slower importance evaluations finish in the background.
PAGE_WAIT_S = 0.5


@cache
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())


class ServerLinks:
    """Links between the live pages."""

    def home(self) -> str:
        return "/"

    def study(self, study: str) -> str:
        return f"/studies/{quote(study, safe='')}"

    def _page(self, study: str, page: str, **query: str) -> str:
        return f"{self.study(study)}/{page}" + (f"?{urlencode(query)}" if query else "")

    def leaderboard(self, study: str, task: str, op: str) -> str:
        return self._page(study, "leaderboard", task=task, op=op)

    def table(self, study: str, task: str) -> str:
        return self._page(study, "table", task=task)

    def division(self, study: str) -> str:
        return self._page(study, "division")

    def importance(self, study: str, task: str | None = None, op: str | None = None) -> str:
        query = {"task": task, "op": op} if task and op else {}
        return self._page(study, "importance", **query)

    def plots(self, study: str) -> str:
        return self._page(study, "plots")

    def trial(self, run_id: str) -> str | None:
        return f"/trials/{quote(run_id, safe='')}"


LINKS = ServerLinks()


def _status(err: DashboardError) -> int:
    if isinstance(err, StoreUnavailableError):
        return 503
    if isinstance(err, NotFoundError):
        return 404
    return 400


def _error_response(request: Request, status: int, title: str, err: BaseException) -> Response:
    field = getattr(err, "field", None)
    # a store's error may quote its URL: never show the password to a viewer
    message = redact(str(err))
    if request.url.path.startswith("/api/"):
        body = ErrorResponse(error=title, detail=message, field=field)
        return JSONResponse(body.model_dump(), status_code=status)
    hint = {
        503: "Check that the tracking server (or SQLite file) is reachable and that "
        "--tracking-uri / NALU_STUDY_TRACKING_URI points at it; the page retries on reload.",
        404: "Go back to the studies list and pick one that exists.",
        400: "Fix the named query parameter.",
    }.get(status, "The error was logged by the dashboard process.")
    page = pages.document(
        title,
        pages.error_section(title, message, hint),
        plotly_js="",
        nav=pages.link("/", "studies"),
    )
    return HTMLResponse(page, status_code=status)


def create_app(dashboard: Dashboard) -> FastAPI:
    """The web app over ``dashboard``; ``nalu-study dashboard`` serves it with uvicorn."""
    app = FastAPI(
        title="nalu-study dashboard",
        version="1",
        description=(
            "Success rates with Wilson intervals, the division failure and hyperparameter "
            "importance of nalu-study studies, read from MLflow (and Optuna storage). Every "
            "HTML page has a JSON twin under /api."
        ),
    )
    app.add_middleware(GZipMiddleware, minimum_size=2048)
    app.state.dashboard = dashboard

    @app.exception_handler(DashboardError)
    async def dashboard_error(request: Request, err: DashboardError) -> Response:
        titles = {503: "Store unavailable", 404: "Not found", 400: "Bad request"}
        return _error_response(request, _status(err), titles[_status(err)], err)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception) -> Response:
        log.exception("dashboard error on %s", request.url.path)
        return _error_response(request, 500, "Internal error", err)

    _add_api(app, dashboard)
    _add_pages(app, dashboard)
    return app


def _add_api(app: FastAPI, dash: Dashboard) -> None:
    errors: dict[int | str, dict[str, Any]] = {
        404: {"model": ErrorResponse, "description": "unknown study, run or slice"},
        503: {"model": ErrorResponse, "description": "tracking store or storage unreachable"},
    }

    @app.get("/api/studies", tags=["api"], responses=errors)
    def api_studies() -> StudiesResponse:
        """Every study in the tracking store with its trial counts by state."""
        return dash.studies()

    @app.get("/api/studies/{study:path}/leaderboard", tags=["api"], responses=errors)
    def api_leaderboard(
        study: str, task: Task = None, op: Op = None, top: int = 50
    ) -> LeaderboardResponse:
        """Configurations of one task/op ranked by success rate, with Wilson 95% bounds."""
        return dash.leaderboard(study, task=task, op=op, top=top)

    @app.get("/api/studies/{study:path}/table", tags=["api"], responses=errors)
    def api_table(study: str, task: Task = None) -> MadsenTableResponse:
        """Madsen-style table: best success rate [CI] per unit (rows) and op (columns)."""
        return dash.table(study, task=task)

    @app.get("/api/studies/{study:path}/division", tags=["api"], responses=errors)
    def api_division(study: str, task: Task = None) -> DivisionResponse:
        """Extrapolation error vs |denominator| of each unit's best div configuration."""
        return dash.division(study, task=task)

    @app.get("/api/studies/{study:path}/importance", tags=["api"], responses=errors)
    def api_importance(
        study: str,
        task: Task = None,
        op: Op = None,
        evaluator: Evaluator = DEFAULT_EVALUATOR,
        wait: float | None = None,
    ) -> ImportanceResponse:
        """Hyperparameter importance for the success rate, from Optuna's evaluators.

        ``wait``: seconds to wait for the result (default: until done); when it runs out
        the answer has ``pending: true`` and the computation continues."""
        return dash.importance(study, task=task, op=op, evaluator=evaluator, wait=wait)

    @app.get("/api/studies/{study:path}/parallel", tags=["api"], responses=errors)
    def api_parallel(
        study: str, task: Task = None, op: Op = None, params: Params = None
    ) -> ParallelResponse:
        """Varying hyperparameters and success rate of every complete trial.

        ``params``: comma-separated axes; default ``unit`` and the params the success rate
        moves with most (at most 8)."""
        return dash.parallel(study, task=task, op=op, params=_axes(params))

    @app.get("/api/studies/{study:path}/scatter", tags=["api"], responses=errors)
    def api_scatter(study: str, task: Task = None, op: Op = None) -> ScatterResponse:
        """Median interpolation vs extrapolation MSE of every trial."""
        return dash.scatter(study, task=task, op=op)

    @app.get("/api/trials/{run_id}", tags=["api"], responses=errors)
    def api_trial(run_id: str) -> TrialResponse:
        """One trial: learning curves, per-seed results, probe and MLflow link."""
        return dash.trial(run_id)


def _html(title: str, body: str, nav: str = "") -> HTMLResponse:
    return HTMLResponse(pages.document(title, body, plotly_js=PLOTLY_SRC, nav=nav))


def _add_pages(app: FastAPI, dash: Dashboard) -> None:
    @app.get("/static/plotly.min.js", include_in_schema=False)
    def static_plotly() -> Response:
        return Response(
            plotly_js(),
            media_type="application/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @app.get("/", include_in_schema=False)
    def studies_page() -> HTMLResponse:
        return _html(
            "studies", pages.studies_section(dash.studies(), LINKS), pages.link("/", "studies")
        )

    @app.get("/studies/{study:path}/leaderboard", include_in_schema=False)
    def leaderboard_page(study: str, task: Task = None, op: Op = None) -> HTMLResponse:
        lb = dash.leaderboard(study, task=task, op=op)
        body = pages.leaderboard_section(lb, LINKS)
        return _html(f"{study} leaderboard {lb.task}/{lb.op}", body, pages.study_nav(LINKS, study))

    @app.get("/studies/{study:path}/table", include_in_schema=False)
    def table_page(study: str, task: Task = None) -> HTMLResponse:
        body = pages.madsen_section(dash.table(study, task=task), LINKS)
        return _html(f"{study} table", body, pages.study_nav(LINKS, study))

    @app.get("/studies/{study:path}/division", include_in_schema=False)
    def division_page(study: str, task: Task = None) -> HTMLResponse:
        body = pages.division_section(dash.division(study, task=task), LINKS)
        return _html(f"{study} division", body, pages.study_nav(LINKS, study))

    @app.get("/studies/{study:path}/importance", include_in_schema=False)
    def importance_page(
        study: str, task: Task = None, op: Op = None, evaluator: Evaluator = DEFAULT_EVALUATOR
    ) -> HTMLResponse:
        imp = dash.importance(study, task=task, op=op, evaluator=evaluator, wait=PAGE_WAIT_S)
        return _html(
            f"{study} importance",
            pages.importance_section(imp, LINKS, dash.studies_slices(study)),
            pages.study_nav(LINKS, study),
        )

    @app.get("/studies/{study:path}/plots", include_in_schema=False)
    def plots_page(
        study: str, task: Task = None, op: Op = None, params: Params = None
    ) -> HTMLResponse:
        # ~1 MB of figure JSON for 10,000 trials: render it once per read of the trials
        axes = _axes(params)
        body = dash.memo(
            study,
            ("plots-html", task, op, tuple(axes or ())),
            lambda _: pages.plots_section(
                dash.parallel(study, task=task, op=op, params=axes),
                dash.scatter(study, task=task, op=op),
            ),
        )
        return _html(f"{study} plots", body, pages.study_nav(LINKS, study))

    @app.get("/trials/{run_id}", include_in_schema=False)
    def trial_page(run_id: str) -> HTMLResponse:
        tr = dash.trial(run_id)
        body = pages.trial_section(tr, LINKS)
        return _html(f"trial {run_id[:8]}", body, pages.study_nav(LINKS, tr.study))

    # last: a path parameter would otherwise swallow the pages above
    @app.get("/studies/{study:path}", include_in_schema=False)
    def study_page(study: str) -> HTMLResponse:
        slices = dash.studies_slices(study)
        return _html(
            study, pages.study_section(study, slices, LINKS), pages.study_nav(LINKS, study)
        )
