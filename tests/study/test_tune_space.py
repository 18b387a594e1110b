from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from ray.tune.experiment import Experiment
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.sample import Categorical, Domain, Float, Function, Integer
from ray.tune.search.variant_generator import generate_variants

from nalu_core import TaskConfig
from search_spaces import FixedParameter, SearchSpace, list_presets, load_space
from study._tune_space import to_tune_param_space

TASKS = {
    "quick": TaskConfig(name="static", op="add", options={"input_size": 2}),
    "trask2018-static": TaskConfig(name="static", op="mul"),
    "madsen2020-static": TaskConfig(name="static", op="mul"),
    "division": TaskConfig(name="static", op="div", options={"input_size": 2}),
    "mnist-count": TaskConfig(name="mnist-count", op="add"),
    "number-translation": TaskConfig(name="number-translation", op="add"),
}


def _check(space: SearchSpace, config: dict[str, Any], task: TaskConfig) -> None:
    active = space.active(config)
    for name, value in config.items():
        if name in active:
            assert value is not None or space[name].kind == "fixed", name
        else:
            assert value is None, f"{name} is inactive but sampled: {value!r}"
    space.to_run_config(config, task=task, train={"seeds": 1, "steps": 10})


@pytest.mark.parametrize("name", sorted(set(list_presets()) & set(TASKS)))
def test_every_preset_converts_and_its_samples_build(name: str) -> None:
    space = load_space(name)
    param_space = to_tune_param_space(space)
    assert list(param_space) == space.names
    for param in space.parameters:
        domain = param_space[param.name]
        if isinstance(param, FixedParameter) and not param.conditional:
            assert domain == param.value
        elif param.conditional:
            assert isinstance(domain, Function)
        else:
            assert isinstance(domain, Domain) and not isinstance(domain, Function)
    np.random.seed(0)
    for _ in range(25):
        for _, config in generate_variants(param_space):
            _check(space, config, TASKS[name])


def test_basic_variant_generator_as_tune_runs_it() -> None:
    space = load_space("division")
    generator = BasicVariantGenerator(random_state=0)
    experiment = Experiment(
        "tune-space", run=lambda config: None, config=to_tune_param_space(space), num_samples=30
    )
    generator.add_configurations([experiment])
    seen_units = set()
    count = 0
    while (trial := generator.next_trial()) is not None:  # type: ignore[no-untyped-call]
        _check(space, trial.config, TaskConfig(name="static", op="div", options={"input_size": 2}))
        seen_units.add(trial.config["unit"])
        count += 1
    assert count == 30
    assert len(seen_units) >= 3


def test_flat_mode_samples_everything_and_conversion_drops_the_inactive() -> None:
    space = load_space("quick")
    param_space = to_tune_param_space(space, conditionals="flat")
    assert not any(isinstance(d, Function) for d in param_space.values())
    np.random.seed(1)
    task = TaskConfig(name="static", op="add", options={"input_size": 2})
    for _ in range(20):
        for _, config in generate_variants(param_space):
            assert config["epsilon"] is not None  # sampled even for nau
            active = space.active(config)
            assert ("epsilon" in active) == (config["unit"] == "nalu")
            run = space.to_run_config(config, task=task)
            if config["unit"] != "nalu":
                assert run.model.layers[0].options == {}


def test_domains_match_the_parameter_types() -> None:
    space = SearchSpace.from_mapping(
        {
            "parameters": {
                "unit": ["nau", "nmu"],
                "depth": {"type": "int", "low": 1, "high": 2},
                "batch_size": {"type": "int", "low": 33, "high": 129, "step": 32},
                "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                "clip_value": {"type": "float", "low": 0.5, "high": 1.5, "step": 0.5},
            }
        }
    )
    ps = to_tune_param_space(space)
    assert isinstance(ps["unit"], Categorical)
    assert isinstance(ps["depth"], Integer)
    assert isinstance(ps["lr"], Float)
    # a stepped range is listed, so samples land on low + k * step (Tune's q* round to k * q)
    assert list(ps["batch_size"].categories) == [33, 65, 97, 129]
    assert list(ps["clip_value"].categories) == [0.5, 1.0, 1.5]
    depths = {ps["depth"].sample() for _ in range(200)}
    assert depths == {1, 2}  # both ends, though Tune's randint excludes its upper bound
    lrs = [ps["lr"].sample() for _ in range(200)]
    assert all(1e-4 <= v <= 1e-1 for v in lrs)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="conditionals"):
        to_tune_param_space(load_space("quick"), conditionals="nested")  # type: ignore[arg-type]
