"""What each page shows, computed from the trials; pure functions of :class:`Trial` lists.

A trial is one configuration trained over many seeds, so "ranked by success rate" ranks
configurations. Only COMPLETE trials are ranked: a pruned trial's rate is a partial one.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from dashboards._data import Trial
from dashboards._errors import NotFoundError
from dashboards._models import (
    DivisionCurve,
    DivisionResponse,
    LeaderboardResponse,
    MadsenTableResponse,
    ParallelResponse,
    ProbePoint,
    ScatterPoint,
    ScatterResponse,
    StateCounts,
    StudySummary,
    TableCell,
    TrialRow,
)
from study import division_summary

OP_ORDER = ("add", "sub", "mul", "div", "square", "sqrt")
RANKING = "success_rate desc, then Wilson lower bound desc, then extrapolation_mse_median asc"
DIVISION_EXPLANATION = (
    "Multiplicative units compute NAC\u2022 = \u220f(|z|+\u03b5)^W, "
    "i.e. exp(W\u00b7log(|z|+\u03b5)). "
    "Division needs W < 0 on the denominator, so the output grows like |z|^W as z \u2192 0: "
    "near-zero denominators give huge errors and gradients, and the loss surface has unstable "
    "minima. Averaged MSE hides this; the curves below show the extrapolation error of each "
    "unit's best configuration per decade of |denominator| (log-log), from a probe that moves "
    "the denominator down to 1e-6, far below most extrapolation ranges. Every divider's error "
    "rises there (1/x does), so the summary's verdict comes from the unit's success over "
    "seeds inside the extrapolation range, and the probe's rise is reported apart as "
    "'probe only'. A flat curve is a unit that stays accurate even at tiny denominators."
)

RunUrl = Callable[[Trial], str | None]


def _no_url(trial: Trial) -> str | None:
    return None


def op_sort_key(op: str) -> tuple[int, str]:
    return (OP_ORDER.index(op), op) if op in OP_ORDER else (len(OP_ORDER), op)


def rank_key(trial: Trial) -> tuple[float, float, float, str]:
    rate = trial.metric("success_rate")
    lower = trial.metric("success_lower")
    extra = trial.metric("extrapolation_mse_median")
    return (
        -(rate if rate is not None else -1.0),
        -(lower if lower is not None else -1.0),
        extra if extra is not None else math.inf,
        trial.run_id,
    )


def ranked(trials: Iterable[Trial]) -> list[Trial]:
    return sorted((t for t in trials if t.state == "COMPLETE"), key=rank_key)


def short_value(text: str) -> str:
    """A logged param for reading: numbers to 3 significant digits (0.0123, 1e-07), the rest
    as logged."""
    number = _as_number(text)
    if number is None or text.strip().lower() in ("true", "false"):
        return text
    return f"{number:.3g}"


def config_text(trial: Trial, keys: list[str] | None = None) -> str:
    """``k=v`` of ``keys`` (the params that vary among the trials compared), else of all."""
    params = trial.config_params
    names = sorted(params) if keys is None else [k for k in keys if k in params]
    return " ".join(f"{k}={short_value(params[k])}" for k in names)


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def trial_row(
    trial: Trial, run_url: RunUrl = _no_url, *, keys: list[str] | None = None
) -> TrialRow:
    robust = trial.tags.get("robust")
    return TrialRow(
        run_id=trial.run_id,
        unit=trial.unit,
        task=trial.task,
        op=trial.op,
        state=trial.state,
        config=config_text(trial, keys),
        success_rate=trial.metric("success_rate"),
        success_lower=trial.metric("success_lower"),
        success_upper=trial.metric("success_upper"),
        extrapolation_mse_median=trial.metric("extrapolation_mse_median"),
        interpolation_mse_median=trial.metric("interpolation_mse_median"),
        seeds=_int_or_none(trial.params.get("seeds")),
        robust=None if robust is None else robust.lower() == "true",
        optuna_trial=trial.tags.get("nalu.optuna_trial"),
        mlflow_url=run_url(trial),
    )


def slices(trials: Iterable[Trial]) -> list[str]:
    pairs = {(t.task, t.op) for t in trials}
    return [f"{task}/{op}" for task, op in sorted(pairs, key=lambda p: (p[0], op_sort_key(p[1])))]


def study_summary(name: str, experiment_id: str, trials: list[Trial]) -> StudySummary:
    counts = Counter(t.state for t in trials)
    known = {"COMPLETE", "PRUNED", "FAIL", "RUNNING"}
    states = StateCounts(
        COMPLETE=counts["COMPLETE"],
        PRUNED=counts["PRUNED"],
        FAIL=counts["FAIL"],
        RUNNING=counts["RUNNING"],
        OTHER=sum(n for s, n in counts.items() if s not in known),
    )
    best = ranked(trials)
    return StudySummary(
        name=name,
        experiment_id=experiment_id,
        trials=len(trials),
        states=states,
        slices=slices(trials),
        best_success_rate=best[0].metric("success_rate") if best else None,
    )


def pick_slice(trials: list[Trial], task: str | None, op: str | None) -> tuple[str, str]:
    """The requested task/op, or a sensible default: the first op of the commonest task."""
    if not trials:
        raise NotFoundError("the study has no trials yet", field="study")
    tasks = Counter(t.task for t in trials)
    task = task or ("static" if "static" in tasks else tasks.most_common(1)[0][0])
    ops = sorted({t.op for t in trials if t.task == task}, key=op_sort_key)
    if not ops:
        raise NotFoundError(f"no trials for task {task!r}; have {sorted(tasks)}", field="task")
    op = op or ops[0]
    if op not in ops:
        raise NotFoundError(f"no trials for {task}/{op}; ops of {task}: {ops}", field="op")
    return task, op


def leaderboard(
    study: str,
    trials: list[Trial],
    *,
    task: str | None = None,
    op: str | None = None,
    top: int = 50,
    run_url: RunUrl = _no_url,
) -> LeaderboardResponse:
    task, op = pick_slice(trials, task, op)
    best = ranked(t for t in trials if t.task == task and t.op == op)
    per_unit: dict[str, Trial] = {}
    for trial in best:
        per_unit.setdefault(trial.unit, trial)
    keys, _ = hyperparameters(best)
    return LeaderboardResponse(
        study=study,
        task=task,
        op=op,
        slices=slices(trials),
        ranking=RANKING,
        best_per_unit=[trial_row(t, run_url, keys=keys) for t in per_unit.values()],
        top_configs=[trial_row(t, run_url, keys=keys) for t in best[:top]],
        complete_trials=len(best),
    )


def madsen_table(
    study: str, trials: list[Trial], *, task: str | None = None
) -> MadsenTableResponse:
    task, _ = pick_slice(trials, task, None)
    cells: dict[str, dict[str, TableCell]] = {}
    counts = Counter((t.unit, t.op) for t in trials if t.task == task and t.state == "COMPLETE")
    for trial in ranked(t for t in trials if t.task == task):
        row = cells.setdefault(trial.unit, {})
        rate, lo, hi = (
            trial.metric(k) for k in ("success_rate", "success_lower", "success_upper")
        )
        if trial.op in row or rate is None:
            continue
        row[trial.op] = TableCell(
            success_rate=rate,
            success_lower=lo if lo is not None else rate,
            success_upper=hi if hi is not None else rate,
            run_id=trial.run_id,
            trials=counts[(trial.unit, trial.op)],
        )
    ops = sorted({t.op for t in trials if t.task == task}, key=op_sort_key)
    return MadsenTableResponse(study=study, task=task, units=sorted(cells), ops=ops, cells=cells)


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _median_of(value: Any) -> float | None:
    if isinstance(value, list | tuple):
        numbers = [float(v) for v in value if v is not None and math.isfinite(float(v))]
        return statistics.median(numbers) if numbers else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


_X_KEYS = ("abs_denominator", "denominator", "center", "centre", "x")
_LO_KEYS = ("lo", "low", "lower", "abs_denominator_lo", "denominator_lo", "min")
_HI_KEYS = ("hi", "high", "upper", "abs_denominator_hi", "denominator_hi", "max")
_Y_KEYS = (
    "extrapolation_mse_median",
    "mse_median",
    "error_median",
    "median",
    "extrapolation_mse",
    "mse",
    "error",
    "y",
)


def _first(record: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if record.get(key) is not None:
            return record[key]
    return None


def _records(data: Any) -> list[dict[str, Any]]:
    """The probe as a list of per-bin records, whether stored by rows or by columns."""
    if isinstance(data, list):
        return [r for r in data if isinstance(r, dict)]
    if not isinstance(data, dict):
        return []
    for key in ("bins", "curve", "points", "probe", "division_probe", "records"):
        if key in data:
            return _records(data[key])
    columns = {k: v for k, v in data.items() if isinstance(v, list)}
    lengths = {len(v) for v in columns.values()}
    if columns and len(lengths) == 1:
        n = lengths.pop()
        return [{k: v[i] for k, v in columns.items()} for i in range(n)]
    return []


def parse_probe(data: Any) -> list[ProbePoint]:
    """Tolerant reader of division_probe.json: bins of |denominator| with an error each."""
    points: list[ProbePoint] = []
    for record in _records(data):
        lo, hi = _positive(_first(record, _LO_KEYS)), _positive(_first(record, _HI_KEYS))
        x = _positive(_first(record, _X_KEYS))
        if x is None and lo is not None and hi is not None:
            x = math.sqrt(lo * hi)
        elif x is None:
            # open-ended decades (<= 1e-4, > 1): half a decade inside the open side
            x = hi / math.sqrt(10) if hi is not None else lo * math.sqrt(10) if lo else None
        y = _median_of(_first(record, _Y_KEYS))
        if x is None or y is None:
            continue
        count = record.get("count", record.get("n"))
        points.append(
            ProbePoint(
                abs_denominator=x,
                lo=lo,
                hi=hi,
                error=y,
                count=int(count) if isinstance(count, int | float) else None,
            )
        )
    return sorted(points, key=lambda p: p.abs_denominator)


def division(
    study: str,
    trials: list[Trial],
    *,
    probe: Callable[[Trial], Any],
    task: str | None = None,
    op: str = "div",
) -> DivisionResponse:
    """Best configuration of each unit on ``op``, with its probe curve read by ``probe``."""
    div_trials = [t for t in trials if t.op == op]
    if not div_trials:
        raise NotFoundError(f"the study has no {op!r} trials", field="op")
    task, op = pick_slice(div_trials, task, op)
    per_unit: dict[str, Trial] = {}
    for trial in ranked(t for t in div_trials if t.task == task):
        per_unit.setdefault(trial.unit, trial)
    curves: list[DivisionCurve] = []
    missing: list[str] = []
    for unit, trial in sorted(per_unit.items()):
        points = parse_probe(probe(trial))
        if not points:
            missing.append(unit)
            continue
        curves.append(division_curve(trial, points))
    return DivisionResponse(
        study=study,
        task=task,
        op=op,
        explanation=DIVISION_EXPLANATION,
        curves=curves,
        missing=missing,
    )


def division_curve(trial: Trial, points: list[ProbePoint]) -> DivisionCurve:
    growth = None
    if len(points) >= 2 and points[-1].error > 0:
        growth = points[0].error / points[-1].error
    rate, lower, upper = (
        trial.metric(name) for name in ("success_rate", "success_lower", "success_upper")
    )
    # Worded here from the seeds' success in the extrapolation range (older runs carry a tag
    # that called every unit "fails near zero" from the probe's tiny denominators alone).
    bins = [
        {"lo": p.lo, "hi": p.hi, "mse_median": p.error}
        if p.lo is not None and p.hi is not None
        else {"center": p.abs_denominator, "label": f"{p.abs_denominator:.0e}", "mse": p.error}
        for p in points
    ]
    ci = None if lower is None or upper is None else (lower, upper)
    summary = division_summary({"bins": bins}, success_rate=rate, success_ci=ci)
    return DivisionCurve(
        unit=trial.unit,
        run_id=trial.run_id,
        success_rate=rate,
        success_lower=lower,
        success_upper=upper,
        summary=summary or trial.tags.get("division_summary"),
        points=points,
        growth=growth,
    )


def _as_number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _in_slice(trial: Trial, task: str | None, op: str | None) -> bool:
    return (task is None or trial.task == task) and (op is None or trial.op == op)


def hyperparameters(trials: list[Trial]) -> tuple[list[str], dict[str, bool]]:
    """Params that vary across ``trials`` (plus unit), and whether each is numeric."""
    names: set[str] = set()
    for trial in trials:
        names.update(trial.config_params)
    values: dict[str, set[str]] = {n: set() for n in names}
    for trial in trials:
        for name in names:
            values[name].add(trial.params.get(name, ""))
    varying = sorted(n for n, v in values.items() if len(v) > 1)
    if len({t.unit for t in trials}) > 1:
        varying.insert(0, "unit")
        values["unit"] = {t.unit for t in trials}
    numeric = {n: all(_as_number(v) is not None for v in values[n]) for n in varying}
    return varying, numeric


# More axes than this make parallel coordinates unreadable (22 axes was reported).
MAX_AXES = 8
# A positive numeric param spanning this ratio or more was sampled on a log scale (the rule
# importance uses to rebuild distributions from MLflow params).
LOG_SPAN = 100.0


def _is_log(values: list[float]) -> bool:
    return bool(values) and min(values) > 0 and max(values) / min(values) >= LOG_SPAN


def _telling(name: str, rows: list[dict[str, Any]], target: str) -> float:
    """How much the target moves with the param: the spread of its per-value mean target."""
    groups: dict[str, list[float]] = {}
    for row in rows:
        value, score = row.get(name), row.get(target)
        if isinstance(score, int | float):
            key = f"{float(value):.2g}" if isinstance(value, int | float) else str(value)
            groups.setdefault(key, []).append(float(score))
    means = [statistics.fmean(v) for v in groups.values() if v]
    return max(means) - min(means) if len(means) > 1 else 0.0


def parallel(
    study: str,
    trials: list[Trial],
    *,
    task: str | None = None,
    op: str | None = None,
    params: list[str] | None = None,
) -> ParallelResponse:
    """Parallel coordinates of the complete trials over ``params`` (default: ``unit`` and the
    ``MAX_AXES`` params the success rate moves with most); log-sampled ones on log axes."""
    chosen = [t for t in trials if _in_slice(t, task, op) and t.state == "COMPLETE"]
    available, numeric = hyperparameters(chosen)
    rows: list[dict[str, str | float | None]] = []
    for trial in chosen:
        row: dict[str, str | float | None] = {"run_id": trial.run_id}
        for name in available:
            raw = trial.unit if name == "unit" else trial.params.get(name, "")
            row[name] = _as_number(raw) if numeric[name] else raw
        row["success_rate"] = trial.metric("success_rate")
        rows.append(row)
    if params:
        unknown = [p for p in params if p not in available]
        if unknown:
            raise NotFoundError(
                f"no varying param {unknown[0]!r}; choose from {available}", field="params"
            )
        axes = list(params)
    else:
        ranked_axes = sorted(
            (n for n in available if n != "unit"),
            key=lambda n: (-_telling(n, rows, "success_rate"), n),
        )
        axes = (["unit"] if "unit" in available else []) + ranked_axes
        axes = axes[:MAX_AXES]
    log = {
        n: numeric[n] and _is_log([v for r in rows if isinstance(v := r.get(n), float)])
        for n in axes
    }
    return ParallelResponse(
        study=study,
        task=task,
        op=op,
        params=axes,
        numeric={n: numeric[n] for n in axes},
        rows=[
            {k: v for k, v in r.items() if k in axes or k in ("run_id", "success_rate")}
            for r in rows
        ],
        target="success_rate",
        log=log,
        available=available,
    )


def scatter(
    study: str, trials: list[Trial], *, task: str | None = None, op: str | None = None
) -> ScatterResponse:
    points: list[ScatterPoint] = []
    for trial in trials:
        inter = trial.metric("interpolation_mse_median")
        extra = trial.metric("extrapolation_mse_median")
        if not _in_slice(trial, task, op) or inter is None or extra is None:
            continue
        points.append(
            ScatterPoint(
                run_id=trial.run_id,
                unit=trial.unit,
                op=trial.op,
                interpolation_mse_median=inter,
                extrapolation_mse_median=extra,
                success_rate=trial.metric("success_rate"),
            )
        )
    return ScatterResponse(study=study, task=task, op=op, points=points)
