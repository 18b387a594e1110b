"""One store per workdir: two launches share it, at the same time, from a fresh start."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from study._stores import legacy_studies, study_stores

PRINTED = ("status", "dashboard", "export", "mlflow", "optuna")
SPACE = {"name": "tiny", "parameters": {"unit": ["nau"], "lr": {"type": "fixed", "value": 0.05}}}


def _spec(name: str) -> dict[str, object]:
    return {
        "name": name,
        "tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 2}}],
        "space": "tiny.yaml",
        "training": {"seeds": 2, "steps": 100, "eval_every": 50, "checkpoint_every": 1},
        "budget": {"num_samples": 1, "max_concurrent": 1},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "resources": {"cpus": 1},
    }


def test_concurrent_first_users_of_a_fresh_workdir_store_do_not_race(tmp_path: Path) -> None:
    """Four processes set up four studies in one new workdir at once (MLflow + Optuna)."""
    workdir = tmp_path / "work"
    code = (
        "import sys, time\n"
        "from study._settings import resolve_settings\n"
        "from study._studies import open_storage\n"
        "from study._tracking import StudyTracker\n"
        "name, workdir, at = sys.argv[1], sys.argv[2], float(sys.argv[3])\n"
        "s = resolve_settings(name, cli={'workdir': workdir}, env={})\n"
        "time.sleep(max(0.0, at - time.time()))\n"
        "t = StudyTracker(s.tracking_uri, study_name=name, artifact_root=s.artifact_root)\n"
        "t.prepare(); t.start_launch(params={'study': name}); t.end_launch()\n"
        "open_storage(s.storage)\n"
    )
    at = str(time.time() + 6.0)  # all past their imports, then start together
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"s{i}", str(workdir), at], stderr=subprocess.PIPE
        )
        for i in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode()[-3000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    names = {e.name for e in client.search_experiments()}
    assert {"s0", "s1", "s2", "s3"} <= names
    assert (workdir / "optuna.db").exists()
    assert not list(workdir.glob("s*/mlflow.db"))  # nothing per study


@pytest.mark.integration
@pytest.mark.slow
def test_two_launches_into_one_workdir_at_the_same_time(tmp_path: Path) -> None:
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(SPACE))
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(_spec(name)))
    workdir = tmp_path / "work"
    env = dict(os.environ, NALU_STUDY_WORKDIR=str(workdir), RAY_USAGE_STATS_ENABLED="0")
    env.pop("NALU_STUDY_TRACKING_URI", None)
    env.pop("NALU_STUDY_STORAGE", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "study", "launch", str(tmp_path / f"{name}.yaml")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("alpha", "beta")
    ]
    outputs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=480)
        assert proc.returncode == 0, out[-4000:]
        outputs.append(out)
    assert "tensorboard" not in "".join(outputs).lower()  # Tune's hint for a tool we lack
    assert "done 1 of 1" in outputs[0]

    # one MLflow store, one experiment per study, each with its parent and trial run
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    for name in ("alpha", "beta"):
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        roles = sorted(r.data.tags["nalu.role"] for r in runs)
        assert roles == ["launch", "trial"]
        assert experiment.artifact_location == (workdir / "artifacts" / name).as_uri()
    # one Optuna storage, studies named <study>.<task>-<op>
    summaries = optuna.get_all_study_summaries(f"sqlite:///{workdir / 'optuna.db'}")
    assert sorted(s.study_name for s in summaries) == ["alpha.static-add", "beta.static-add"]
    for summary in summaries:
        study = optuna.load_study(
            study_name=summary.study_name, storage=f"sqlite:///{workdir / 'optuna.db'}"
        )
        assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    # each study folder keeps only its record, its spec, its Ray results (and the driver's
    # lock file, which one launch or resume at a time holds)
    for name in ("alpha", "beta"):
        assert sorted(p.name for p in (workdir / name).iterdir()) == [
            ".driver.lock",
            "ray",
            "spec.yaml",
            "study.json",
        ]
    assert legacy_studies(workdir) == []

    # native metadata: the parent run carries the spec, sampler and pruner; the Optuna study
    # names its objective and links to its MLflow experiment
    experiment = client.get_experiment_by_name("alpha")
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    (parent,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`nalu.role` = 'launch'"
    )
    assert parent.data.params["sampler"] == "random" and parent.data.params["pruner"] == "none"
    assert parent.data.params["sampler.seed"] == "0"
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["spec.yaml"]
    alpha = optuna.load_study(
        study_name="alpha.static-add", storage=f"sqlite:///{workdir / 'optuna.db'}"
    )
    assert alpha.metric_names == ["success_lower"]
    assert alpha.user_attrs["mlflow_experiment_id"] == experiment.experiment_id
    assert alpha.user_attrs["spec"]["sampler"] == {"name": "random", "seed": 0}

    # the commands the launch printed work as printed
    commands = [
        line.split(":", 1)[1].split("  (")[0].strip()
        for line in outputs[0].splitlines()
        if line.startswith("  ") and line.split(":", 1)[0].strip() in PRINTED
    ]
    assert len(commands) == len(PRINTED), outputs[0][-2000:]
    # MLflow 3.x's classic view of this very experiment
    page = f"#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert page in outputs[0]
    for command in commands:
        words = shlex.split(command)
        if words[0] == "pip":
            assert "'.[ui]'" in command
            continue
        assert shutil.which(words[0]), command
        if words[:2] in (["nalu-study", "status"], ["nalu-study", "export"]):
            done = subprocess.run(
                [sys.executable, "-m", "study", *words[1:]], env=env, capture_output=True
            )
            assert done.returncode == 0, (command, done.stderr[-2000:])
        if words[:2] == ["nalu-study", "dashboard"]:
            from dashboards._cli import _settings

            workdir_arg = Path(words[words.index("--workdir") + 1])
            uri, _ = _settings(None, tracking_uri=None, storage=None, workdir=workdir_arg)
            assert uri == f"sqlite:///{workdir / 'mlflow.db'}"


def test_old_per_study_layout_is_still_found(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    old = workdir / "old"
    old.mkdir(parents=True)
    settings = {
        "tracking_uri": f"sqlite:///{old / 'mlflow.db'}",
        "storage": f"sqlite:///{old / 'optuna.db'}",
    }
    (old / "study.json").write_text(json.dumps({"name": "old", "settings": settings}))
    new = workdir / "new"
    new.mkdir()
    (new / "study.json").write_text(json.dumps({"name": "new"}))
    stores = study_stores(workdir)
    assert stores["old"] == settings
    assert stores["new"]["tracking_uri"] == f"sqlite:///{workdir / 'mlflow.db'}"
    assert legacy_studies(workdir) == ["old"]
