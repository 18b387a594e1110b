"""MLflow tracking on the embedded SQLite default, read back through MlflowClient and pyarrow."""

from __future__ import annotations

import json
import math
import socket
import time
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow import MlflowClient

from nalu_core import ModelConfig, PopulationTrainer, RunConfig, TaskConfig, TrainConfig
from study._tracking import (
    ROBUST_LOWER_BOUND,
    StudyTracker,
    TrialTracker,
    config_params,
    division_summary,
    is_robust,
)

EVAL_METRICS = {
    "success_rate",
    "success_lower",
    "success_upper",
    "diverged",
    "extrapolation_mse_median",
    "extrapolation_mse_q25",
    "extrapolation_mse_q75",
    "interpolation_mse_median",
    "interpolation_mse_q25",
    "interpolation_mse_q75",
}


def small_config(
    op: str = "add", unit: str = "nau", *, lr: float = 0.1, steps: int = 300
) -> RunConfig:
    return RunConfig(
        task=TaskConfig(name="static", op=op, options={"input_size": 2}),
        model=ModelConfig.stacked(unit, depth=1),
        train=TrainConfig(
            seeds=4, steps=steps, lr=lr, eval_every=100, eval_samples=1000, device="cpu"
        ),
    )


def run_trial(
    tracking_uri: str,
    experiment_id: str,
    parent: str | None,
    config: RunConfig,
    *,
    ray_id: str,
    optuna_trial: int = 0,
    stop_after: int | None = None,
) -> tuple[TrialTracker, Any, int]:
    """Trains ``config`` for real and tracks it; returns the tracker, result and eval count."""
    tracker = TrialTracker(
        tracking_uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        trial_name=f"trial-{optuna_trial}",
        params=config_params(config),
        tags={"nalu.ray_trial_id": ray_id, "nalu.optuna_trial": str(optuna_trial)},
    )
    trainer = PopulationTrainer(config)
    evals = 0
    for report in trainer.run():
        tracker.log_eval(report.step, report.metrics())
        evals += 1
        if stop_after is not None and evals == stop_after:
            return tracker, None, evals
    result = trainer.result()
    tracker.log_result(result)
    assert tracker.finish("COMPLETE")
    return tracker, result, evals


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> StudyTracker:
    """One embedded-default study for the module: a fresh SQLite migration costs seconds."""
    study_dir = tmp_path_factory.mktemp("studies") / "demo"
    tracker = StudyTracker(f"sqlite:///{study_dir / 'mlflow.db'}", study_name="demo")
    tracker.prepare()
    tracker.start_launch(params={"spec": "quick"})
    return tracker


def test_config_params_are_flat_and_stable() -> None:
    config = RunConfig(
        task=TaskConfig(name="static", op="div", options={"input_size": 2}),
        model=ModelConfig.stacked(
            "nalu", depth=2, hidden_size=3, options={"epsilon": 1e-7}, output_unit="nau"
        ),
        train=TrainConfig(seeds=8, steps=100, lr=0.01, clip="value", clip_value=0.5),
    )
    params = config_params(config)
    assert params["unit"] == "nalu" and params["depth"] == "2" and params["hidden_size"] == "3"
    assert params["epsilon"] == "1e-07" and params["layer1.unit"] == "nau"
    assert params["lr"] == "0.01" and params["optimizer"] == "adam" and params["clip"] == "value"
    assert params["seeds"] == "8" and params["steps"] == "100"
    assert params["task"] == "static" and params["op"] == "div"
    assert params["task.input_size"] == "2"
    assert params["regularizer_lambda"] == "null"
    assert config_params(config) == params  # stable


@settings(max_examples=30, deadline=None)
@given(
    lr=st.floats(1e-5, 1.0),
    batch=st.integers(1, 4096),
    optimizer=st.sampled_from(["adam", "rmsprop", "sgd"]),
    reg=st.one_of(st.none(), st.floats(0, 100)),
)
def test_every_train_field_is_a_param(
    lr: float, batch: int, optimizer: str, reg: float | None
) -> None:
    train = TrainConfig(lr=lr, batch_size=batch, optimizer=optimizer, regularizer_lambda=reg)  # type: ignore[arg-type]
    params = config_params(RunConfig(train=train))
    for name, value in train.to_dict().items():
        assert json.loads(params[name]) == value if not isinstance(value, str) else params[name]


def test_robust_rule_is_the_wilson_lower_bound() -> None:
    assert is_robust(ROBUST_LOWER_BOUND) and not is_robust(ROBUST_LOWER_BOUND - 1e-9)
    assert not is_robust(math.nan)


def test_division_summary_reads_the_trainer_probe() -> None:
    probe = {
        "bins": [
            {"lo": 1e-6, "hi": 1e-4, "mse_median": 1e9},
            {"lo": 1e-1, "hi": 1.0, "mse_median": 0.5},
            {"lo": 1.0, "hi": 10.0, "mse_median": 0.01},
        ]
    }
    line = division_summary(probe)
    assert line is not None and "\n" not in line
    assert line.startswith("probe only: median MSE grows toward |den| 0")
    assert "1e-06..0.0001" in line
    # the verdict comes from the seeds in the extrapolation range, the probe apart
    working = division_summary(probe, success_rate=0.62, success_ci=(0.45, 0.77))
    assert working is not None and "fails" not in working
    assert working.startswith("divides: 62% of seeds succeed in the extrapolation range")
    assert "; probe only: median MSE grows toward |den| 0" in working
    robust = division_summary(probe, success_rate=0.9, success_ci=(0.7, 0.97))
    assert robust is not None and robust.startswith("divides robustly: 90%")
    failing = division_summary(probe, success_rate=0.0, success_ci=(0.0, 0.1))
    assert failing is not None and failing.startswith("fails in the extrapolation range")
    flat = {
        "bins": [
            {"lo": 1e-6, "hi": 1e-4, "mse_median": 1.0},
            {"lo": 1, "hi": 10, "mse_median": 1.0},
        ]
    }
    assert "flat across |den|" in division_summary(flat)  # type: ignore[operator]
    assert division_summary(None) is None


def test_prepare_puts_artifacts_next_to_the_store_one_folder_per_study(
    study: StudyTracker,
) -> None:
    db = Path(study.tracking_uri.removeprefix("sqlite:///"))
    assert db.exists() and study.artifact_root == db.parent / "artifacts" / "demo"
    client = MlflowClient(study.tracking_uri)
    experiment = client.get_experiment_by_name("demo")
    assert experiment is not None and experiment.experiment_id == study.experiment_id
    assert experiment.artifact_location == (db.parent / "artifacts" / "demo").as_uri()
    # MLflow 3.x opens the classic runs view, not the GenAI one
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert study.prepare() == study.experiment_id  # idempotent
    parent = client.get_run(study.parent_run_id)  # type: ignore[arg-type]
    assert parent.data.tags["nalu.role"] == "launch" and parent.data.params["spec"] == "quick"


@pytest.mark.slow
@pytest.mark.parametrize("op,unit", [("add", "nau"), ("div", "nalu")])
def test_trial_run_layout_metrics_and_artifacts(
    study: StudyTracker, op: str, unit: str, tmp_path: Path
) -> None:
    config = small_config(op, unit)
    tracker, result, evals = run_trial(
        study.tracking_uri, study.experiment_id, study.parent_run_id, config, ray_id=f"r-{op}"
    )
    client = MlflowClient(study.tracking_uri)
    run = client.get_run(tracker.run_id)  # type: ignore[arg-type]
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert run.info.status == "FINISHED" and run.info.run_name == "trial-0"
    assert tags["mlflow.parentRunId"] == study.parent_run_id and tags["nalu.role"] == "trial"
    assert tags["nalu.state"] == "COMPLETE"
    assert tags["robust"] == str(result.success_ci[0] >= ROBUST_LOWER_BOUND).lower()
    assert params == config_params(config)
    for name in EVAL_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert len({m.step for m in history}) == evals, name
    assert metrics["success_rate"] == result.success_rate
    assert (metrics["success_lower"], metrics["success_upper"]) == result.success_ci
    assert "sparsity_error_median" in metrics and "threshold" in metrics
    if result.success_rate > 0:
        assert "solved_at_median" in metrics

    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    expected = {
        "config.yaml",
        "seeds.parquet",
        "seeds.csv",
        "curves.png",
        "best_replica.safetensors",
    }
    if op == "div":
        expected |= {"division_probe.json", "division_probe.png"}
        assert "|den|" in tags["division_summary"]
    else:
        assert "division_summary" not in tags
    assert names == expected
    local = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path)))
    seeds = pq.read_table(local / "seeds.parquet")
    assert seeds.num_rows == 4 and seeds.column("success").to_pylist() == [
        s.success for s in result.seeds
    ]
    twin = pa_csv.read_csv(local / "seeds.csv")  # the CSV the MLflow UI previews
    assert twin.column_names == seeds.column_names
    assert twin.column("seed").to_pylist() == seeds.column("seed").to_pylist()
    assert RunConfig.from_dict(yaml.safe_load((local / "config.yaml").read_text())) == config
    assert (local / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_a_retried_trial_continues_its_run(study: StudyTracker) -> None:
    config = small_config(steps=300)
    first, _, _ = run_trial(
        study.tracking_uri, study.experiment_id, study.parent_run_id, config,
        ray_id="r-retry", optuna_trial=7, stop_after=2,
    )  # fmt: skip
    assert first.finish("FAIL")  # the attempt died; Tune retries it from a checkpoint
    second, _, evals = run_trial(
        study.tracking_uri, study.experiment_id, study.parent_run_id, config,
        ray_id="r-retry", optuna_trial=7,
    )  # fmt: skip
    assert second.run_id == first.run_id
    client = MlflowClient(study.tracking_uri)
    run = client.get_run(second.run_id)  # type: ignore[arg-type]
    assert run.info.status == "FINISHED" and run.data.tags["nalu.state"] == "COMPLETE"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "success_rate")]
    assert steps == sorted(set(steps)) and len(steps) == evals  # no duplicate evaluations


def test_a_replayed_history_is_logged_once(study: StudyTracker) -> None:
    """A restored trainer logs its history again (setup, then maybe Tune's load_checkpoint):
    every step still ends up in the run exactly once, with the first value queued."""
    tracker = TrialTracker(
        study.tracking_uri,
        experiment_id=study.experiment_id or "",
        parent_run_id=study.parent_run_id,
        trial_name="replayed",
        params={"lr": 0.1},
        tags={"nalu.ray_trial_id": "r-replayed"},
    )
    for replay in range(3):  # first pass, then two replays of the same steps
        for step in (100, 200):
            tracker.log_eval(step, {"success_rate": 0.25 * step / 100 + replay})
    tracker.log_eval(300, {"success_rate": 0.75})
    assert tracker.finish("COMPLETE")
    history = MlflowClient(study.tracking_uri).get_metric_history(
        tracker.run_id,  # type: ignore[arg-type]
        "success_rate",
    )
    assert sorted((m.step, m.value) for m in history) == [(100, 0.25), (200, 0.5), (300, 0.75)]


def test_reconcile_ends_runs_a_crash_left_running(study: StudyTracker) -> None:
    client = MlflowClient(study.tracking_uri)
    exp = study.experiment_id
    assert exp is not None
    crashed = client.create_run(exp, tags={"nalu.role": "trial", "nalu.ray_trial_id": "dead"})
    resumed = client.create_run(exp, tags={"nalu.role": "trial", "nalu.ray_trial_id": "alive"})
    launch = client.create_run(exp, tags={"nalu.role": "launch"})
    assert study.reconcile(keep=["alive"]) == 2
    dead = client.get_run(crashed.info.run_id)
    assert dead.info.status == "KILLED" and dead.data.tags["nalu.state"] == "FAIL"
    assert dead.data.tags["nalu.reconciled"] == "true"
    assert client.get_run(launch.info.run_id).info.status == "KILLED"
    assert client.get_run(resumed.info.run_id).info.status == "RUNNING"
    assert study.reconcile() == 1 and study.reconcile() == 0


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_never_blocks_and_drops_loudly() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    tracker = TrialTracker(
        uri,
        experiment_id="0",
        parent_run_id=None,
        trial_name="t",
        params={"lr": 0.1},
        tags={},
        open_timeout=0.2,
        max_buffered=25,
        backoff=(0.05, 0.2),
    )
    assert tracker.run_id is None
    with pytest.warns(RuntimeWarning, match="dropped so far"):
        for step in range(7):
            tracker.log_eval(step, {f"m{i}": float(i) for i in range(5)})
    assert tracker.dropped == 10
    with pytest.warns(RuntimeWarning) as caught:
        assert not tracker.finish("COMPLETE", timeout=0.5)
    assert any("undelivered after the final flush" in str(w.message) for w in caught)
    assert time.perf_counter() - start < 5


def test_curves_and_probe_pngs_keep_solved_evaluations(tmp_path: Path) -> None:
    """MSE 0 vanishes from a log axis: curves.png draws it at MSE_FLOOR with a marker, and
    division_probe.png has a title and its axis labels inside the image."""
    from types import SimpleNamespace

    from study import MSE_FLOOR
    from study._tracking import _curves_figure, _plot_curves, _plot_probe

    out = Path(__file__).resolve().parents[2] / "test-output" / "study"
    out.mkdir(parents=True, exist_ok=True)
    history = [
        {
            "step": step,
            "success_rate": rate,
            "success_lower": rate / 2,
            "success_upper": min(1.0, rate * 1.5 + 0.1),
            **{
                f"{split}_mse_{q}": mse * factor
                for split in ("interpolation", "extrapolation")
                for q, factor in (("median", 1.0), ("q25", 0.5), ("q75", 2.0))
            },
        }
        for step, rate, mse in ((100, 0.0, 1e-1), (200, 0.5, 1e-4), (300, 1.0, 0.0))
    ]
    result = SimpleNamespace(history=history, threshold=1e-5)
    _plot_curves(result, out / "curves-solved.png")  # type: ignore[arg-type]
    solved = _curves_figure().solved["extrapolation"]
    assert list(solved.get_xdata()) == [300] and list(solved.get_ydata()) == [MSE_FLOOR]
    low, _ = _curves_figure().ax_mse.get_ylim()
    assert low <= MSE_FLOOR  # the floored point is inside the axis
    assert "MSE 0, drawn at 1e-12" in _curves_figure().ax_mse.get_title()
    assert (out / "curves-solved.png").read_bytes()[:4] == b"\x89PNG"

    points = [("1e-06..1e-4", 1e-5, 1e6), ("0.1..1", 0.3, 1e-3), ("1..10", 3.0, 0.0)]
    _plot_probe(points, out / "division_probe.png", title="nalu on static div")
    from matplotlib.image import imread

    image = imread(out / "division_probe.png")  # (H, W, 4)
    assert image.shape[1] > 350 and image.shape[0] > 250
