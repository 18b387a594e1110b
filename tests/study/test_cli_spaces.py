from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from search_spaces import SearchSpace, list_presets, load_space
from study.cli import app

runner = CliRunner()


def test_list_names_every_preset() -> None:
    result = runner.invoke(app, ["spaces", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == list_presets()
    assert any("mnist-count,mnist-add" in line for line in lines)


def test_show_prints_resolved_yaml_that_loads_back() -> None:
    result = runner.invoke(app, ["spaces", "show", "division"])
    assert result.exit_code == 0, result.output
    assert "target: model.options.epsilon" in result.output
    assert "log: false" in result.output  # defaults are spelt out
    shown = SearchSpace.from_yaml(result.output, file="<shown>")
    assert shown.to_dict() == load_space("division").to_dict()


def test_show_a_file_and_an_unknown_name(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("parameters:\n  unit: [nau, nmu]\n", encoding="utf-8")
    result = runner.invoke(app, ["spaces", "show", str(path)])
    assert result.exit_code == 0, result.output
    assert "name: mine" in result.output
    result = runner.invoke(app, ["spaces", "show", "no-such-space"])
    assert result.exit_code == 2
    assert "neither a preset" in result.output
    assert "Traceback" not in result.output


def test_validate_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "tasks: [static]\nparameters:\n  unit: [nau, nalu]\n"
        "  epsilon: {type: float, low: 1e-8, high: 1e-4, log: true, condition: {unit: nalu}}\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["spaces", "validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output and "1 conditional" in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "parameters:\n  unit: [nau, nalu9]\n  lr: {type: float, low: 1, high: 0.1}\n"
        "  gate: {choices: [input], condition: {units: nalu}}\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["spaces", "validate", str(bad)])
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) >= 3, result.output
    assert all(str(bad) in line for line in errors)
    for needle in (
        "parameters.unit: unknown unit 'nalu9'",
        "parameters.lr: inverted",
        "parameters.gate: condition on",
    ):
        assert any(needle in line for line in errors), needle
    assert "Traceback" not in result.output


def test_validate_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["spaces", "validate", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert "cannot be read" in result.output


def test_every_preset_validates() -> None:
    for name in list_presets():
        result = runner.invoke(app, ["spaces", "validate", name])
        assert result.exit_code == 0, result.output
