"""``--data-streams`` and ``training.data_streams``: accepted, validated, reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from study._errors import SpecError
from study._spec import parse_spec
from study.cli import app

runner = CliRunner()
SPACE = {"name": "tiny", "tasks": ["static"], "parameters": {"unit": ["nau", "nmu"]}}


def _spec(training: dict[str, object]) -> dict[str, object]:
    return {
        "name": "t",
        "tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 2}}],
        "space": "space.yaml",
        "training": {"seeds": 8, "steps": 200, "eval_every": 100, **training},
        "budget": {"num_samples": 1},
    }


def test_a_spec_takes_training_data_streams(tmp_path: Path) -> None:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    spec = parse_spec(_spec({"data_streams": 2}), base_dir=tmp_path)
    assert spec.training.train_overrides()["data_streams"] == 2
    assert parse_spec(_spec({}), base_dir=tmp_path).training.data_streams is None
    with pytest.raises(SpecError, match="training.data_streams"):
        parse_spec(_spec({"data_streams": 3}), base_dir=tmp_path)  # 8 seeds, 3 groups


def test_train_with_shared_streams_reports_both_intervals(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["train", "--unit", "nau,nau", "--input-size", "10", "--seeds", "8"]
    args += ["--data-streams", "4", "--steps", "20", "--eval-every", "10", "--quiet"]
    result = runner.invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["configuration"]["train"]["data_streams"] == 4
    assert "success_ci_adjusted" in data and "intra_group_correlation" in data
    assert "success_lower_adjusted" in data["metrics"]


def test_data_streams_that_do_not_divide_the_seeds_exit_2(tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    args = ["train", "--seeds", "10", "--data-streams", "4", "--steps", "1", "--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "--data-streams" in " ".join(result.output.split()).replace("│", "")
    assert not out.exists()


def test_the_size_check_counts_evaluation_in_chunks() -> None:
    """The issue's 1024-seed, 100-input run (Madsen's 2 × 10,000 evaluation samples) fits a
    24 GiB machine: evaluation runs a chunk at a time, so its samples are not a batch of every
    replica. It was refused as 30.5 GiB when they were counted as one."""
    from study._spec import check_trial_size, trial_bytes

    need = trial_bytes(seeds=1024, batch=128, width=100, eval_samples=10_000)
    assert need < 1 * 2**30  # 0.42 GB of training blocks, 82 MB of evaluation sets
    check_trial_size(
        seeds=1024,
        batch=128,
        width=100,
        dtype="float32",
        eval_samples=10_000,
        where="--input-size",
        limit=24 * 2**30,
    )
    with pytest.raises(SpecError, match="GiB"):
        check_trial_size(
            seeds=1024,
            batch=128,
            width=10**6,
            dtype="float32",
            eval_samples=10_000,
            where="--input-size",
            limit=24 * 2**30,
        )
