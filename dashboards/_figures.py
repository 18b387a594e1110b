"""Plotly figures as plain dicts (``{"data": [...], "layout": {...}}``).

Plain dicts skip plotly.graph_objects' validation, which costs more than the rest of a page
for a 10,000-trial scatter; the browser's plotly.js validates them anyway.
"""

from __future__ import annotations

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

Figure = dict[str, Any]
PALETTE = (
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip


def unit_colors(units: list[str]) -> dict[str, str]:
    return {u: PALETTE[i % len(PALETTE)] for i, u in enumerate(sorted(set(units)))}


def _layout(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "margin": {"l": 70, "r": 20, "t": 50, "b": 50},
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
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": curve.unit,
            "x": [p.abs_denominator for p in curve.points],
            "y": [p.error for p in curve.points],
            "line": {"color": colors[curve.unit]},
            "hovertemplate": curve.unit + ": |d|=%{x:.1e} error=%{y:.3g}<extra></extra>",
        }
        for curve in div.curves
    ]
    layout = _layout(
        f"{div.task}/{div.op}: extrapolation error vs |denominator| (best config per unit)",
        xaxis={"type": "log", "title": {"text": "|denominator|"}},
        yaxis={"type": "log", "title": {"text": "extrapolation error (median over seeds)"}},
        height=460,
    )
    return {"data": traces, "layout": layout}


def importance_figure(imp: ImportanceResponse) -> Figure:
    rows = sorted(imp.importances, key=lambda i: i.importance)
    trace = {
        "type": "bar",
        "orientation": "h",
        "x": [i.importance for i in rows],
        "y": [i.param for i in rows],
        "marker": {"color": "#1f77b4"},
    }
    layout = _layout(
        f"importance for {imp.target} ({imp.evaluator}, {imp.trials} trials)",
        xaxis={"title": {"text": "normalised importance"}},
        height=max(260, 60 + 28 * len(rows)),
    )
    return {"data": [trace], "layout": layout}


def parallel_figure(par: ParallelResponse) -> Figure:
    dims: list[dict[str, Any]] = []
    for name in par.params:
        column = [row.get(name) for row in par.rows]
        if par.numeric[name]:
            dims.append({"label": name, "values": column})
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
    dims.append({"label": par.target, "values": target, "range": [0, 1]})
    trace = {
        "type": "parcoords",
        "line": {
            "color": [t if t is not None else 0.0 for t in target],
            "colorscale": "Viridis",
            "cmin": 0,
            "cmax": 1,
            "showscale": True,
        },
        "dimensions": dims,
    }
    return {
        "data": [trace],
        "layout": _layout("parallel coordinates (complete trials)", height=460),
    }


def scatter_figure(sc: ScatterResponse) -> Figure:
    colors = unit_colors([p.unit for p in sc.points])
    traces = []
    for unit, color in colors.items():
        pts = [p for p in sc.points if p.unit == unit]
        traces.append(
            {
                "type": "scattergl",
                "mode": "markers",
                "name": unit,
                "x": [p.interpolation_mse_median for p in pts],
                "y": [p.extrapolation_mse_median for p in pts],
                "marker": {"color": color, "size": 6, "opacity": 0.7},
                "customdata": [[p.run_id, p.op] for p in pts],
                "hovertemplate": unit + " %{customdata[1]}<br>interp %{x:.2e}"
                "<br>extrap %{y:.2e}<extra></extra>",
            }
        )
    layout = _layout(
        "interpolation vs extrapolation MSE (median over seeds)",
        xaxis={"type": "log", "title": {"text": "interpolation MSE"}},
        yaxis={"type": "log", "title": {"text": "extrapolation MSE"}},
        height=460,
    )
    return {"data": traces, "layout": layout}


def curves_figure(
    curves: dict[str, list[CurvePoint]], *, keys: list[str], title: str, log: bool
) -> Figure:
    traces = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": key,
            "x": [p.step for p in curves.get(key, [])],
            "y": [p.value for p in curves.get(key, [])],
        }
        for key in keys
        if curves.get(key)
    ]
    yaxis: dict[str, Any] = {"type": "log"} if log else {"range": [0, 1.05]}
    layout = _layout(title, xaxis={"title": {"text": "step"}}, yaxis=yaxis, height=340)
    return {"data": traces, "layout": layout}


def seeds_figure(seeds: list[SeedRow]) -> Figure:
    shown = [s for s in seeds if s.extrapolation_mse is not None and s.extrapolation_mse > 0]
    trace = {
        "type": "scatter",
        "mode": "markers",
        "x": [s.seed for s in shown],
        "y": [s.extrapolation_mse for s in shown],
        "marker": {"color": ["#2ca02c" if s.success else "#d62728" for s in shown], "size": 8},
        "hovertemplate": "seed %{x}: %{y:.2e}<extra></extra>",
    }
    layout = _layout(
        "extrapolation MSE per seed (green = success)",
        xaxis={"title": {"text": "seed"}},
        yaxis={"type": "log"},
        height=320,
    )
    return {"data": [trace], "layout": layout}
