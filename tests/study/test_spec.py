from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from study._errors import SpecError
from study._spec import ObjectiveSpec, load_spec, parse_spec, shipped_specs
from study.cli import app

SPACE = {
    "name": "tiny",
    "tasks": ["static"],
    "parameters": {"unit": ["nau", "nmu"], "lr": {"type": "float", "low": 1e-3, "high": 0.1}},
}
BASE: dict[str, Any] = {
    "name": "t",
    "tasks": [{"name": "static", "ops": ["add", "mul"], "options": {"input_size": 2}}],
    "space": "space.yaml",
    "training": {"seeds": 4, "steps": 200, "eval_every": 100},
    "budget": {"num_samples": 2},
    "sampler": {"name": "tpe", "seed": 3},
    "pruner": {"name": "median", "options": {"n_warmup_steps": 100}},
}


@pytest.fixture
def base_dir(tmp_path: Path) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    return tmp_path


def with_change(dotted: str, value: object) -> dict[str, Any]:
    data = copy.deepcopy(BASE)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(last)
    else:
        node[last] = value
    return data


_DELETE = object()


def test_valid_spec_expands_the_task_grid(base_dir: Path) -> None:
    spec = parse_spec(BASE, base_dir=base_dir)
    assert spec.task_keys() == ["static-add", "static-mul"]
    assert spec.space == str(base_dir / "space.yaml")
    assert spec.train_config().seeds == 4
    assert spec.sampler.build().__class__.__name__ == "TPESampler"
    assert spec.pruner.build(max_resource=200).__class__.__name__ == "MedianPruner"


@pytest.mark.parametrize(
    "name",
    [
        "quick",
        "arithmetic",
        "madsen2020",
        "mistry2022-division",
        "trask2018-mnist",
        "trask2018-translation",
    ],
)
def test_shipped_specs_load(name: str) -> None:
    assert name in shipped_specs()
    spec = load_spec(name)
    assert spec.name == name
    assert spec.tasks


@pytest.mark.parametrize(
    ("dotted", "value", "field"),
    [
        ("name", "bad name/x", "name"),
        ("colour", "red", "colour"),
        ("tasks", [], "tasks"),
        ("tasks", [{"name": "static", "ops": "add"}], "tasks[0].ops"),
        ("tasks", [{"name": "nope", "ops": ["add"]}], "tasks[0].name"),
        ("space", "no-such-preset", "space"),
        ("training.steps", 0, "training.steps"),
        ("training.options", {"lr": -1.0}, "training.options.lr"),
        ("training.options", {"steps": 5}, "training.options.steps"),
        ("budget.num_samples", 0, "budget.num_samples"),
        ("budget.time_limit", "soon", "budget.time_limit"),
        ("sampler.name", "annealing", "sampler.name"),
        ("sampler.options", {"bogus": 1}, "sampler.options.bogus"),
        ("pruner.name", "coin", "pruner.name"),
        ("pruner.options", {"n_warmup_steps": -1}, "pruner.options"),
        ("pruner.options", {"typo": 1}, "pruner.options.typo"),
        ("objective.metric", "accuracy", "objective.metric"),
        ("resources.gpus", 1.5, "resources.gpus"),
        ("resources.cpus", -1, "resources.cpus"),
        ("settings.storage", 3, "settings.storage"),
        ("settings.colour", "x", "settings.colour"),
        ("training.ranges", ["mistry_1_2", "nowhere"], "training.ranges[1]"),
        ("training.ranges", ["mistry_1_2", "mistry_1_2"], "training.ranges"),
        ("training.ranges", "mistry_1_2", "training.ranges"),
        ("sampler.enqueue", [{"unit": "nau"}], "sampler.enqueue[0]"),
        ("sampler.enqueue", [{"unit": "nac_mul", "lr": 0.01}], "sampler.enqueue[0]"),
        ("sampler.enqueue", {"unit": "nau"}, "sampler.enqueue"),
    ],
)
def test_malformed_spec_names_the_field(
    base_dir: Path, dotted: str, value: object, field: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(with_change(dotted, value), base_dir=base_dir)
    assert info.value.field == field
    assert field in str(info.value)


def test_time_limit_accepts_durations(base_dir: Path) -> None:
    spec = parse_spec(with_change("budget.time_limit", "2m"), base_dir=base_dir)
    assert spec.budget.time_limit == 120.0
    unlimited = with_change("budget.num_samples", None)
    with pytest.raises(SpecError, match="budget.num_samples"):
        parse_spec(unlimited, base_dir=base_dir)
    unlimited["budget"]["time_limit"] = 30
    assert parse_spec(unlimited, base_dir=base_dir).budget.num_samples is None


@given(
    lower=st.floats(0, 1),
    gap=st.integers(1, 1000),
    mse_a=st.floats(0, 1e30, allow_nan=False),
    mse_b=st.floats(0, math.inf, allow_nan=False),
)
def test_objective_orders_by_bound_then_mse(
    lower: float, gap: int, mse_a: float, mse_b: float
) -> None:
    objective = ObjectiveSpec()
    # the Wilson bound moves by at least ~1e-4 per solved seed for up to 1000 seeds
    higher = lower + 1e-4 * gap
    a = objective.score({"success_lower": higher, "extrapolation_mse_median": mse_b})
    b = objective.score({"success_lower": lower, "extrapolation_mse_median": mse_a})
    if higher > lower:
        assert a > b
    same_bound_a = objective.score({"success_lower": lower, "extrapolation_mse_median": mse_a})
    same_bound_b = objective.score({"success_lower": lower, "extrapolation_mse_median": mse_b})
    if mse_a < mse_b and (mse_b / max(mse_a, 1e-300) > 1.001):
        assert same_bound_a >= same_bound_b


def test_cli_bad_spec_exits_2_and_writes_nothing(base_dir: Path, tmp_path: Path) -> None:
    spec_file = base_dir / "bad.yaml"
    spec_file.write_text(yaml.safe_dump(with_change("pruner.options", {"typo": 1})))
    workdir = tmp_path / "work"
    result = CliRunner().invoke(
        app, ["launch", str(spec_file), "--workdir", str(workdir)], catch_exceptions=False
    )
    assert result.exit_code == 2
    assert "pruner.options.typo" in result.output
    assert not workdir.exists()


def test_cli_missing_spec_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["launch", "no-such-spec", "--workdir", str(tmp_path / "w")], catch_exceptions=False
    )
    assert result.exit_code == 2
    assert "no-such-spec" in result.output
    assert not (tmp_path / "w").exists()


def test_shipped_reproduction_specs_keep_the_protocol() -> None:
    madsen = load_spec("madsen2020")
    assert madsen.task_keys() == ["static-add", "static-sub", "static-mul", "static-div"]
    assert madsen.pruner.name == "none" and madsen.training.steps == 5_000_000
    assert madsen.train_config().stop_when_solved
    grid = madsen.sampler.options["search_space"]["published_row"]
    assert len(grid) == madsen.budget.num_samples == 5
    division = load_spec("mistry2022-division")
    assert len(division.training.ranges) == 9 and division.training.seeds == 25
    assert division.tasks[0].options == {"input_size": 2, "threshold_rule": "mistry2022"}
    assert division.sampler.enqueue[0]["unit"] == "nmru"
    assert division.sampler.enqueue[0]["sign_retrieval"] is True
    assert not division.train_config().stop_when_solved  # a solved seed may still diverge


def test_cli_overrides_seeds_steps_and_any_key(tmp_path: Path) -> None:
    """--seeds/--steps/--set reach the validated spec; a bad --set value exits 2, naming it."""
    workdir = tmp_path / "work"
    bad = CliRunner().invoke(
        app,
        [
            "launch",
            "madsen2020",
            "--workdir",
            str(workdir),
            "--seeds",
            "4",
            "--set",
            "budget.num_samples=x",
        ],
        catch_exceptions=False,
    )
    assert bad.exit_code == 2 and "budget.num_samples" in bad.output
    assert not workdir.exists()
    from study.cli._study import _set_overrides

    overrides = _set_overrides(["tasks=[{name: static, ops: [mul]}]", "budget.time_limit=30m"])
    spec = load_spec("madsen2020", overrides={**overrides, "training.seeds": 32})
    assert spec.task_keys() == ["static-mul"] and spec.training.seeds == 32
    assert spec.budget.time_limit == 1800.0
    with pytest.raises(SpecError, match="KEY=YAML"):
        _set_overrides(["nothing"])
