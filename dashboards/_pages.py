"""HTML for every view, rendered on the server from the API's models.

Numbers are written into the HTML (tables carry ``data-*`` attributes with the exact values),
so the pages read without JavaScript and tests can assert them; Plotly draws the charts.
The same section functions build the live pages and the self-contained report; ``Links``
decides whether a link goes to another page or to an anchor in the report.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable
from importlib import resources
from typing import Any, Protocol

from dashboards import _figures as figs
from dashboards._models import (
    DivisionResponse,
    ImportanceResponse,
    LeaderboardResponse,
    MadsenTableResponse,
    ParallelResponse,
    ScatterResponse,
    StudiesResponse,
    TrialResponse,
    TrialRow,
)

CSS = (resources.files("dashboards") / "static" / "dashboard.css").read_text()


class Links(Protocol):
    def home(self) -> str: ...
    def study(self, study: str) -> str: ...
    def leaderboard(self, study: str, task: str, op: str) -> str: ...
    def table(self, study: str, task: str) -> str: ...
    def division(self, study: str) -> str: ...
    def importance(self, study: str, task: str | None = None, op: str | None = None) -> str: ...
    def plots(self, study: str) -> str: ...
    def trial(self, run_id: str) -> str | None: ...


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def rate_ci(rate: float | None, lo: float | None, hi: float | None) -> str:
    return f"{pct(rate)} [{pct(lo)}, {pct(hi)}]"


def sci(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def link(href: str | None, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>' if href else esc(text)


def plot(div_id: str, figure: dict[str, Any]) -> str:
    # "</script" ends the element early and "<!--" switches the HTML parser into its
    # escaped-script state: no "<" at all reaches the page (JSON reads \u003c as "<")
    payload = json.dumps(figure, separators=(",", ":")).replace("<", "\\u003c")
    return (
        f'<div class="plot" id="{esc(div_id)}"></div>\n<script>(function(){{var f={payload};'
        f'Plotly.newPlot("{esc(div_id)}",f.data,f.layout,{{responsive:true}});}})();</script>'
    )


def document(title: str, body: str, *, plotly_js: str, nav: str = "") -> str:
    return (
        "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}</title><style>{CSS}</style>{plotly_js}</head>\n"
        f"<body><header>{nav}</header><main>\n{body}\n</main></body></html>\n"
    )


def study_nav(links: Links, study: str) -> str:
    items = [
        (links.home(), "studies"),
        (links.study(study), study),
        (links.division(study), "division"),
        (links.importance(study), "importance"),
        (links.plots(study), "plots"),
    ]
    return " ".join(link(href, text) for href, text in items)


def table(headers: Iterable[str], rows: Iterable[str], *, table_id: str) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(rows)
    return (
        f'<table id="{esc(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def studies_section(resp: StudiesResponse, links: Links) -> str:
    rows = [
        f'<tr data-study="{esc(s.name)}"><td>{link(links.study(s.name), s.name)}</td>'
        f'<td class="num">{s.trials}</td><td class="num">{s.states.COMPLETE}</td>'
        f'<td class="num">{s.states.PRUNED}</td><td class="num">{s.states.FAIL}</td>'
        f'<td class="num">{s.states.RUNNING + s.states.OTHER}</td>'
        f'<td class="num">{pct(s.best_success_rate)}</td><td class="slices">'
        + " ".join(link(links.leaderboard(s.name, *sl.split("/", 1)), sl) for sl in s.slices)
        + "</td></tr>"
        for s in resp.studies
    ]
    headers = ["study", "trials", "complete", "pruned", "failed", "other", "best rate", "slices"]
    empty = "" if resp.studies else '<p class="note">No studies in this tracking store yet.</p>'
    return (
        f"<h1>Studies</h1><p class=note>tracking store: <code>{esc(resp.tracking_uri)}</code></p>"
        + table(headers, rows, table_id="studies")
        + empty
    )


def _trial_rows(rows: list[TrialRow], links: Links, *, rank: bool) -> list[str]:
    out = []
    for i, r in enumerate(rows):
        out.append(
            f'<tr data-run-id="{esc(r.run_id)}" data-unit="{esc(r.unit)}" '
            f'data-rate="{r.success_rate}" data-lower="{r.success_lower}" '
            f'data-upper="{r.success_upper}">'
            + (f'<td class="num">{i + 1}</td>' if rank else "")
            + f"<td>{esc(r.unit)}</td>"
            f"<td class=rate>{rate_ci(r.success_rate, r.success_lower, r.success_upper)}</td>"
            f'<td class="num">{sci(r.extrapolation_mse_median)}</td>'
            f'<td class="num">{sci(r.interpolation_mse_median)}</td>'
            f"<td>{esc(r.config)}</td>"
            f"<td>{link(links.trial(r.run_id), r.run_id[:8])}"
            + (f' · <a href="{esc(r.mlflow_url)}">MLflow</a>' if r.mlflow_url else "")
            + "</td></tr>"
        )
    return out


TRIAL_HEADERS = ["unit", "success [95% CI]", "extrap. MSE", "interp. MSE", "config", "run"]


def leaderboard_section(lb: LeaderboardResponse, links: Links, *, anchor: str = "") -> str:
    slice_links = " ".join(
        link(links.leaderboard(lb.study, *sl.split("/", 1)), sl) for sl in lb.slices
    )
    best = figs.ci_bars(lb.best_per_unit, title=f"{lb.task}/{lb.op}: best configuration per unit")
    top = figs.ci_bars(lb.top_configs[:25], title="top configurations", label="rank")
    return (
        f'<h2 id="{esc(anchor)}">Leaderboard {esc(lb.task)}/{esc(lb.op)}</h2>'
        f"<p class=slices>slices: {slice_links} · "
        f"{link(links.table(lb.study, lb.task), 'Madsen table')}</p>"
        f"<p class=note>{lb.complete_trials} complete trial(s); ranked by {esc(lb.ranking)}. "
        "Each trial is one configuration trained over many seeds; "
        "bars are Wilson 95% intervals.</p>"
        + plot(f"best-{anchor or 'lb'}", best)
        + "<h3>Best configuration per unit</h3>"
        + table(
            TRIAL_HEADERS,
            _trial_rows(lb.best_per_unit, links, rank=False),
            table_id=f"best-per-unit{anchor and '-' + anchor}",
        )
        + "<h3>Top configurations</h3>"
        + plot(f"top-{anchor or 'lb'}", top)
        + table(
            ["#", *TRIAL_HEADERS],
            _trial_rows(lb.top_configs, links, rank=True),
            table_id=f"top-configs{anchor and '-' + anchor}",
        )
    )


def madsen_section(tab: MadsenTableResponse, links: Links) -> str:
    head = "".join(f"<th>{esc(op)}</th>" for op in tab.ops)
    rows = []
    for unit in tab.units:
        cells = []
        for op in tab.ops:
            cell = tab.cells.get(unit, {}).get(op)
            if cell is None:
                cells.append("<td>–</td>")
                continue
            text = rate_ci(cell.success_rate, cell.success_lower, cell.success_upper)
            cells.append(
                f'<td data-op="{esc(op)}" data-rate="{cell.success_rate}" '
                f'data-run-id="{esc(cell.run_id)}" title="best of {cell.trials} trials">'
                f"{link(links.trial(cell.run_id), text)}</td>"
            )
        rows.append(f'<tr data-unit="{esc(unit)}"><th>{esc(unit)}</th>{"".join(cells)}</tr>')
    return (
        f'<h2 id="table-{esc(tab.task)}">Success rate by unit and op ({esc(tab.task)})</h2>'
        "<p class=note>Madsen & Johansen (2020) style: each cell is the best configuration's "
        "success rate over seeds with its Wilson 95% interval, linking to that run.</p>"
        f'<table id="madsen"><thead><tr><th>unit</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def division_section(div: DivisionResponse, links: Links) -> str:
    rows = [
        f'<tr data-unit="{esc(c.unit)}" data-growth="{c.growth}" '
        f'data-small="{c.points[0].error}" data-large="{c.points[-1].error}">'
        f"<td>{esc(c.unit)}</td>"
        f"<td>{rate_ci(c.success_rate, c.success_lower, c.success_upper)}</td>"
        f'<td class="num">{c.points[0].abs_denominator:.1e}</td>'
        f'<td class="num">{sci(c.points[0].error)}</td>'
        f'<td class="num">{c.points[-1].abs_denominator:.1e}</td>'
        f'<td class="num">{sci(c.points[-1].error)}</td>'
        f'<td class="num">{"–" if c.growth is None else f"{c.growth:.3g}×"}</td>'
        f"<td>{esc(c.summary or '')}</td><td>{link(links.trial(c.run_id), c.run_id[:8])}</td></tr>"
        for c in div.curves
    ]
    headers = [
        "unit", "success [95% CI]", "smallest |d|", "error there", "largest |d|",
        "error there", "growth", "summary", "run",
    ]  # fmt: skip
    missing = (
        f"<p class=note>No probe artifact for: {esc(', '.join(div.missing))}.</p>"
        if div.missing
        else ""
    )
    return (
        f'<h2 id="division">Division: error vs |denominator| ({esc(div.task)}/{esc(div.op)})</h2>'
        f'<p class="note" id="division-explanation">{esc(div.explanation)}</p>'
        + plot("division-plot", figs.division_figure(div))
        + table(headers, rows, table_id="division-table")
        + missing
    )


def importance_section(
    imp: ImportanceResponse, links: Links, slices: list[str], *, anchor: str = "importance"
) -> str:
    if imp.pending:
        # a plain reload picks up the result that the worker thread is computing
        return (
            f'<meta http-equiv="refresh" content="3"><h2 id="{esc(anchor)}">Hyperparameter '
            f'importance</h2><p class=note id="importance-pending">{esc(imp.note)}</p>'
        )
    where = f"{imp.task}/{imp.op}" if imp.task or imp.op else "all trials"
    rows = [
        f'<tr data-param="{esc(i.param)}"><td>{esc(i.param)}</td>'
        f'<td class="num">{i.importance:.3f}</td></tr>'
        for i in imp.importances
    ]
    body = (
        plot(f"{anchor}-plot", figs.importance_figure(imp))
        + table(["hyperparameter", "importance"], rows, table_id=f"{anchor}-table")
        if imp.importances
        else f"<p class=note>{esc(imp.note or 'no importances')}</p>"
    )
    slice_links = " ".join(
        link(links.importance(imp.study, *sl.split("/", 1)), sl) for sl in slices
    )
    caveat = (
        f'<p class="warning" id="{esc(anchor)}-caveat">Only {imp.trials} complete trial(s): '
        f"an importance ranking needs about {figs.FEW_TRIALS} or more to mean much; read "
        "this as a hint, not a finding.</p>"
        if imp.trials < figs.FEW_TRIALS
        else ""
    )
    return (
        f'<h2 id="{esc(anchor)}">Hyperparameter importance ({esc(where)})</h2>'
        f"<p class=slices>slices: {slice_links}</p>"
        f"<p class=note>Optuna's {esc(imp.evaluator)} evaluator on {imp.trials} complete trials, "
        f"target {esc(imp.target)}, trials from {esc(imp.source)}.</p>" + caveat + body
    )


def axes_form(par: ParallelResponse) -> str:
    """Checkboxes for the parallel-coordinates axes; submits ``?params=a,b`` (a GET form
    would send one ``params`` per box, so a line of script joins them)."""
    if not par.available:
        return ""
    boxes = "".join(
        f'<label><input type=checkbox name=axis value="{esc(n)}"'
        f"{' checked' if n in par.params else ''}> {esc(n)}</label> "
        for n in par.available
    )
    return (
        '<form id="axes-form" class="axes" onsubmit="var v=[].slice.call(this.querySelectorAll('
        "'input[name=axis]:checked')).map(function(i){return i.value}).join(',');"
        "location.search='?params='+encodeURIComponent(v);return false;\">"
        f"axes: {boxes}<button type=submit>draw</button></form>"
    )


def plots_section(par: ParallelResponse, sc: ScatterResponse, *, form: bool = True) -> str:
    logs = [n for n in par.params if par.log.get(n)]
    log_note = f" Log axes (log-sampled): {esc(', '.join(logs))}." if logs else ""
    return (
        '<h2 id="plots">Trials</h2>'
        f"<p class=note>{len(par.rows)} complete trials; colour = {esc(par.target)}; "
        f"{len(par.params)} of {len(par.available)} varying parameters drawn.{log_note}</p>"
        + (axes_form(par) if form else "")
        + plot("parallel-plot", figs.parallel_figure(par))
        + f"<p class=note id=scatter-note>{len(sc.points)} trials with both MSEs. The dashed "
        "diagonal is extrapolation MSE = interpolation MSE: points far above it interpolate "
        f"but do not extrapolate. {esc(figs.SOLVED_NOTE)}; such trials solved the task.</p>"
        + plot("scatter-plot", figs.scatter_figure(sc))
    )


def trial_section(tr: TrialResponse, links: Links) -> str:
    t = tr.trial
    mlflow = (
        f'<a id="mlflow-link" href="{esc(t.mlflow_url)}">open in MLflow</a>'
        if t.mlflow_url
        else f"MLflow run id <code>{esc(t.run_id)}</code>"
    )
    params = "".join(
        f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in sorted(tr.params.items())
    )
    seeds = [
        f'<tr data-seed="{s.seed}"><td class="num">{s.seed}</td>'
        f'<td class="num">{sci(s.interpolation_mse)}</td>'
        f'<td class="num">{sci(s.extrapolation_mse)}</td><td>{esc(s.success)}</td>'
        f'<td class="num">{esc(s.solved_at if s.solved_at is not None else "–")}</td>'
        f'<td class="num">{sci(s.sparsity_error)}</td><td>{esc(s.diverged)}</td></tr>'
        for s in tr.seeds
    ]
    rate = figs.curves_figure(tr.curves, keys=["success_rate"], title="success rate", log=False)
    mse = figs.curves_figure(
        tr.curves,
        keys=["interpolation_mse_median", "extrapolation_mse_median"],
        title="median MSE over seeds",
        log=True,
    )
    anchor = f"trial-{t.run_id}"
    division = ""
    if tr.division is not None:
        div = DivisionResponse(
            study=tr.study, task=t.task, op=t.op, explanation="", curves=[tr.division], missing=[]
        )
        division = plot(f"div-{anchor}", figs.division_figure(div))
    return (
        f'<h2 id="{esc(anchor)}">Trial {esc(t.run_id[:8])}: '
        f"{esc(t.unit)} on {esc(t.task)}/{esc(t.op)}</h2>"
        f"<p>study {link(links.study(tr.study), tr.study)} · state {esc(t.state)} · "
        "success <span id=trial-rate>"
        f"{rate_ci(t.success_rate, t.success_lower, t.success_upper)}</span>"
        f" · optuna trial {esc(t.optuna_trial or '–')} · {mlflow}</p>"
        f"<p class=note>{esc(t.config)}</p>"
        + plot(f"rate-{anchor}", rate)
        + plot(f"mse-{anchor}", mse)
        + division
        + "<h3>Per-seed results</h3>"
        + (plot(f"seeds-{anchor}", figs.seeds_figure(tr.seeds)) if tr.seeds else "")
        + table(
            ["seed", "interp. MSE", "extrap. MSE", "success", "solved at", "sparsity", "diverged"],
            seeds,
            table_id=f"seeds-{t.run_id}",
        )
        + "<h3>Params</h3><table>"
        + params
        + "</table>"
        + f"<p class=note>artifacts: {esc(', '.join(tr.artifacts))}</p>"
    )


def study_section(study: str, slices: list[str], links: Links) -> str:
    tasks = sorted({s.split("/", 1)[0] for s in slices})
    return (
        f"<h1>{esc(study)}</h1><ul>"
        + "".join(
            f"<li>leaderboard {link(links.leaderboard(study, *s.split('/', 1)), s)}</li>"
            for s in slices
        )
        + "".join(f"<li>{link(links.table(study, t), f'Madsen table ({t})')}</li>" for t in tasks)
        + f"<li>{link(links.division(study), 'division panel')}</li>"
        + f"<li>{link(links.importance(study), 'hyperparameter importance')}</li>"
        + f"<li>{link(links.plots(study), 'parallel coordinates and scatter')}</li></ul>"
    )


def error_section(title: str, message: str, hint: str) -> str:
    return (
        f'<div class="error" id="error"><h1>{esc(title)}</h1>'
        f'<p id="error-message">{esc(message)}</p>'
        f"<p class=note>{esc(hint)}</p></div>"
    )
