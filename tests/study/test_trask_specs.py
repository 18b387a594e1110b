"""The shipped Trask (2018) sequence specs: they validate, and run tiny through the real CLI
launch path (local Ray, SQLite Optuna and MLflow stores in the workdir), with the paper's
metrics and the convergence verdict on every trial and the heads ranked by the dashboard."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from dashboards import Dashboard, create_app
from search_spaces import load_space
from study._spec import load_spec, shipped_specs

HEADS = {
    "trask2018-mnist": ["lstm", "linear", "nac_add", "nalu"],
    "trask2018-translation": ["linear", "nac_add", "nalu"],
}
# The paper's metrics, per task (docs/tasks.md, "Metrics"): MAE and accuracy at 10, 100
# and 1000 digits for MNIST; train/validation/test MAE for translation.
METRICS = {
    "mnist-count": [
        f"{split}_{metric}_{kind}"
        for split in ("interpolation", "extrapolation", "extrapolation_1000")
        for metric in ("mae", "accuracy", "sequence_accuracy")
        for kind in ("median", "best")
    ],
    "mnist-add": [
        f"{split}_{metric}_{kind}"
        for split in ("interpolation", "extrapolation", "extrapolation_1000")
        for metric in ("mae", "accuracy")
        for kind in ("median", "best")
    ],
    "number-translation": [
        f"{split}_mae_{kind}"
        for split in ("train", "interpolation", "extrapolation")
        for kind in ("median", "best")
    ],
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_shipped_spec_compares_the_papers_heads(name: str) -> None:
    assert name in shipped_specs()
    spec = load_spec(name)
    space = load_space(spec.space)
    assert list(space["unit"].probe_values("low")) == HEADS[name]
    assert {"lr", "unit"} <= set(space.names)
    assert spec.pruner.name == "none"  # every head's trials run to the end
    if name == "trask2018-mnist":
        assert "hidden_size" in space.names
        assert [t.name for t in spec.tasks] == ["mnist-count", "mnist-add"]
        for task in spec.tasks:
            assert task.options["length"] == 10
            assert list(task.options["extrapolation_lengths"]) == [100, 1000]
    else:
        assert "lstm_size" in space.names
        assert [t.name for t in spec.tasks] == ["number-translation"]


def _tiny_spec(name: str, folder: Path) -> Path:
    """The shipped spec with a tiny budget and one trial per head (a grid)."""
    text = (resources.files("study") / "specs" / f"{name}.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    data["name"] = f"tiny-{name}"
    data["training"] = {"seeds": 2, "steps": 20, "eval_every": 5, "max_failures": 0}
    heads = HEADS[name]
    data["budget"] = {"num_samples": len(heads), "max_concurrent": 2}
    size = "hidden_size" if name == "trask2018-mnist" else "lstm_size"
    grid = {"unit": heads, "lr": [0.01], size: [10]}
    data["sampler"] = {"name": "grid", "seed": 0, "options": {"search_space": grid}}
    for task in data["tasks"]:
        if task["name"].startswith("mnist"):
            task["options"]["eval_sequences"] = 10  # the 1000-digit split stays cheap
    path = folder / f"tiny-{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", sorted(HEADS))
def test_shipped_spec_runs_tiny_through_launch(name: str, tmp_path: Path) -> None:
    spec_path = _tiny_spec(name, tmp_path)
    work = tmp_path / "work"
    env = dict(os.environ, NALU_STUDY_WORKDIR=str(work), RAY_USAGE_STATS_ENABLED="0")
    env.pop("NALU_STUDY_RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-m", "study", "launch", str(spec_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    study = f"tiny-{name}"
    uri = f"sqlite:///{work / 'mlflow.db'}"  # the workdir's store, one experiment per study
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None
    runs = [
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("nalu.role") == "trial"
    ]
    tasks = {t["name"] for t in yaml.safe_load(spec_path.read_text())["tasks"]}
    assert len(runs) == len(HEADS[name]) * len(tasks)
    for run in runs:
        task = run.data.params["task"]
        metrics = run.data.metrics
        missing = [m for m in METRICS[task] if m not in metrics]
        assert not missing, (task, missing)
        for key in METRICS[task]:
            value = metrics[key]
            assert value >= 0 and not math.isnan(value), (key, value)
            if "accuracy" in key:
                assert value <= 1
        # the convergence verdict: a metric and a tag that agree
        assert metrics["converged"] in (0.0, 1.0)
        assert run.data.tags["converged"] == str(metrics["converged"] == 1.0).lower()
        if "train_mse_late_share" in metrics:
            assert 0 <= metrics["train_mse_late_share"] <= 1
        else:  # NaN, left out: the curve started non-finite (a diverged seed), no verdict
            assert metrics["converged"] == 0.0

    # the dashboard's leaderboard: every head, ranked by extrapolation MSE (success is 0)
    app = TestClient(create_app(Dashboard(uri, ttl=0.0)), raise_server_exceptions=False)
    for task in tasks:
        body = app.get(f"/api/studies/{study}/leaderboard", params={"task": task}).json()
        best = body["best_per_unit"]
        assert sorted(r["unit"] for r in best) == sorted(HEADS[name]), body
        mse = [r["extrapolation_mse_median"] for r in best]
        assert mse == sorted(mse)
        assert body["complete_trials"] == len(HEADS[name])
