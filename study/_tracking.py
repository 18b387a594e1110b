"""MLflow tracking of studies and trials: layout and run hygiene, on top of the delivery.

Layout (docs/CONTRACTS.md): one experiment per study, one parent run per launch
(``nalu.role=launch``), one nested child run per trial (``nalu.role=trial``). The driver uses
:class:`StudyTracker`; each Ray trial uses :class:`TrialTracker`.

A trial never waits on the tracking server. Its calls only queue work; one background thread
delivers it with ``log_batch`` (up to 1000 metrics per HTTP call) and retries with exponential
backoff while the server is unreachable, so training goes on through an outage and the
metrics arrive when the server comes back (:mod:`study._delivery`). The queue is bounded; if it
ever overflows the oldest metrics are dropped with a warning and counted in the tag
``nalu.dropped_metrics``.
:meth:`TrialTracker.finish` flushes with a longer deadline.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from nalu_core import RunConfig
from study._delivery import (
    _MAX_PARAMS,
    RunStatus,
    _client,
    _Delivery,
    _is_permanent,
    _points,
)
from study._errors import StudyError
from study._stores import first_use_lock

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

TrialState = Literal["COMPLETE", "PRUNED", "FAIL"]

ROLE_TAG = "nalu.role"
STUDY_TAG = "nalu.study"
STATE_TAG = "nalu.state"
RAY_TRIAL_TAG = "nalu.ray_trial_id"
OPTUNA_TRIAL_TAG = "nalu.optuna_trial"
OPTUNA_STUDY_TAG = "nalu.optuna_study"
NODE_TAG = "nalu.node"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
PRUNED_SUFFIX = "(pruned)"
ROBUST_TAG = "robust"
DIVISION_TAG = "division_summary"
CONVERGED_TAG = "converged"
DROPPED_TAG = "nalu.dropped_metrics"
RECONCILED_TAG = "nalu.reconciled"
# MLflow 3.x opens an experiment in its GenAI view unless this tag says otherwise; its UI
# reads "mlflow.experimentKind" and offers "genai_development" or "custom_model_development"
# (the classic runs/metrics/params view). Verified in mlflow 3.17.2's bundled UI.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# Log axes cannot show 0: an MSE at or below this (a solved trial; float32 leaves 0 or about
# 1e-14 for an exact solution) is drawn at this value and marked, in curves.png, the probe
# plot and every log-axis plot of the dashboard.
MSE_FLOOR = 1e-12

# A configuration is "robust" when, with 95% confidence (Wilson), it succeeds on at least half
# of its seeds. One lucky seed out of 32 gives a lower bound of 0.006, 24/32 gives 0.58.
ROBUST_LOWER_BOUND = 0.5

_PARAM_VALUE_LIMIT = 6000
_STATE_TO_STATUS: dict[str, RunStatus] = {
    "COMPLETE": "FINISHED",
    "PRUNED": "FINISHED",
    "FAIL": "FAILED",
}


class TrackingError(StudyError):
    """The tracking store could not be prepared or reached by the driver."""


class _Result(Protocol):
    """What :meth:`TrialTracker.log_result` reads from ``nalu_core.TrainResult``."""

    config: RunConfig
    threshold: float | None
    success_rate: float
    success_ci: tuple[float, float]
    seeds: Sequence[Any]
    history: Sequence[Any]
    division_probe: Any
    steps: int
    train_seconds: float

    def metrics(self) -> dict[str, float]: ...

    def best_replica_state(self) -> Mapping[str, Any]: ...


# --------------------------------------------------------------------------- names and rules


def is_robust(success_lower: float) -> bool:
    """The documented rule of the ``robust`` tag: Wilson lower bound >= ROBUST_LOWER_BOUND."""
    return math.isfinite(success_lower) and success_lower >= ROBUST_LOWER_BOUND


def _param_value(value: object) -> str:
    if isinstance(value, str):
        text = value
    elif value is None or isinstance(value, bool | int | float):
        text = json.dumps(value)
    else:
        text = json.dumps(value, sort_keys=True, default=str)
    return text[:_PARAM_VALUE_LIMIT]


def config_params(config: RunConfig) -> dict[str, str]:
    """Every hyperparameter of ``config`` under a short, flat, stable name.

    ``unit``, ``depth``, ``hidden_size``, the first layer's unit options by their own name
    (``epsilon``, ``gate``...), every training field (``lr``, ``optimizer``, ``seeds``...),
    ``task``, ``op`` and task options as ``task.<name>``. A layer that differs from the first
    (an output unit) adds ``layer<i>.unit`` and ``layer<i>.<option>``. Values are JSON text
    (strings bare), so that ``None`` logs as ``null``.
    """
    params: dict[str, object] = {}
    first = config.model.layers[0]
    params["unit"] = first.unit
    params["depth"] = config.model.depth
    params["hidden_size"] = config.model.hidden_size
    train = config.train.to_dict()
    for name, value in first.options.items():
        params[f"model.{name}" if name in train or name in params else name] = value
    for i, layer in enumerate(config.model.layers[1:], start=1):
        if layer.to_dict() != first.to_dict():
            params[f"layer{i}.unit"] = layer.unit
            for name, value in layer.options.items():
                params[f"layer{i}.{name}"] = value
    params.update(train)
    params["task"] = config.task.name
    params["op"] = config.task.op
    for name, value in config.task.options.items():
        params[f"task.{name}"] = value
    return {key: _param_value(value) for key, value in params.items()}


def final_metrics(result: _Result) -> dict[str, float]:
    """The final flat metrics (docs/CONTRACTS.md) of ``TrainResult.metrics()``.

    NaN values are left out rather than logged: ``solved_at_median`` when no seed solved,
    ``threshold`` when the task has none. Infinite MSEs (diverged seeds) are kept.
    """
    return {k: float(v) for k, v in result.metrics().items() if not math.isnan(float(v))}


def _probe_points(probe: Any) -> list[tuple[str, float, float]]:
    """(label, |denominator| bin centre, median extrapolation error) from a division probe.

    Accepts the trainer's probe either as a mapping of lists (``bins``/``labels``,
    ``denominator``/``centers``, ``median_mse``/``mse``) or as a list of records.
    """
    if probe is None:
        return []
    if hasattr(probe, "to_dict"):
        probe = probe.to_dict()
    records: list[Mapping[str, Any]]
    if (
        isinstance(probe, Mapping)
        and isinstance(probe.get("bins"), list | tuple)
        and all(isinstance(b, Mapping) for b in probe["bins"])
    ):
        records = list(probe["bins"])
    elif isinstance(probe, Mapping):
        keys = [k for k, v in probe.items() if isinstance(v, list | tuple)]
        n = max((len(probe[k]) for k in keys), default=0)
        records = [{k: probe[k][i] for k in keys if len(probe[k]) == n} for i in range(n)]
    elif isinstance(probe, list | tuple):
        records = [r if isinstance(r, Mapping) else vars(r) for r in probe]
    else:
        return []

    def pick(record: Mapping[str, Any], *names: str) -> Any:
        for name in names:
            if name in record and record[name] is not None:
                return record[name]
        for key, value in record.items():  # fall back on a name containing the hint
            if any(n in key for n in names) and value is not None:
                return value
        return None

    points = []
    for i, record in enumerate(records):
        x = pick(record, "center", "centre", "denominator", "abs_denominator")
        if x is None and record.get("lo") is not None and record.get("hi") is not None:
            lo, hi = float(record["lo"]), float(record["hi"])
            x = math.sqrt(lo * hi) if lo > 0 else hi  # the bin's geometric centre (decades)
            record = {"label": f"{lo:g}..{hi:g}", **record}
        y = pick(record, "median_mse", "mse_median", "median", "mse", "error")
        label = pick(record, "label", "bin", "range", "name")
        if isinstance(y, list | tuple):
            finite = [float(v) for v in y if v is not None and math.isfinite(float(v))]
            y = statistics.median(finite) if finite else math.nan
        if isinstance(x, list | tuple) and x:
            x = math.sqrt(abs(float(x[0]) * float(x[-1]))) if float(x[0]) > 0 else float(x[-1])
        try:
            xf, yf = float(x), float(y)
        except (TypeError, ValueError):
            continue
        points.append((str(label) if label is not None else f"bin{i}", xf, yf))
    return points


def success_wording(success_rate: float | None, success_ci: Sequence[float] | None) -> str:
    """The verdict of a trial from its seeds' success in the extrapolation range."""
    if success_rate is None or not math.isfinite(success_rate):
        return "success in the extrapolation range unknown"
    ci = ""
    if success_ci is not None and len(success_ci) == 2:
        ci = f" [{success_ci[0]:.0%}, {success_ci[1]:.0%}]"
    if success_rate == 0:
        return f"fails in the extrapolation range (0% of seeds{ci})"
    robust = success_ci is not None and is_robust(float(success_ci[0]))
    verb = "divides robustly" if robust else "divides"
    return f"{verb}: {success_rate:.0%} of seeds succeed in the extrapolation range{ci}"


def division_summary(
    probe: Any,
    *,
    success_rate: float | None = None,
    success_ci: Sequence[float] | None = None,
) -> str | None:
    """One line: the verdict from the seeds' success in the extrapolation range, then what
    the probe alone shows.

    The probe moves the denominator into decades down to 1e-6, far below most extrapolation
    ranges, so its growth toward zero is reported apart ("probe only"), never as the verdict:
    a unit that divides on 62% of its seeds is not "failing" because 1/1e-6 is hard.
    Without a success rate (older callers) the line is the probe's part alone.
    """
    points = [p for p in _probe_points(probe) if p[1] > 0]
    verdict = None if success_rate is None else success_wording(success_rate, success_ci)
    if len(points) < 2:
        return verdict
    points.sort(key=lambda p: p[1])
    (small_label, _, small), (large_label, _, large) = points[0], points[-1]
    if not (math.isfinite(large) and large > 0):
        probe_part = (
            f"probe only: median MSE {small:.3g} at |den| {small_label}, "
            f"{large:.3g} at {large_label}"
        )
    else:
        ratio = small / large if math.isfinite(small) else math.inf
        shape = "grows toward |den| 0" if ratio >= 10 else "flat across |den|"
        probe_part = (
            f"probe only: median MSE {shape}, {small:.3g} at |den| {small_label} vs "
            f"{large:.3g} at {large_label} ({ratio:.3g}x)"
        )
    return probe_part if verdict is None else f"{verdict}; {probe_part}"


# --------------------------------------------------------------------------- artifacts


def _seeds_table(result: _Result) -> Any:
    import pyarrow as pa

    seeds = list(result.seeds)
    return pa.table(
        {
            "seed": pa.array([int(s.seed) for s in seeds], pa.int64()),
            "interpolation_mse": pa.array([float(s.interpolation_mse) for s in seeds]),
            "extrapolation_mse": pa.array([float(s.extrapolation_mse) for s in seeds]),
            "success": pa.array([bool(s.success) for s in seeds], pa.bool_()),
            "solved_at": pa.array([s.solved_at for s in seeds], pa.int64()),
            "sparsity_error": pa.array([float(s.sparsity_error) for s in seeds]),
            "diverged": pa.array([bool(s.diverged) for s in seeds], pa.bool_()),
        }
    )


def _history_metrics(report: Any) -> dict[str, float]:
    if hasattr(report, "metrics"):
        return dict(report.metrics())
    return dict(report)


_DPI = 72


# matplotlib imports itself circularly (ticker <-> scale); two threads importing it at once can
# see a partly initialised module ("cannot import name 'NullFormatter'"). Every import of it
# here, the delivery thread's warm-up included, goes through this lock.
_MATPLOTLIB_LOCK = threading.Lock()


def _import_matplotlib() -> None:
    with _MATPLOTLIB_LOCK:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import matplotlib.ticker  # noqa: F401


def _figure(width: float, height: float, rows: int = 1) -> tuple[Any, Any]:
    # The object API with the Agg canvas: no pyplot state, no GUI backend, and cheaper.
    _import_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True)
    return fig, axes


def _log_axis(axis: Any, ticks: int = 5) -> None:
    # Text dominates the cost of a small PNG: a few plain decade labels instead of mathtext
    # on every major and minor tick keeps a figure near 0.1 s.
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

    axis.set_major_locator(LogLocator(numticks=ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


class _CurvesFigure:
    """The figure of ``curves.png``, built once per process and redrawn for each trial.

    Ray reuses trial actors, so one process renders many trials: building the axes, ticks
    and labels once saves about half of a render. Data limits are set by hand because
    ``relim`` ignores the quartile bands.
    """

    def __init__(self) -> None:
        from matplotlib.ticker import MaxNLocator

        self.fig, (self.ax_mse, self.ax_rate) = _figure(6, 5, rows=2)
        self.mse = {
            split: self.ax_mse.plot([], [], color=colour)[0]
            for split, colour in (("extrapolation", "tab:red"), ("interpolation", "tab:blue"))
        }
        # solved evaluations (MSE 0) drawn at MSE_FLOOR, marked with a triangle
        self.solved = {
            split: self.ax_mse.plot([], [], ls="none", marker="v", ms=7, color=line.get_color())[0]
            for split, line in self.mse.items()
        }
        self.threshold = self.ax_mse.axhline(1.0, color="k", ls="--", lw=1)
        self.rate = self.ax_rate.plot([], [], color="tab:green")[0]
        self.bands: list[Any] = []
        self.ax_mse.set_yscale("log")
        _log_axis(self.ax_mse.yaxis)
        # one line of text instead of a legend box: text dominates the render time
        self.ax_mse.set_title(
            "extrapolation (red), interpolation (blue), threshold (dashed); "
            f"\u25bc MSE 0, drawn at {MSE_FLOOR:.0e}",
            fontsize=8,
        )
        self.ax_mse.set_ylabel("MSE: median, quartiles")
        self.ax_rate.set_ylim(0, 1)
        self.ax_rate.yaxis.set_major_locator(MaxNLocator(3))
        self.ax_rate.xaxis.set_major_locator(MaxNLocator(5, integer=True))
        self.ax_rate.set_ylabel("success, Wilson 95%")
        self.ax_rate.set_xlabel("step")

    def render(
        self, steps: list[int], rows: list[dict[str, float]], threshold: float | None, path: Path
    ) -> None:
        def column(name: str) -> list[float]:
            return [r.get(name, math.nan) for r in rows]

        def floor(values: list[float]) -> list[float]:
            return [MSE_FLOOR if math.isfinite(v) and v <= MSE_FLOOR else v for v in values]

        for band in self.bands:
            band.remove()
        self.bands = []
        seen: list[float] = []
        for split, line in self.mse.items():
            raw = column(f"{split}_mse_median")
            med, q25, q75 = (floor(column(f"{split}_mse_{s}")) for s in ("median", "q25", "q75"))
            line.set_data(steps, med)
            at_floor = [(s, MSE_FLOOR) for s, v in zip(steps, raw, strict=True) if v <= MSE_FLOOR]
            self.solved[split].set_data([p[0] for p in at_floor], [p[1] for p in at_floor])
            colour = line.get_color()
            self.bands.append(
                self.ax_mse.fill_between(steps, q25, q75, color=colour, alpha=0.2, lw=0)
            )
            seen += med + q25 + q75
        self.threshold.set_visible(threshold is not None)
        if threshold is not None:
            self.threshold.set_ydata([threshold, threshold])
            seen.append(threshold)
        positive = [v for v in seen if math.isfinite(v) and v > 0]
        low, high = (min(positive), max(positive)) if positive else (1e-3, 1.0)
        self.ax_mse.set_ylim(low / 2, high * 2)
        self.rate.set_data(steps, column("success_rate"))
        self.bands.append(
            self.ax_rate.fill_between(
                steps,
                column("success_lower"),
                column("success_upper"),
                color="tab:green",
                alpha=0.2,
                lw=0,
            )
        )
        first, last = (min(steps), max(steps)) if steps else (0, 1)
        # a little room on the right: a marker on the last evaluation stays whole
        self.ax_rate.set_xlim(first, max(last, first + 1) + 0.03 * max(last - first, 1))
        self.fig.savefig(path, dpi=_DPI)


_CURVES: _CurvesFigure | None = None
_CURVES_LOCK = threading.Lock()  # one render at a time on the shared figure


def _curves_figure() -> _CurvesFigure:
    """The process's curves figure, built (and drawn once, to warm font caches) on first use."""
    global _CURVES
    with _CURVES_LOCK:
        if _CURVES is None:
            _import_matplotlib()
            curves = _CurvesFigure()
            curves.fig.canvas.draw()
            _CURVES = curves
        return _CURVES


def _plot_curves(result: _Result, path: Path) -> None:
    steps, rows = [], []
    for report in result.history:
        steps.append(int(report.step) if hasattr(report, "step") else int(report["step"]))
        rows.append(_history_metrics(report))
    threshold = None if result.threshold is None else float(result.threshold)
    curves = _curves_figure()
    with _CURVES_LOCK:
        curves.render(steps, rows, threshold, path)


def _plot_probe(
    points: list[tuple[str, float, float]], path: Path, *, title: str = "division probe"
) -> None:
    pts = sorted(
        (x, max(y, MSE_FLOOR)) for _, x, y in points if x > 0 and math.isfinite(y) and y >= 0
    )
    fig, ax = _figure(5.5, 3.8)
    ax.loglog([p[0] for p in pts], [p[1] for p in pts], marker="o")
    solved = [p for p in pts if p[1] <= MSE_FLOOR]
    if solved:
        ax.plot([p[0] for p in solved], [p[1] for p in solved], ls="none", marker="v", ms=9)
    _log_axis(ax.xaxis, ticks=8)
    _log_axis(ax.yaxis)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("|denominator| (probe bins, decades)")
    ax.set_ylabel("median extrapolation MSE")
    # the labels and title inside the PNG: no clipped "|denominator|" or y label
    fig.tight_layout()
    fig.savefig(path, dpi=_DPI)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    if hasattr(value, "__dataclass_fields__"):
        return _jsonable(vars(value))
    return value


def write_artifacts(result: _Result, folder: Path) -> list[str]:
    """Writes the trial's artifacts into ``folder``; returns the file names written."""
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    (folder / "config.yaml").write_text(yaml.safe_dump(result.config.to_dict(), sort_keys=False))
    written.append("config.yaml")
    seeds = _seeds_table(result)
    pq.write_table(seeds, folder / "seeds.parquet")
    written.append("seeds.parquet")
    # the same table as text: MLflow's artifact view previews CSV, not Parquet
    pa_csv.write_csv(seeds, folder / "seeds.csv")
    written.append("seeds.csv")
    if result.history:
        _plot_curves(result, folder / "curves.png")
        written.append("curves.png")
    if result.config.task.op == "div" and result.division_probe is not None:
        probe = _jsonable(result.division_probe)
        (folder / "division_probe.json").write_text(json.dumps(probe, indent=1))
        written.append("division_probe.json")
        points = _probe_points(result.division_probe)
        if points:
            layer = result.config.model.layers[0].unit
            title = (
                f"{layer} on {result.config.task.name} div: median MSE per |denominator| bin"
                f"\nsuccess {result.success_rate:.0%} of seeds in the extrapolation range"
            )
            _plot_probe(points, folder / "division_probe.png", title=title)
            written.append("division_probe.png")
    state = result.best_replica_state()
    if state:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, str(folder / "best_replica.safetensors"))
        written.append("best_replica.safetensors")
    return written


def _warm_imports() -> None:
    # Paid here, while the trial trains, instead of inside log_result at the end; the curves
    # figure is built and drawn once too (about 0.15 s the first time in a process).
    try:
        import pyarrow.parquet  # noqa: F401
        import safetensors.torch  # noqa: F401
        import yaml  # noqa: F401

        _curves_figure()
    except Exception as err:  # log_result will meet it again and say what is wrong
        log.debug("tracking: warm-up failed: %s", err)


# --------------------------------------------------------------------------- trial side


class TrialTracker:
    """One trial's nested MLflow run, written from inside the Ray trial.

    If a run with the same ``nalu.ray_trial_id`` tag exists (a retry from a checkpoint, or a
    resumed study), it is continued: set RUNNING again, and evaluations at steps it already
    holds are skipped. The constructor never raises on an unreachable server; ``run_id`` is
    ``None`` until the run could be opened.

    ``tracking_seconds`` is the time spent inside this object's methods in the caller's
    thread; ``delivery_seconds`` the CPU time of the background delivery thread.
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        experiment_id: str,
        parent_run_id: str | None,
        trial_name: str,
        params: Mapping[str, object],
        tags: Mapping[str, str],
        open_timeout: float = 0.0,
        flush_timeout: float = 120.0,
        max_buffered: int = 200_000,
        backoff: tuple[float, float] = (0.5, 10.0),
        min_interval: float = 5.0,
    ) -> None:
        start = time.perf_counter()
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.trial_name = trial_name
        self.flush_timeout = flush_timeout
        self.finished = False
        self._last_eval: tuple[int, dict[str, float]] = (-1, {})
        self._queued_steps: set[int] = set()
        self._params = {k: _param_value(v) for k, v in params.items()}
        self._tags = {str(k): str(v) for k, v in tags.items()}
        self._tags[ROLE_TAG] = "trial"
        self._tags.setdefault(NODE_TAG, platform.node())
        if parent_run_id:
            self._tags[PARENT_TAG] = parent_run_id
        self._delivery = _Delivery(
            tracking_uri,
            self._open_run,
            max_buffered=max_buffered,
            backoff=backoff,
            min_interval=min_interval,
            warm_up=_warm_imports,
        )
        self._delivery.put(params=self._params)  # the tags go with create_run
        self._delivery.opened.wait(open_timeout)
        self.tracking_seconds = time.perf_counter() - start

    @property
    def run_id(self) -> str | None:
        return self._delivery.run_id

    def wait_opened(self, timeout: float) -> bool:
        """Waits up to ``timeout`` s for the run to be opened; whether it is."""
        return self._delivery.opened.wait(timeout)

    @property
    def delivery_seconds(self) -> float:
        return self._delivery.seconds

    @property
    def dropped(self) -> int:
        return self._delivery.dropped

    def _open_run(self, client: MlflowClient) -> tuple[str, int]:
        from mlflow.entities import RunTag

        ray_id = self._tags.get(RAY_TRIAL_TAG)
        if ray_id:
            found = client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`{RAY_TRIAL_TAG}` = '{ray_id}'",
                max_results=1,
            )
            if found:
                run = found[0]
                history = client.get_metric_history(run.info.run_id, "success_rate")
                done_step = max((m.step for m in history), default=-1)
                tags = [RunTag(k, v) for k, v in self._tags.items()]
                client.log_batch(run.info.run_id, tags=tags)  # a retry may run on another node
                client.update_run(run.info.run_id, status="RUNNING")
                return str(run.info.run_id), done_step
        run = client.create_run(
            self.experiment_id,
            run_name=self.trial_name,
            tags=dict(self._tags),
        )
        return str(run.info.run_id), -1

    def log_params(self, params: Mapping[str, object]) -> None:
        start = time.perf_counter()
        self._delivery.put(params={k: _param_value(v) for k, v in params.items()})
        self.tracking_seconds += time.perf_counter() - start

    def set_tags(self, tags: Mapping[str, str]) -> None:
        start = time.perf_counter()
        self._delivery.put(tags={str(k): str(v) for k, v in tags.items()})
        self.tracking_seconds += time.perf_counter() - start

    def log_eval(self, step: int, metrics: Mapping[str, float]) -> None:
        """Queues one evaluation's flat metrics (``EvalReport.metrics()``) at ``step``.

        A step this tracker already queued is skipped: a restored trainer replays its history,
        and Tune may restore a trial twice (its own checkpoint after ours).
        """
        start = time.perf_counter()
        if int(step) in self._queued_steps:
            return
        self._queued_steps.add(int(step))
        batch = _points(metrics, step)
        self._delivery.put(metrics=batch, evaluation=True)
        self._last_eval = (int(step), {m.key: m.value for m in batch})
        self.tracking_seconds += time.perf_counter() - start

    def log_result(self, result: _Result) -> None:
        """Queues the final metrics, params, tags and artifacts of a finished ``TrainResult``."""
        start = time.perf_counter()
        final = final_metrics(result)
        final["train_seconds"] = float(result.train_seconds)
        step = int(result.steps)
        if self._last_eval[0] == step:
            # The last evaluation already holds these points; a second one would double them.
            final = {k: v for k, v in final.items() if self._last_eval[1].get(k) != v}
        missing = {k: v for k, v in config_params(result.config).items() if k not in self._params}
        self._params.update(missing)
        tags = {ROBUST_TAG: str(is_robust(float(result.success_ci[0]))).lower()}
        if "converged" in final:
            # the sequence tasks' verdict on their training loss (TrainResult.metrics)
            tags[CONVERGED_TAG] = str(final["converged"] == 1.0).lower()
        if result.config.task.op == "div":
            summary = division_summary(
                result.division_probe,
                success_rate=float(result.success_rate),
                success_ci=tuple(result.success_ci),
            )
            tags[DIVISION_TAG] = summary or "no probe recorded"
        folder = Path(tempfile.mkdtemp(prefix="nalu-artifacts-"))
        write_artifacts(result, folder)
        self._delivery.put(
            params=missing,
            tags=tags,
            metrics=_points(final, step),
            artifacts=folder,
        )
        self.tracking_seconds += time.perf_counter() - start

    def finish(self, state: TrialState, *, timeout: float | None = None) -> bool:
        """Ends the run (COMPLETE/PRUNED -> FINISHED, FAIL -> FAILED) and flushes.

        Waits up to ``timeout`` (default ``flush_timeout``) for delivery; returns True when
        everything arrived, else warns with what is still pending (the delivery thread keeps
        trying for as long as the process lives).
        """
        if self.finished:
            return True
        start = time.perf_counter()
        self.finished = True
        status = _STATE_TO_STATUS[state]
        tags: dict[str, str] = {STATE_TAG: state}
        if state == "PRUNED":
            # MLflow's runs list shows names and statuses: FINISHED alone hides a pruning
            tags[RUN_NAME_TAG] = f"{self.trial_name} {PRUNED_SUFFIX}"
        if self._delivery.dropped:
            tags[DROPPED_TAG] = str(self._delivery.dropped)
        # The cost of tracking in this trial (without this final flush), for overhead audits.
        cost = _points({"tracking_seconds": self.tracking_seconds}, 0)
        self._delivery.put(tags=tags, metrics=cost, status=status)
        done = self._delivery.close(self.flush_timeout if timeout is None else timeout)
        if not done:
            warnings.warn(
                f"tracking: run {self.run_id or '(not opened)'} of trial {self.trial_name!r} "
                f"still has {self._delivery.pending_count()} items undelivered after the "
                "final flush; the server is unreachable",
                RuntimeWarning,
                stacklevel=2,
            )
        self.tracking_seconds += time.perf_counter() - start
        return done

    def __enter__(self) -> TrialTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.finished:
            self.finish("FAIL" if exc_type is not None else "COMPLETE")


# --------------------------------------------------------------------------- driver side


def _retry(what: str, call: Any, *, deadline: float) -> Any:
    delay, end = 0.5, time.monotonic() + deadline
    while True:
        try:
            return call()
        except Exception as err:
            if _is_permanent(err) or time.monotonic() + delay > end:
                raise TrackingError(
                    f"tracking: could not {what}: {err}", field="tracking_uri"
                ) from err
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _sqlite_path(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:"):
        return None
    path = tracking_uri.removeprefix("sqlite:///")
    return Path(path) if path and path != ":memory:" else None


class StudyTracker:
    """The driver's side: the study's experiment, one parent run per launch, reconciliation.

    For the embedded SQLite default, :meth:`prepare` creates the database (MLflow's migrations
    race when several trials open a fresh file at once) and puts artifacts in
    ``artifact_root`` (default: ``artifacts/`` next to the database, in the study folder).
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        study_name: str,
        artifact_root: Path | None = None,
        deadline: float = 60.0,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.study_name = study_name
        db = _sqlite_path(tracking_uri)
        if artifact_root is None and db is not None:
            artifact_root = db.parent / "artifacts"
        # one folder per study under the store's artifact root: studies share the store
        self.artifact_root = None if artifact_root is None else artifact_root / study_name
        self.deadline = deadline
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            db = _sqlite_path(self.tracking_uri)
            if db is not None:
                db.parent.mkdir(parents=True, exist_ok=True)

            def open_store() -> MlflowClient:
                # a fresh SQLite file is migrated on first use: one process at a time
                with first_use_lock(self.tracking_uri):
                    client = _client(self.tracking_uri)
                    if db is not None:
                        client.search_experiments(max_results=1)  # runs the migrations now
                    return client

            self._client = _retry("open the tracking store", open_store, deadline=self.deadline)
        return self._client

    def prepare(self) -> str:
        """Creates (or finds) the study's experiment; returns its id. Call once, first."""
        client = self.client

        def get_or_create() -> str:
            experiment = client.get_experiment_by_name(self.study_name)
            if experiment is None:
                location = None
                if self.artifact_root is not None:
                    self.artifact_root.mkdir(parents=True, exist_ok=True)
                    location = self.artifact_root.resolve().as_uri()
                return str(
                    client.create_experiment(
                        self.study_name,
                        artifact_location=location,
                        tags=dict(self._experiment_tags()),
                    )
                )
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment.experiment_id)
            for key, value in self._experiment_tags().items():
                if experiment.tags.get(key) != value:  # studies made before the tag existed
                    client.set_experiment_tag(experiment.experiment_id, key, value)
            return str(experiment.experiment_id)

        with first_use_lock(self.tracking_uri):
            self.experiment_id = _retry(
                "create the experiment", get_or_create, deadline=self.deadline
            )
        return self.experiment_id

    def _experiment_tags(self) -> dict[str, str]:
        return {STUDY_TAG: self.study_name, EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}

    def start_launch(
        self,
        *,
        params: Mapping[str, object] | None = None,
        spec_yaml: str | None = None,
    ) -> str:
        """Opens the parent run of this launch; returns its run id.

        ``spec_yaml`` (the spec as launched) becomes the run's ``spec.yaml`` artifact.
        """
        from mlflow.entities import Param

        experiment_id = self.experiment_id or self.prepare()
        tags = {ROLE_TAG: "launch", STUDY_TAG: self.study_name, NODE_TAG: platform.node()}
        run = _retry(
            "start the launch run",
            lambda: self.client.create_run(
                experiment_id, run_name=f"{self.study_name}-launch", tags=tags
            ),
            deadline=self.deadline,
        )
        self.parent_run_id = str(run.info.run_id)
        items = [Param(k, _param_value(v)) for k, v in (params or {}).items()]
        for i in range(0, len(items), _MAX_PARAMS):
            chunk = items[i : i + _MAX_PARAMS]
            _retry(
                "log the launch params",
                lambda chunk=chunk: self.client.log_batch(self.parent_run_id, params=chunk),
                deadline=self.deadline,
            )
        if spec_yaml is not None:
            run_id = self.parent_run_id
            _retry(
                "log the spec",
                lambda: self.client.log_text(run_id, spec_yaml, "spec.yaml"),
                deadline=self.deadline,
            )
        return self.parent_run_id

    def end_launch(self, status: RunStatus = "FINISHED") -> None:
        """Ends the parent run; warns (does not raise) if the store stays unreachable."""
        if self.parent_run_id is None:
            return
        run_id = self.parent_run_id
        try:
            _retry(
                "end the launch run",
                lambda: self.client.set_terminated(run_id, status=status),
                deadline=self.deadline,
            )
        except TrackingError as err:
            warnings.warn(str(err), RuntimeWarning, stacklevel=2)

    def _all_runs(self, filter_string: str, *, what: str) -> list[Any]:
        """Every run of the study's experiment that matches, all pages, deleted ones too."""
        from mlflow.entities import ViewType

        experiment_id = self.experiment_id or self.prepare()
        client = self.client
        runs: list[Any] = []
        token: str | None = None
        while True:
            page = _retry(
                what,
                lambda token=token: client.search_runs(
                    [experiment_id],
                    filter_string=filter_string,
                    run_view_type=ViewType.ALL,
                    max_results=1000,
                    page_token=token,
                ),
                deadline=self.deadline,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def reconcile(self, *, keep: Iterable[str] = (), status: RunStatus = "KILLED") -> int:
        """Ends the runs a crash left RUNNING; returns how many it ended.

        Trial runs whose ``nalu.ray_trial_id`` is in ``keep`` are left alone: those trials are
        about to be resumed and :class:`TrialTracker` continues their run. Ended trial runs
        without a ``nalu.state`` get ``nalu.state=FAIL``; all get ``nalu.reconciled=true``.
        """
        from mlflow.entities import RunTag

        keep_ids = set(keep)
        client = self.client
        # Collect first: ending runs while paging over "status = RUNNING" would skip some.
        stale = self._all_runs("attributes.status = 'RUNNING'", what="list running runs")
        count = 0
        for run in stale:
            tags = run.data.tags
            if tags.get(ROLE_TAG) == "trial" and tags.get(RAY_TRIAL_TAG) in keep_ids:
                continue
            if run.info.run_id == self.parent_run_id:
                continue
            new_tags = [RunTag(RECONCILED_TAG, "true")]
            if tags.get(ROLE_TAG) == "trial" and STATE_TAG not in tags:
                new_tags.append(RunTag(STATE_TAG, "FAIL"))
            run_id = run.info.run_id
            _retry(
                "tag a stale run",
                lambda run_id=run_id, new_tags=new_tags: client.log_batch(run_id, tags=new_tags),
                deadline=self.deadline,
            )
            _retry(
                "end a stale run",
                lambda run_id=run_id: client.set_terminated(run_id, status=status),
                deadline=self.deadline,
            )
            count += 1
        return count

    def agree(self, states: Mapping[tuple[str, int], str]) -> dict[tuple[str, int], str]:
        """Makes each trial run say what its Optuna trial says; returns the run per trial.

        ``states`` maps ``(optuna study, trial number)`` to the trial's final Optuna state.
        A run whose ``nalu.state`` differs (a trial that Ctrl-C stopped: its worker ended the
        run PRUNED, Optuna failed it) gets the Optuna state and the matching status (FAILED,
        or KILLED if it was already ended so). Runs are found by their ``nalu.optuna_study``
        and ``nalu.optuna_trial`` tags.
        """
        from mlflow.entities import RunTag

        client = self.client
        runs = self._all_runs(f"tags.`{ROLE_TAG}` = 'trial'", what="list trial runs")
        links: dict[tuple[str, int], str] = {}
        for run in runs:
            tags = run.data.tags
            try:
                where = (tags[OPTUNA_STUDY_TAG], int(tags[OPTUNA_TRIAL_TAG]))
            except (KeyError, ValueError):
                continue
            state = states.get(where)
            if state is None:
                continue
            links[where] = run.info.run_id
            status = _STATE_TO_STATUS[state]
            if run.info.status == "KILLED" and status == "FAILED":
                status = "KILLED"
            if tags.get(STATE_TAG) == state and run.info.status == status:
                continue
            run_id = run.info.run_id
            _retry(
                "settle a trial run's state",
                lambda run_id=run_id, state=state: client.log_batch(
                    run_id, tags=[RunTag(STATE_TAG, state)]
                ),
                deadline=self.deadline,
            )
            _retry(
                "settle a trial run's status",
                lambda run_id=run_id, status=status: client.set_terminated(run_id, status=status),
                deadline=self.deadline,
            )
        return links


__all__ = [
    "MSE_FLOOR",
    "ROBUST_LOWER_BOUND",
    "StudyTracker",
    "TrackingError",
    "TrialTracker",
    "config_params",
    "division_summary",
    "final_metrics",
    "success_wording",
    "is_robust",
    "write_artifacts",
]
