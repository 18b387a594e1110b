"""`--unit a,b` stacks, `nalu-study units [--json]` and `train --help` naming every unit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from nalu_core import UNITS, LayerConfig, ModelConfig, RunConfig
from study.cli import app
from study.cli._train import build_run_config

runner = CliRunner()


def _flags(**given: Any) -> dict[str, Any]:
    names = (
        "unit task op seeds seed steps input_size interpolation extrapolation range_preset depth "
        "hidden_size lr optimizer batch_size clip clip_value eval_every device mnist_dir"
    ).split()
    flags: dict[str, Any] = dict.fromkeys(names)
    flags |= {"unit_options": {}, "task_options": {}}
    return flags | given


def test_a_comma_separated_unit_is_a_per_layer_stack() -> None:
    config = build_run_config(RunConfig(), **_flags(unit="nau,nmu"))
    assert [layer.unit for layer in config.model.layers] == ["nau", "nmu"]
    assert config.model.depth == 2


def test_a_single_unit_keeps_its_meaning_with_depth() -> None:
    config = build_run_config(RunConfig(), **_flags(unit="nmu", depth=3))
    assert [layer.unit for layer in config.model.layers] == ["nmu"] * 3


def test_an_option_goes_to_the_layers_that_declare_it() -> None:
    config = build_run_config(
        RunConfig(), **_flags(unit="nalu,nau", unit_options={"gate": "constant"})
    )
    assert config.model.layers[0].options == {"gate": "constant"}
    assert config.model.layers[1].options == {}


def test_a_mixed_stack_from_a_file_keeps_its_units_under_option() -> None:
    base = RunConfig(
        model=ModelConfig(layers=(LayerConfig(unit="mlp"), LayerConfig(unit="linear")))
    )
    config = build_run_config(base, **_flags(unit_options={"activation": "tanh"}))
    assert [layer.unit for layer in config.model.layers] == ["mlp", "linear"]
    assert config.model.layers[0].options == {"activation": "tanh"}


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--unit", "nau,nope"], "--unit"),
        (["--unit", "nau,"], "--unit"),
        (["--unit", "nau,nmu", "--depth", "3"], "--depth"),
        (["--unit", "nau,nmu", "--option", "nope=1"], "--option nope"),
    ],
)
def test_bad_stacks_exit_2_naming_the_flag(args: list[str], flag: str) -> None:
    result = runner.invoke(app, ["train", *args, "--steps", "1"])
    assert result.exit_code == 2, result.output
    assert flag in " ".join(result.output.split()).replace("│", "")
    assert "Traceback" not in result.output


def test_a_stack_trains_from_the_command_line(tmp_path: Any) -> None:
    out = tmp_path / "r.json"
    args = ["train", "--unit", "nau,nmu", "--op", "mul", "--input-size", "4", "--seeds", "2"]
    args += ["--steps", "20", "--eval-every", "10", "--device", "cpu", "--quiet"]
    result = runner.invoke(app, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    layers = json.loads(out.read_text())["configuration"]["model"]["layers"]
    assert [layer["unit"] for layer in layers] == ["nau", "nmu"]


def test_units_json_lists_every_unit_with_its_defaults() -> None:
    result = runner.invoke(app, ["units", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    listed = {unit["name"]: unit for unit in data["units"]}
    assert set(listed) == set(UNITS)
    for name, spec in UNITS.items():
        assert {k: v["default"] for k, v in listed[name]["options"].items()} == spec.defaults()
    assert listed["nmu"]["regularizer"] == {"lambda": 10.0, "start": 1_000_000, "end": 2_000_000}


def test_units_table_and_train_help_name_every_unit() -> None:
    table = runner.invoke(app, ["units"])
    assert table.exit_code == 0
    helped = runner.invoke(app, ["train", "--help"], terminal_width=400)
    assert helped.exit_code == 0
    text = " ".join(helped.output.split())
    for name in UNITS:
        assert name in table.output
        assert name in text, name
