"""Plotly figures as plain dicts (``{"data": [...], "layout": {...}}``).

Plain dicts skip plotly.graph_objects' validation, which costs more than the rest of a page
for a 10,000-trial scatter; the browser's plotly.js validates them anyway.
"""

from __future__ import annotations

import math
from typing import Any

from dashboards._models import (
    CurvePoint,
    DivisionResponse,
    ImportanceResponse,
    ParallelResponse,
    ScatterResponse,
    SeedRow,
    TrialRow,
)
from study import MSE_FLOOR

Figure = dict[str, Any]
SOLVED_SYMBOL = "star"
SOLVED_NOTE = f"\u2605 = MSE 0 (solved), drawn at {MSE_FLOOR:.0e}"
PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def floored(values: list[float | None]) -> tuple[list[float | None], list[bool]]:
    """Values for a log axis: MSE 0 (and anything below the floor) drawn at ``MSE_FLOOR``.

    Returns the values to plot and, per value, whether it was floored (to mark it): on a log
    axis a 0 would vanish, and with it the set-ups that solved the task exactly.
    """
    out: list[float | None] = []
    marks: list[bool] = []
    for v in values:
        low = v is not None and math.isfinite(v) and v <= MSE_FLOOR
        out.append(MSE_FLOOR if low else v)
        marks.append(low)
    return out, marks


def _solved_note(marked: bool = True) -> list[dict[str, Any]]:
    """The legend line for the stars, on plots that have one."""
    if not marked:
        return []
    return [
        {
            "text": SOLVED_NOTE,
            "xref": "paper",
            "yref": "paper",
            "x": 0,
            "y": 1.0,
            "yanchor": "bottom",
            "showarrow": False,
            "font": {"size": 11, "color": "#555"},
        }
    ]


def _symbols(marks: list[bool], default: str = "circle") -> list[str]:
    return [SOLVED_SYMBOL if m else default for m in marks]


def unit_colors(units: list[str]) -> dict[str, str]:
    return {u: PALETTE[i % len(PALETTE)] for i, u in enumerate(sorted(set(units)))}


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "margin": {"l": 70, "r": 20, "t": 60, "b": 50},
        "template": "plotly_white",
        **extra,
    }


def ci_bars(rows: list[TrialRow], *, title: str, label: str = "unit") -> Figure:
    """Success rate with its Wilson 95% interval, one horizontal bar per row, best on top."""
    shown = [r for r in rows if r.success_rate is not None]
    labels = [f"#{i + 1} {r.unit}" if label == "rank" else r.unit for i, r in enumerate(shown)]
    rate = [r.success_rate or 0.0 for r in shown]
    plus = [max((r.success_upper or v) - v, 0.0) for r, v in zip(shown, rate, strict=True)]
    minus = [max(v - (r.success_lower or v), 0.0) for r, v in zip(shown, rate, strict=True)]
    colors = unit_colors([r.unit for r in shown])
    trace = {
        "type": "bar",
        "orientation": "h",
        "x": rate,
        "y": labels,
        "marker": {"color": [colors[r.unit] for r in shown]},
        "error_x": {"type": "data", "symmetric": False, "array": plus, "arrayminus": minus},
        "customdata": [[r.run_id, r.config] for r in shown],
        "hovertemplate": "%{y}: %{x:.2f}<br>%{customdata[1]}<extra></extra>",
    }
    layout = _layout(
        title,
        xaxis={"title": {"text": "success rate (Wilson 95% CI)"}, "range": [0, 1.05]},
        yaxis={"autorange": "reversed", "type": "category"},
        height=max(260, 40 + 26 * len(shown)),
    )
    return {"data": [trace], "layout": layout}


def division_figure(div: DivisionResponse) -> Figure:
    colors = unit_colors([c.unit for c in div.curves])
    traces = []
    any_marked = False
    for curve in div.curves:
        ys, marks = floored([p.error for p in curve.points])
        any_marked = any_marked or any(marks)
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": curve.unit,
                "x": [p.abs_denominator for p in curve.points],
                "y": ys,
                "line": {"color": colors[curve.unit]},
                "marker": {"symbol": _symbols(marks), "size": [12 if m else 6 for m in marks]},
                "hovertemplate": curve.unit + ": |d|=%{x:.1e} error=%{y:.3g}<extra></extra>",
            }
        )
    layout = _layout(
        f"{div.task}/{div.op}: extrapolation error vs |denominator| (best config per unit)",
        xaxis={"type": "log", "title": {"text": "|denominator|"}, "exponentformat": "e"},
        yaxis={
            "type": "log",
            "title": {"text": "extrapolation error (median over seeds)"},
            "exponentformat": "e",
        },
        height=460,
        annotations=_solved_note(any_marked),
    )
    return {"data": traces, "layout": layout}


# Below this many complete trials an importance ranking is mostly noise (fANOVA and
# PED-ANOVA fit a forest or compare quantiles over the trials they have).
FEW_TRIALS = 20


def importance_figure(imp: ImportanceResponse) -> Figure:
    rows = sorted(imp.importances, key=lambda i: i.importance)
    trace = {
        "type": "bar",
        "orientation": "h",
        "x": [i.importance for i in rows],
        "y": [i.param for i in rows],
        "marker": {"color": "#1f77b4"},
    }
    title = f"importance for {imp.target} ({imp.evaluator}, {imp.trials} trials)"
    if imp.trials < FEW_TRIALS:
        title += " - too few trials to rely on"
    layout = _layout(
        title,
        xaxis={"title": {"text": "normalised importance"}},
        # automargin: long parameter names (regularizer_lambda, task.input_size) stay whole
        yaxis={"automargin": True},
        height=max(260, 60 + 28 * len(rows)),
    )
    return {"data": [trace], "layout": layout}


def _short(value: float) -> str:
    return f"{value:.2g}"


def _log_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    first, last = math.floor(math.log10(low)), math.ceil(math.log10(high))
    step = max(1, (last - first) // 6)
    decades = list(range(first, last + 1, step))
    return [float(d) for d in decades], [f"1e{d}" for d in decades]


def parallel_figure(par: ParallelResponse) -> Figure:
    """Parallel coordinates of the chosen axes: log-sampled ones on log10 axes with decade
    labels, numbers short (two significant digits), categories by name."""
    dims: list[dict[str, Any]] = []
    for name in par.params:
        column = [row.get(name) for row in par.rows]
        if par.numeric[name]:
            numbers = [float(v) for v in column if isinstance(v, int | float)]
            if par.log.get(name) and numbers and min(numbers) > 0:
                tickvals, ticktext = _log_ticks(min(numbers), max(numbers))
                values = [
                    math.log10(float(v)) if isinstance(v, int | float) and v > 0 else None
                    for v in column
                ]
                dims.append(
                    {
                        "label": f"{name} (log)",
                        "values": values,
                        "tickvals": tickvals,
                        "ticktext": ticktext,
                    }
                )
            else:
                dims.append({"label": name, "values": column, "tickformat": ".2~g"})
            continue
        cats = sorted({str(v) for v in column})
        index = {c: i for i, c in enumerate(cats)}
        dims.append(
            {
                "label": name,
                "values": [index[str(v)] for v in column],
                "tickvals": list(range(len(cats))),
                "ticktext": cats,
            }
        )
    target = [row.get(par.target) for row in par.rows]
    dims.append({"label": par.target, "values": target, "range": [0, 1], "tickformat": ".1f"})
    trace = {
        "type": "parcoords",
        "line": {
            "color": [t if t is not None else 0.0 for t in target],
            "colorscale": "Viridis",
            "cmin": 0,
            "cmax": 1,
            "showscale": True,
        },
        "labelangle": -20,
        "labelside": "top",
        "dimensions": dims,
    }
    return {
        "data": [trace],
        "layout": _layout(
            "parallel coordinates (complete trials)",
            height=480,
            margin={"l": 100, "r": 60, "t": 110, "b": 40},  # tilted labels stay whole
        ),
    }


def scatter_figure(sc: ScatterResponse) -> Figure:
    """Interpolation vs extrapolation MSE, log-log, with the diagonal (equal errors) drawn and
    solved trials (MSE 0) floored and starred."""
    colors = unit_colors([p.unit for p in sc.points])
    traces = []
    shown: list[float] = []
    any_marked = False
    for unit, color in colors.items():
        pts = [p for p in sc.points if p.unit == unit]
        xs, x_marks = floored([p.interpolation_mse_median for p in pts])
        ys, y_marks = floored([p.extrapolation_mse_median for p in pts])
        marks = [a or b for a, b in zip(x_marks, y_marks, strict=True)]
        any_marked = any_marked or any(marks)
        shown += [v for v in xs + ys if v is not None and math.isfinite(v) and v > 0]
        traces.append(
            {
                "type": "scattergl",
                "mode": "markers",
                "name": unit,
                "x": xs,
                "y": ys,
                "marker": {
                    "color": color,
                    "size": [13 if m else 7 for m in marks],
                    "symbol": _symbols(marks),
                    "opacity": 0.75,
                },
                "customdata": [[p.run_id, p.op] for p in pts],
                "hovertemplate": unit + " %{customdata[1]}<br>interp %{x:.2e}"
                "<br>extrap %{y:.2e}<extra></extra>",
            }
        )
    if shown:
        low, high = min(shown), max(shown)
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "extrapolation = interpolation",
                "x": [low, high],
                "y": [low, high],
                "line": {"color": "#888", "dash": "dash", "width": 1},
                "hoverinfo": "skip",
            }
        )
    layout = _layout(
        "interpolation vs extrapolation MSE (median over seeds)",
        xaxis={"type": "log", "title": {"text": "interpolation MSE"}, "exponentformat": "e"},
        yaxis={"type": "log", "title": {"text": "extrapolation MSE"}, "exponentformat": "e"},
        height=480,
        annotations=_solved_note(any_marked),
    )
    return {"data": traces, "layout": layout}


def curves_figure(
    curves: dict[str, list[CurvePoint]], *, keys: list[str], title: str, log: bool
) -> Figure:
    traces = []
    any_marked = False
    for key in keys:
        points = curves.get(key)
        if not points:
            continue
        ys: list[float | None] = [p.value for p in points]
        marks = [False] * len(ys)
        if log:
            ys, marks = floored(ys)
            any_marked = any_marked or any(marks)
        trace: dict[str, Any] = {
            "type": "scatter",
            "mode": "lines+markers" if any(marks) else "lines",
            "name": key,
            "x": [p.step for p in points],
            "y": ys,
        }
        if any(marks):
            trace["marker"] = {
                "symbol": _symbols(marks),
                "size": [11 if m else 0 for m in marks],
            }
        traces.append(trace)
    yaxis: dict[str, Any] = {"type": "log", "exponentformat": "e"} if log else {"range": [0, 1.05]}
    layout = _layout(
        title,
        xaxis={"title": {"text": "step"}},
        yaxis=yaxis,
        height=340,
        annotations=_solved_note(any_marked),
    )
    return {"data": traces, "layout": layout}


def seeds_figure(seeds: list[SeedRow]) -> Figure:
    shown = [s for s in seeds if s.extrapolation_mse is not None]
    ys, marks = floored([s.extrapolation_mse for s in shown])
    trace = {
        "type": "scatter",
        "mode": "markers",
        "x": [s.seed for s in shown],
        "y": ys,
        "marker": {
            "color": ["#2ca02c" if s.success else "#d62728" for s in shown],
            "size": [13 if m else 8 for m in marks],
            "symbol": _symbols(marks),
        },
        "hovertemplate": "seed %{x}: %{y:.2e}<extra></extra>",
    }
    layout = _layout(
        "extrapolation MSE per seed (green = success)",
        xaxis={"title": {"text": "seed"}},
        yaxis={"type": "log", "exponentformat": "e"},
        height=320,
        annotations=_solved_note(any(marks)),
    )
    return {"data": [trace], "layout": layout}
