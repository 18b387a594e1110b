from __future__ import annotations

import functools
import json
from typing import Any

import optuna
import pytest

from nalu_core import PopulationTrainer, RunConfig, TaskConfig, build_task
from search_spaces import SearchSpace, list_presets, load_space

# the task × op each preset is sampled against, as a study spec would pair them
TASKS = {
    "quick": TaskConfig(name="static", op="add", options={"input_size": 2}),
    "trask2018-static": TaskConfig(name="static", op="mul"),
    "madsen2020-static": TaskConfig(name="static", op="mul"),
    "division": TaskConfig(name="static", op="div", options={"input_size": 2}),
    "mistry2022-division": TaskConfig(name="static", op="div", options={"input_size": 2}),
    "madsen2020-rows": TaskConfig(name="static", op="mul"),
    "mnist-count": TaskConfig(name="mnist-count", op="add"),
    "number-translation": TaskConfig(name="number-translation", op="add"),
    "trask2018-mnist": TaskConfig(name="mnist-add", op="add"),
    "trask2018-translation": TaskConfig(name="number-translation", op="add"),
}
SHIPPED = {
    "quick",
    "trask2018-static",
    "madsen2020-static",
    "division",
    "mnist-count",
    "number-translation",
    "trask2018-mnist",
    "trask2018-translation",
}
POINTS = 50


@functools.cache
def _built_task(key: str) -> Any:
    # a task may load data on first use (MNIST pools): build each task config once
    return build_task(TaskConfig.from_dict(json.loads(key)))


def _task(task: TaskConfig) -> Any:
    return _built_task(json.dumps(task.to_dict(), sort_keys=True))


def test_every_required_preset_is_shipped() -> None:
    assert SHIPPED <= set(list_presets())


def test_every_shipped_preset_has_a_sampling_task() -> None:
    assert set(list_presets()) <= set(TASKS), "add the new preset to TASKS above"


@pytest.mark.parametrize("name", sorted(TASKS))
def test_preset_samples_50_points_that_build(name: str) -> None:
    space = load_space(name)
    task = TASKS[name]
    sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=10)
    study = optuna.create_study(sampler=sampler)
    units: set[str] = set()
    for i in range(POINTS):
        trial = study.ask()
        point = space.suggest(trial)
        # define-by-run: exactly the parameters whose conditions hold were drawn
        assert point == space.active(point)
        assert set(trial.params) == {n for n in point if space[n].kind != "fixed"}
        for pname, distribution in space.to_optuna_distributions().items():
            assert trial.distributions[pname] == distribution
        config = space.to_run_config(point, task=task, train={"seeds": 1, "steps": 10})
        assert RunConfig.from_dict(config.to_dict()) == config
        _task(config.task).build_model(config.model, population=1)
        units.update(layer.unit for layer in config.model.layers)
        study.tell(trial, float(i % 7))
    # sampling actually explores: every unit choice turned up in 50 points
    if "unit" in space.names:
        assert set(space["unit"].probe_values("low")) <= units


@pytest.mark.parametrize("name", sorted(TASKS))
def test_show_output_loads_back_to_the_same_space(name: str) -> None:
    space = load_space(name)
    again = SearchSpace.from_yaml(space.to_yaml(), file="<shown>")
    assert again.to_dict() == space.to_dict()


def test_quick_is_small_enough_for_the_demo() -> None:
    space = load_space("quick")
    assert space.tasks == ("static",)
    assert space.fixed_values()["depth"] == 1
    assert len(space["unit"].probe_values("low")) <= 4


def test_division_covers_the_issue_list() -> None:
    space = load_space("division")
    assert set(space["unit"].probe_values("low")) == {"nalu", "inalu", "npu", "realnpu", "nmru"}
    for name in ("epsilon", "clip", "clip_value", "weight_init", "regularizer_lambda", "lr"):
        assert name in space.names
    assert space["depth"].kind == "int"


def test_madsen_uses_the_published_ranges_and_lambdas() -> None:
    space = load_space("madsen2020-static")
    assert len(space["range_preset"].probe_values("low")) == 7
    assert space["regularizer_lambda"].probe_values("low") == [0, 0.01, 0.1, 1, 10, 100]
    nmu = space.to_run_config(
        {"unit": "nmu", "range_preset": "madsen_1_2", "regularizer_lambda": 10},
        task=TASKS["madsen2020-static"],
    )
    assert [layer.unit for layer in nmu.model.layers] == ["nau", "nmu"]
    assert nmu.task.options["range_preset"] == "madsen_1_2"
    assert nmu.train.regularizer_lambda == 10


def test_sampled_points_train_through_the_real_trainer() -> None:
    space = load_space("division")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    train = {"seeds": 2, "steps": 20, "eval_every": 10, "eval_samples": 100}
    for _ in range(2):
        point = space.suggest(study.ask())
        config = space.to_run_config(point, task=TASKS["division"], train=train)
        trainer = PopulationTrainer(config)
        reports = list(trainer.run())
        assert reports[-1].step == 20
        assert len(trainer.result().seeds) == 2


def test_madsen_rows_build_each_row_as_published() -> None:
    from nalu_core import PUBLISHED_ROWS

    space = load_space("madsen2020-rows")
    rows = space["published_row"].probe_values("low")
    assert len(rows) == 5
    for key in rows:
        config = space.to_run_config(
            {"published_row": key},
            task=TASKS["madsen2020-rows"],
            train={"seeds": 3, "steps": 5_000_000, "stop_when_solved": True},
        )
        published = PUBLISHED_ROWS[key].run_config("mul")
        assert config.model == published.model
        assert config.task.options == published.task.options
        # the study owns seeds, steps, evaluation and the device
        expected = {**published.train.to_dict(), "seeds": 3, "stop_when_solved": True}
        expected["device"] = "auto"
        assert config.train.to_dict() == expected
    # the NMU row: NAU -> NMU with λ̂ = 10 from 1e6 to 2e6 (one schedule for both layers)
    nmu = space.to_run_config({"published_row": "madsen2020/nmu"}, task=TASKS["madsen2020-rows"])
    assert [layer.unit for layer in nmu.model.layers] == ["nau", "nmu"]
    assert (nmu.train.regularizer_lambda, nmu.train.regularizer_start) == (10.0, 1_000_000)
    assert nmu.train.regularizer_end == 2_000_000


def test_mistry_division_space_covers_the_issue_list() -> None:
    space = load_space("mistry2022-division")
    assert set(space["unit"].probe_values("low")) == {"nalu", "inalu", "npu", "realnpu", "nmru"}
    for name in ("lr", "epsilon", "clip", "regularizer_lambda", "regularizer_start"):
        assert name in space.names
    for name in ("gate_init", "weight_init", "gate_init_mean"):
        assert name in space.names
