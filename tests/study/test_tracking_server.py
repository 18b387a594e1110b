"""Tracking against a real ``mlflow server`` with a PostgreSQL backend, including an outage."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from nalu_core import PopulationTrainer, RunConfig
from study._export import best_configs
from study._tracking import StudyTracker, TrialTracker, config_params
from tests.study.conftest import MlflowServer
from tests.study.test_tracking import EVAL_METRICS, run_trial, small_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def server_study(mlflow_server: MlflowServer) -> StudyTracker:
    tracker = StudyTracker(mlflow_server.uri, study_name="served")
    tracker.prepare()
    tracker.start_launch(params={"spec": "quick"})
    return tracker


def test_trial_on_a_server_with_postgres(server_study: StudyTracker, tmp_path: Path) -> None:
    config = small_config("div", "nalu")
    tracker, result, evals = run_trial(
        server_study.tracking_uri,
        server_study.experiment_id,  # type: ignore[arg-type]
        server_study.parent_run_id,
        config,
        ray_id="srv-1",
    )
    client = MlflowClient(server_study.tracking_uri)
    run = client.get_run(tracker.run_id)  # type: ignore[arg-type]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == server_study.parent_run_id
    assert run.data.params == config_params(config)
    assert "division_summary" in run.data.tags
    for name in EVAL_METRICS:
        assert len(client.get_metric_history(run.info.run_id, name)) == evals
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "seeds.parquet", "division_probe.png"} <= names
    local = client.download_artifacts(run.info.run_id, "seeds.parquet", str(tmp_path))
    assert pq.read_table(local).num_rows == config.train.seeds
    best = best_configs(server_study.tracking_uri, "served")  # export reads the server too
    assert [b.run_id for b in best] == [run.info.run_id]
    assert RunConfig.from_dict(best[0].config) == config
    server_study.end_launch()
    assert client.get_run(server_study.parent_run_id).info.status == "FINISHED"  # type: ignore[arg-type]


def test_metrics_survive_a_server_outage(
    server_study: StudyTracker, mlflow_server: MlflowServer
) -> None:
    """Stop the server mid-trial, keep training, restart it on the same port: all arrive."""
    config = small_config(steps=600)
    tracker = TrialTracker(
        server_study.tracking_uri,
        experiment_id=server_study.experiment_id,  # type: ignore[arg-type]
        parent_run_id=server_study.parent_run_id,
        trial_name="outage",
        params=config_params(config),
        tags={"nalu.ray_trial_id": "srv-outage"},
        backoff=(0.2, 1.0),
        open_timeout=30,
    )
    assert tracker.run_id is not None
    trainer = PopulationTrainer(config)
    steps = []
    for report in trainer.run():
        tracker.log_eval(report.step, report.metrics())
        steps.append(report.step)
        if len(steps) == 2:
            mlflow_server.stop(graceful=False)  # a crash; the trial must not notice
    assert len(steps) == 6
    result = trainer.result()
    tracker.log_result(result)
    assert tracker._delivery.pending_count() > 0  # held back, not lost
    # Restart only once delivery has met the outage: it gathers evaluations for 5 s between
    # tries, so a quick restart could otherwise fall inside one gathering window, untried.
    deadline = time.monotonic() + 60
    while tracker._delivery.failures == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    mlflow_server.start()
    assert tracker.finish("COMPLETE", timeout=60)
    assert tracker._delivery.failures > 0 and tracker.dropped == 0

    client = MlflowClient(server_study.tracking_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["nalu.state"] == "COMPLETE"
    for name in EVAL_METRICS:
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted({m.step for m in history}) == steps, name
    assert run.data.metrics["success_rate"] == result.success_rate
    assert "best_replica.safetensors" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_launch_on_a_server_keeps_artifacts_on_the_server(
    mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """With an http:// tracking URI the driver must not point the experiment at its own disk:
    artifacts go through the server (mlflow-artifacts:), into its --artifacts-destination."""
    from study._launch import _study_tracker
    from study._settings import resolve_settings
    from study._spec import parse_spec

    (tmp_path / "space.yaml").write_text("name: s\nparameters:\n  unit: nau\n")
    spec = parse_spec(
        {
            "name": "served-artifacts",
            "tasks": [{"name": "static", "ops": ["add"]}],
            "space": "space.yaml",
        },
        base_dir=tmp_path,
    )
    settings = resolve_settings(
        spec.name,
        cli={"tracking_uri": mlflow_server.uri, "workdir": str(tmp_path / "work")},
        env={},
    )
    study_dir = settings.study_dir(spec.name)
    tracker = _study_tracker(settings, spec, study_dir)
    experiment_id = tracker.prepare()
    client = MlflowClient(mlflow_server.uri)
    location = client.get_experiment(experiment_id).artifact_location
    assert location.startswith("mlflow-artifacts:"), location

    run = client.create_run(experiment_id)
    (tmp_path / "note.txt").write_text("through the server")
    client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    client.set_terminated(run.info.run_id)
    assert not (study_dir / "artifacts").exists()
    assert list(mlflow_server.artifacts_dir.rglob("note.txt"))

    # the embedded default keeps them next to the workdir's store, one folder per study
    local = resolve_settings(spec.name, cli={"workdir": str(tmp_path / "work")}, env={})
    expected = local.workdir / "artifacts" / spec.name
    assert _study_tracker(local, spec, study_dir).artifact_root == expected
