"""Writes studies into a real MLflow store in the layout of docs/CONTRACTS.md.

Used by the API tests (hand-made trials with known numbers) and by the browser tests and the
benchmark (real PopulationTrainer results), until/unless study/_tracking.py is used instead.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

FINAL_KEYS = ("success_rate", "success_lower", "success_upper")


@dataclass
class TrialSpec:
    unit: str
    op: str
    params: dict[str, Any]
    metrics: dict[str, float]
    task: str = "static"
    state: str = "COMPLETE"
    history: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    seeds: list[dict[str, Any]] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    optuna_trial: int | None = None


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path.resolve()}"


def create_study(client: MlflowClient, study: str, *, artifact_root: Path) -> tuple[str, str]:
    """The experiment and the launch's parent run; returns (experiment_id, parent_run_id)."""
    exp_id = client.create_experiment(study, artifact_location=artifact_root.resolve().as_uri())
    parent = client.create_run(exp_id, tags={"nalu.role": "launch", "nalu.study": study})
    return exp_id, parent.info.run_id


def write_trial(
    client: MlflowClient, exp_id: str, parent_id: str, study: str, spec: TrialSpec, index: int
) -> str:
    tags = {
        "nalu.role": "trial",
        "mlflow.parentRunId": parent_id,
        "nalu.study": study,
        "nalu.task": spec.task,
        "nalu.op": spec.op,
        "nalu.unit": spec.unit,
        "nalu.optuna_trial": str(spec.optuna_trial if spec.optuna_trial is not None else index),
        "nalu.ray_trial_id": f"trial_{index:05d}",
        "nalu.node": "127.0.0.1",
        "nalu.state": spec.state,
    }
    lower = spec.metrics.get("success_lower")
    if lower is not None:
        tags["robust"] = "true" if lower >= 0.5 else "false"
    if spec.probe is not None:
        first, last = spec.probe["bins"][0], spec.probe["bins"][-1]
        tags["division_summary"] = (
            f"median MSE {first['mse_median'] or float('nan'):.3g} at |b|<={first['hi']:g} vs "
            f"{last['mse_median'] or float('nan'):.3g} at |b|<={last['hi']:g}"
        )
    run = client.create_run(exp_id, tags=tags, run_name=f"{spec.unit}-{spec.op}-{index}")
    run_id = run.info.run_id
    params = {"unit": spec.unit, "task": spec.task, "op": spec.op, **spec.params}
    metrics = [Metric(k, float(v), 0, step) for step, ms in spec.history for k, v in ms.items()]
    last_step = spec.history[-1][0] if spec.history else 0
    metrics += [Metric(k, float(v), 0, last_step) for k, v in spec.metrics.items()]
    client.log_batch(
        run_id,
        metrics=metrics,
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag("mlflow.runName", f"{spec.unit}-{spec.op}-{index}")],
    )
    with tempfile.TemporaryDirectory() as tmp:
        if spec.seeds:
            path = Path(tmp) / "seeds.parquet"
            pq.write_table(pa.Table.from_pylist(spec.seeds), path)
            client.log_artifact(run_id, str(path))
        if spec.probe is not None:
            path = Path(tmp) / "division_probe.json"
            path.write_text(json.dumps(spec.probe))
            client.log_artifact(run_id, str(path))
        path = Path(tmp) / "config.yaml"
        path.write_text(json.dumps(params))
        client.log_artifact(run_id, str(path))
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[spec.state]
    client.set_terminated(run_id, status=status)
    return str(run_id)


def write_study(uri: str, study: str, specs: list[TrialSpec], *, artifact_root: Path) -> list[str]:
    client = MlflowClient(tracking_uri=uri)
    exp_id, parent_id = create_study(client, study, artifact_root=artifact_root)
    run_ids = [write_trial(client, exp_id, parent_id, study, s, i) for i, s in enumerate(specs)]
    client.set_terminated(parent_id)
    return run_ids


def probe(errors: list[float]) -> dict[str, Any]:
    """A division_probe.json as nalu_core's trainer writes it, with the given bin medians."""
    edges = [1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0][: len(errors) + 1]
    bins = [
        {
            "lo": lo,
            "hi": hi,
            "mse_median": err,
            "relative_error_median": err / 10,
            "mse": [err, err * 2, None],
            "relative_error": [err / 10] * 3,
        }
        for lo, hi, err in zip(edges[:-1], edges[1:], errors, strict=True)
    ]
    return {"denominator": "|b|", "samples_per_bin": 2000, "bins": bins}


def trial_from_result(
    result: Any, reports: list[Any], *, unit: str, op: str, params: dict[str, Any]
) -> TrialSpec:
    """A real :class:`nalu_core.TrainResult` (and its EvalReports) as a TrialSpec."""
    history = [(r.step, r.metrics()) for r in reports]
    final = dict(history[-1][1]) if history else {}
    lo, hi = result.success_ci
    final.update(success_rate=result.success_rate, success_lower=lo, success_upper=hi)
    final["threshold"] = result.threshold
    seeds = [
        {
            "seed": s.seed,
            "interpolation_mse": s.interpolation_mse,
            "extrapolation_mse": s.extrapolation_mse,
            "success": s.success,
            "solved_at": s.solved_at,
            "sparsity_error": s.sparsity_error,
            "diverged": s.diverged,
        }
        for s in result.seeds
    ]
    return TrialSpec(
        unit=unit,
        op=op,
        params=params,
        metrics={k: v for k, v in final.items() if v is not None},
        history=history[:-1],
        seeds=seeds,
        probe=result.division_probe,
    )
