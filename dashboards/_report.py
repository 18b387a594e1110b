"""``nalu-study report``: every view of one study in a single self-contained HTML file.

plotly.js is inlined (plotly's offline bundle), links become anchors, and the best run of
each Madsen-table cell gets its own trial section, so the file works offline and by e-mail.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from dashboards import _pages as pages
from dashboards._app import plotly_js
from dashboards._errors import DashboardError
from dashboards._importance import DEFAULT_EVALUATOR
from dashboards._service import Dashboard
from study import redact


class ReportLinks:
    """Links inside the report: anchors for what it contains, nothing for what it does not."""

    def __init__(self, study: str, trials: set[str], slices: list[str] | None = None) -> None:
        self._study = study
        self._trials = trials
        self._slices = slices or []

    def home(self) -> str:
        return "#top"

    def study(self, study: str) -> str:
        return "#top"

    def leaderboard(self, study: str, task: str, op: str) -> str:
        return f"#lb-{quote(task)}-{quote(op)}"

    def table(self, study: str, task: str) -> str:
        return f"#table-{quote(task)}"

    def division(self, study: str) -> str:
        return "#division"

    def importance(self, study: str, task: str | None = None, op: str | None = None) -> str:
        if not (task and op) and self._slices:
            task, op = self._slices[0].split("/", 1)  # the contents: the first slice's section
        return f"#importance-{quote(task)}-{quote(op)}" if task and op else "#top"

    def plots(self, study: str) -> str:
        return "#plots"

    def trial(self, run_id: str) -> str | None:
        return f"#trial-{run_id}" if run_id in self._trials else None


def render_report(dash: Dashboard, study: str, *, evaluator: str = DEFAULT_EVALUATOR) -> str:
    """The report's HTML; sections whose data is missing say so instead of failing."""
    slices = dash.studies_slices(study)
    tasks = sorted({s.split("/", 1)[0] for s in slices})
    tables = [dash.table(study, task=t) for t in tasks]
    best_runs = {c.run_id for tab in tables for row in tab.cells.values() for c in row.values()}
    links = ReportLinks(study, best_runs, slices)
    parts = ['<div id="top"></div>', pages.study_section(study, slices, links)]
    parts += [pages.madsen_section(tab, links) for tab in tables]
    for sl in slices:
        task, op = sl.split("/", 1)
        lb = dash.leaderboard(study, task=task, op=op, top=20)
        parts.append(pages.leaderboard_section(lb, links, anchor=f"lb-{quote(task)}-{quote(op)}"))
    parts.append(
        _optional(lambda: pages.division_section(dash.division(study), links), "division")
    )

    def importance_part(task: str, op: str) -> str:
        imp = dash.importance(study, task=task, op=op, evaluator=evaluator)
        anchor = f"importance-{quote(task)}-{quote(op)}"
        return pages.importance_section(imp, links, slices, anchor=anchor)

    for sl in slices:
        parts.append(
            _optional(functools.partial(importance_part, *sl.split("/", 1)), "importance")
        )
    parts.append(pages.plots_section(dash.parallel(study), dash.scatter(study), form=False))
    parts += [pages.trial_section(dash.trial(run_id), links) for run_id in sorted(best_runs)]
    script = f"<script>{plotly_js()}</script>"
    nav = f"nalu-study report · {pages.esc(study)} · {pages.esc(redact(dash.tracking_uri))}"
    return pages.document(
        f"nalu-study report: {study}", "\n".join(parts), plotly_js=script, nav=nav
    )


def _optional(section: Callable[[], str], anchor: str) -> str:
    try:
        return section()
    except DashboardError as err:
        return f'<h2 id="{anchor}">{anchor}</h2><p class=note>{pages.esc(err)}</p>'


def write_report(
    dash: Dashboard, study: str, out: Path, *, evaluator: str = DEFAULT_EVALUATOR
) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(dash, study, evaluator=evaluator), encoding="utf-8")
    return out
