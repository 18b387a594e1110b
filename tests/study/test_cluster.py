"""A real two-node Ray cluster on loopback, Optuna storage on the real PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from study._settings import resolve_settings
from study._spec import parse_spec
from tests.study.conftest import free_port

# Bad by construction: learning rates far too small to learn anything in 300 steps, so every
# trial fails and the percentile pruner (keep the top quarter) stops most of them early.
BAD_SPACE = {
    "name": "hopeless",
    "parameters": {
        "unit": "nau",
        "lr": {"type": "float", "low": 1e-7, "high": 1e-5, "log": True},
    },
}


def cluster_spec(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "hopeless.yaml").write_text(yaml.safe_dump(BAD_SPACE))
    return {
        "name": "cluster",
        "tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 2}}],
        "space": "hopeless.yaml",
        "training": {
            "seeds": 4,
            "steps": 400,
            "eval_every": 100,
            "checkpoint_every": 1,
            "max_failures": 1,
        },
        "budget": {"num_samples": 6, "max_concurrent": 2},
        "sampler": {"name": "random", "seed": 7},
        "pruner": {
            "name": "percentile",
            "options": {"percentile": 25.0, "n_startup_trials": 2, "n_warmup_steps": 0},
        },
        "resources": {"cpus": 1},
    }


def _forget_address(address: str) -> None:
    """Cluster() advertises itself in /tmp/ray/ray_current_cluster, where any plain
    ``ray.init()`` on this shared machine would join it; withdraw that advert (ours only)."""
    from ray._common.utils import get_ray_address_file

    advert = Path(get_ray_address_file(None))
    try:
        if advert.read_text().strip() == address:
            advert.unlink()
    except OSError:
        pass


def tune_results(study_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result Tune recorded, per trial folder, in order (``result.json``: one per line)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(study_dir.glob("ray/launch-*/*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name] = rows
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_two_node_cluster_postgres_pruning_and_retries(tmp_path: Path, postgres_url: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from study._launch import launch

    spec = parse_spec(cluster_spec(tmp_path), base_dir=tmp_path)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "gcs_server_port": free_port(), "include_dashboard": False},
    )
    lines: list[str] = []
    try:
        _forget_address(cluster.address)
        worker = cluster.add_node(num_cpus=1)
        both = {cluster.head_node.node_id, worker.node_id}
        settings = resolve_settings(
            spec.name,
            cli={
                "ray_address": cluster.address,
                "storage": postgres_url,
                "workdir": str(tmp_path / "work"),
            },
            env={},
        )
        # trials 0 and 1 raise once at step 200, after their checkpoint: the retry resumes there
        result = launch(
            spec,
            settings,
            track=False,
            echo=lines.append,
            extra_config={"fail_at_step": 200, "fail_trials": [0, 1]},
        )
    finally:
        ray.shutdown()
        cluster.shutdown()

    study = optuna.load_study(study_name="cluster.static-add", storage=postgres_url)
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 6
    assert TrialState.RUNNING not in states

    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, f"no trial pruned: {[t.intermediate_values for t in trials]}"
    for trial in pruned:
        assert trial.intermediate_values, "pruned trials keep their intermediate values"
        assert max(trial.intermediate_values) < 400

    # One CPU per node and two trials at once: trials 0 and 1 start together, so Ray must place
    # them on different nodes. Where later trials and retries run is up to timing (a reused
    # actor may take them all), so the evidence is every result Tune recorded, per attempt.
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert {t.user_attrs["node_id"] for t in finished} <= both
    attempts = tune_results(result.study_dir)
    first = {
        name: rows[0]["node_id"] for name, rows in attempts.items() if name.endswith(("-0", "-1"))
    }
    assert sorted(first) == ["static-add-0", "static-add-1"], sorted(attempts)
    assert set(first.values()) == both, f"trials 0 and 1 started on {first}"

    # n_startup_trials=2: trials 0 and 1 are never pruned, so both failed once and completed
    for trial in trials[:2]:
        assert trial.state == TrialState.COMPLETE
        assert trial.user_attrs["restored_step"] == 200
        assert trial.user_attrs["step"] == 400
        assert Path(trial.user_attrs["checkpoint_dir"], "trainer.pt").exists()
    assert all(t.user_attrs.get("restored_step") == 0 for t in trials[2:])
    assert result.tasks[0].finished == 6
    assert any("pruned" in line for line in lines)
