from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nalu_core import ModelConfig, RunConfig, TaskConfig, TrainConfig
from study.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--op", "pow"], "--op"),
        (["--lr", "-1"], "--lr"),
        (["--seeds", "0"], "--seeds"),
        (["--unit", "nope"], "--unit"),
        (["--unit", "nalu", "--option", "gate=3"], "--option gate"),
        (["--option", "novalue"], "--option"),
        (["--interpolation", "2,1"], "--interpolation"),
        (["--extrapolation", "x"], "--extrapolation"),
        (["--range-preset", "nope"], "--range-preset"),
        (["--task-option", "bogus=1"], "--task-option bogus"),
        (["--task", "nope"], "--task"),
        (["--depth", "9"], "--depth"),
        (["--optimizer", "adamw"], "--optimizer"),
        (["--config", "/no/such/file.yaml"], "--config"),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(args: list[str], flag: str) -> None:
    result = runner.invoke(app, ["train", *args, "--steps", "1"])
    assert result.exit_code == 2, result.output
    assert flag in " ".join(result.output.split()).replace("│", "")
    assert "Traceback" not in result.output


def test_the_installed_command_prints_no_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "study", "train", "--device", "cuda:0", "--op", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--op" in proc.stderr and "Traceback" not in proc.stderr


def test_train_writes_the_json_schema_with_flags_over_the_config(tmp_path: Path) -> None:
    config = RunConfig(
        task=TaskConfig(name="static", op="sub", options={"input_size": 2}),
        model=ModelConfig.stacked("nau"),
        train=TrainConfig(seeds=8, steps=10_000, lr=0.03, eval_every=100, eval_samples=1000),
    )
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config.to_dict()))
    out = tmp_path / "result.json"
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(config_path),
            "--op",
            "div",
            "--unit",
            "nalu",
            "--seeds",
            "3",
            "--steps",
            "200",
            "--device",
            "cpu",
            "--json",
            str(out),
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "success rate" in result.output and "division probe" in result.output
    data = json.loads(out.read_text())
    assert data["configuration"]["task"]["op"] == "div"
    assert data["configuration"]["task"]["options"] == {"input_size": 2}
    assert data["configuration"]["model"]["layers"][0]["unit"] == "nalu"
    assert data["configuration"]["train"]["lr"] == 0.03  # from the file
    assert data["configuration"]["train"]["steps"] == 200  # from the flag
    assert RunConfig.from_dict(data["configuration"]).train.seeds == 3
    assert [s["seed"] for s in data["seeds"]] == [0, 1, 2]
    assert data["threshold"] > 0 and 0 <= data["success_rate"] <= 1
    assert len(data["success_ci"]) == 2
    assert len(data["division_probe"]["bins"]) == 6
    assert len(data["history"]) == 2


def test_train_says_what_it_trains_in_its_first_line() -> None:
    result = runner.invoke(app, ["train", "--steps", "20", "--seeds", "2", "--eval-every", "10"])
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith("training nau (depth 1, hidden 2) on static add"), first
    assert "2 seeds x 20 steps, lr" in first and "defaults" not in first


def test_train_with_no_arguments_names_its_defaults() -> None:
    from study.cli._train import _load_config, describe

    line = describe(_load_config(None), defaults=True)
    assert (
        line.startswith("training ") and "seeds x" in line and line.endswith("--help to choose]")
    )


def test_summary_percentages_keep_a_decimal_below_ten_percent() -> None:
    from study.cli._train import _pct

    assert [_pct(v) for v in (0.0, 0.0037, 0.094, 0.1, 0.56, 1.0)] == [
        "0%",
        "0.4%",
        "9.4%",
        "10%",
        "56%",
        "100%",
    ]
