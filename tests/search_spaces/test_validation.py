from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from nalu_core import TaskConfig
from search_spaces import (
    InvalidSearchSpaceError,
    SearchSpace,
    SearchSpaceError,
    load_space,
)

Write = Callable[[str], Path]
STATIC = TaskConfig(name="static", op="add", options={"input_size": 2})


def _errors(write: Write, text: str) -> list[SearchSpaceError]:
    path = write(text)
    with pytest.raises(InvalidSearchSpaceError) as info:
        load_space(path)
    assert info.value.file == str(path)
    for error in info.value.errors:
        assert error.file == str(path)
        assert str(path) in str(error)
    return info.value.errors


def _one(write: Write, text: str, param: str | None, *needles: str) -> SearchSpaceError:
    errors = _errors(write, text)
    matching = [e for e in errors if e.param == param and all(n in str(e) for n in needles)]
    assert matching, [str(e) for e in errors]
    if param is not None:
        assert f"parameter {param!r}" in str(matching[0])
    return matching[0]


UNIT = "  unit: [nau, nmu]\n"


@pytest.mark.parametrize(
    ("text", "param", "needle"),
    [
        ("parameters:\n" + UNIT + "extra: 1\n", None, "unknown key 'extra'"),
        (
            "parameters:\n" + UNIT + "  lr: {type: float, low: 0.1, hi: 1}\n",
            "lr",
            "unknown key 'hi'",
        ),
        ("parameters:\n" + UNIT + "  lr: {type: real, low: 0.1, high: 1}\n", "lr", "type must be"),
        (
            "parameters:\n" + UNIT + "  lr: {type: float, low: 0.1, high: 0.1}\n",
            "lr",
            "empty range",
        ),
        ("parameters:\n" + UNIT + "  lr: {type: float, low: 0.1, high: 0.01}\n", "lr", "inverted"),
        ("parameters:\n" + UNIT + "  depth: {type: int, low: 3, high: 1}\n", "depth", "inverted"),
        (
            "parameters:\n" + UNIT + "  lr: {type: float, low: 0, high: 1, log: true}\n",
            "lr",
            "low > 0",
        ),
        (
            "parameters:\n" + UNIT + "  lr: {type: float, low: -1, high: 1, log: true}\n",
            "lr",
            "low > 0",
        ),
        (
            "parameters:\n" + UNIT + "  batch_size: {type: int, low: 0, high: 64, log: true}\n",
            "batch_size",
            "low > 0",
        ),
        (
            "parameters:\n" + UNIT + "  batch_size: {type: int, low: 1, high: 65, step: 7}\n",
            "batch_size",
            "multiple of step",
        ),
        (
            "parameters:\n" + UNIT + "  batch_size: {type: int, low: 1.5, high: 64}\n",
            "batch_size",
            "integer",
        ),
        ("parameters:\n" + UNIT + "  optimizer: []\n", "optimizer", "non-empty"),
        ("parameters:\n" + UNIT + "  optimizer: [adam, adam]\n", "optimizer", "twice"),
        ("parameters:\n" + UNIT + "  steps: 10\n", "steps", "set by the study spec"),
        (
            "parameters:\n" + UNIT + "  x: {value: 1, target: model.wheels}\n",
            "x",
            "unknown target",
        ),
        (
            "parameters:\n"
            + UNIT
            + "  lr: {type: float, low: 0.1, high: 1, condition: {optim: adam}}\n",
            "lr",
            "'optim', which does not exist",
        ),
        (
            "parameters:\n" + UNIT + "  clamp: {value: true, condition: {unit: [nau, nalu]}}\n",
            "clamp",
            "'nalu' is not a value",
        ),
        (
            "parameters:\n"
            + UNIT
            + "  a: {choices: [1, 2], target: train.batch_size, condition: {b: 1}}\n"
            + "  b: {choices: [1, 2], target: task.options.subset_seed, condition: {a: 1}}\n",
            "a",
            "cycle",
        ),
        ("parameters: {}\n", None, "non-empty mapping"),
        ("parameters:\n" + UNIT + "tasks: [static, juggling]\n", None, "unknown task 'juggling'"),
    ],
)
def test_structural_errors_name_file_and_parameter(
    write_space: Write, text: str, param: str | None, needle: str
) -> None:
    _one(write_space, text, param, needle)


def test_unknown_unit(write_space: Write) -> None:
    _one(write_space, "parameters:\n  unit: [nau, nalu2]\n", "unit", "unknown unit 'nalu2'")


def test_unknown_option(write_space: Write) -> None:
    text = "parameters:\n" + UNIT + "  gate: [input, constant]\n"
    _one(write_space, text, "gate", "unknown option 'gate'", "['clamp']")


def test_option_that_a_listed_unit_lacks(write_space: Write) -> None:
    text = (
        "parameters:\n  unit: [nau, nalu]\n"
        "  gate: {choices: [input, constant], condition: {unit: [nau, nalu]}}\n"
    )
    _one(write_space, text, "gate", "unit 'nau' has no option 'gate'")


def test_option_applied_where_no_layer_takes_it(write_space: Write) -> None:
    # without a condition, gate reaches points where the unit is nau
    text = "parameters:\n  unit: [nau, nalu]\n  gate: [input, constant]\n"
    _one(write_space, text, "gate", "applies to no layer")


@pytest.mark.parametrize(
    ("text", "param", "needle"),
    [
        # choices the trainer's own validators reject, one per config section
        ("  unit: [nalu]\n  gate: [input, sideways]\n", "gate", "'sideways' is rejected"),
        ("  unit: [mlp]\n  activation: [relu, swish]\n", "activation", "'swish' is rejected"),
        ("  unit: [nau]\n  optimizer: [adam, lbfgs]\n", "optimizer", "'lbfgs' is rejected"),
        ("  unit: [nau]\n  clip: [none, always]\n", "clip", "'always' is rejected"),
        (
            "  unit: [nau]\n  range_preset: [madsen_1_2, madsen_1_3]\n",
            "range_preset",
            "'madsen_1_3' is rejected",
        ),
        (
            "  unit: [npu]\n  gate_init: {type: float, low: 0.5, high: 1.5}\n",
            "gate_init",
            "1.5 is rejected",
        ),
        ("  unit: [nau]\n  lr: {type: float, low: -0.1, high: 0.1}\n", "lr", "-0.1 is rejected"),
        ("  unit: [nau]\n  hidden_size: [0, 2]\n", "hidden_size", "0 is rejected"),
        ("  unit: [nau, lstm]\n", "unit", "'lstm' is rejected"),
        ("  unit: [nau]\n  depth: {type: int, low: 1, high: 5}\n", "depth", "5 is rejected"),
    ],
)
def test_choices_the_trainer_rejects(
    write_space: Write, text: str, param: str, needle: str
) -> None:
    _one(write_space, "tasks: [static]\nparameters:\n" + text, param, needle)


def test_regulariser_end_before_start_is_caught(write_space: Write) -> None:
    text = (
        "parameters:\n  unit: [nau]\n"
        "  regularizer_start: {type: int, low: 0, high: 20000, step: 10000}\n"
        "  regularizer_end: {type: int, low: 5000, high: 50000, step: 5000}\n"
    )
    _one(write_space, text, "regularizer_end", "regularizer_end must be >= regularizer_start")


def test_all_errors_are_reported_together(write_space: Write) -> None:
    text = (
        "parameters:\n  unit: [nau, foo]\n"
        "  lr: {type: float, low: 1, high: 0.1}\n"
        "  eps: {type: float, low: 0, high: 1, log: true}\n"
    )
    errors = _errors(write_space, text)
    assert {e.param for e in errors} == {"unit", "lr", "eps"}


def test_error_hierarchy() -> None:
    assert issubclass(SearchSpaceError, ValueError)
    assert issubclass(InvalidSearchSpaceError, SearchSpaceError)


def test_not_yaml_and_missing_file(write_space: Write, tmp_path: Path) -> None:
    path = write_space("parameters: [unclosed\n")
    with pytest.raises(SearchSpaceError, match="not valid YAML") as info:
        load_space(path)
    assert info.value.file == str(path)
    with pytest.raises(SearchSpaceError, match="cannot be read"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SearchSpaceError, match="neither a preset"):
        load_space("no-such-preset")


def test_short_forms_and_yaml_floats(write_space: Write) -> None:
    space = load_space(
        write_space(
            "parameters:\n  unit: [nau, nmu]\n"
            "  lr: {type: float, low: 1e-4, high: 1e-2, log: true}\n"
            "  batch_size: 64\n"
        )
    )
    assert space["unit"].kind == "categorical"
    assert space["batch_size"].kind == "fixed"
    assert space["lr"].to_dict()["low"] == pytest.approx(1e-4)
    assert space.name == "space"  # the file's stem
    assert space.tasks == ()


def _space(text: str) -> SearchSpace:
    return SearchSpace.from_yaml(text, file="<test>")


def test_conditional_parameters_are_ordered_after_their_parents() -> None:
    space = _space(
        "parameters:\n"
        "  epsilon: {type: float, low: 1e-8, high: 1e-4, log: true, condition: {unit: [nalu]}}\n"
        "  unit: [nau, nalu]\n"
    )
    assert space.names == ["unit", "epsilon"]
    assert set(space.to_optuna_distributions()) == {"unit"}


def test_to_run_config_point_errors() -> None:
    space = _space(
        "tasks: [static]\nparameters:\n  unit: [nau, nalu]\n"
        "  epsilon: {type: float, low: 1e-8, high: 1e-4, log: true, condition: {unit: [nalu]}}\n"
        "  lr: {type: float, low: 1e-3, high: 1e-1, log: true}\n"
    )
    ok = space.to_run_config({"unit": "nalu", "epsilon": 1e-6, "lr": 0.01}, task=STATIC)
    assert ok.model.layers[0].options == {"epsilon": 1e-6}
    # inactive parameters (Ray Tune samples them anyway) are dropped
    nau = space.to_run_config({"unit": "nau", "epsilon": None, "lr": 0.01}, task=STATIC)
    assert nau.model.layers[0].options == {}
    cases = [
        ({"unit": "nau", "lr": 0.01, "colour": 1}, "colour", "not a parameter"),
        ({"unit": "nalu", "lr": 0.01}, "epsilon", "has no value"),
        ({"unit": "nau", "lr": 2.0}, "lr", "outside"),
        ({"unit": "nmu", "lr": 0.01}, "unit", "outside"),
    ]
    for point, param, needle in cases:
        with pytest.raises(SearchSpaceError, match=needle) as info:
            space.to_run_config(point, task=STATIC)
        assert info.value.param == param
        assert info.value.file == "<test>"
    with pytest.raises(SearchSpaceError, match="set both") as info:
        space.to_run_config({"unit": "nau", "lr": 0.01}, task=STATIC, train={"lr": 0.1})
    assert info.value.param == "lr"
    with pytest.raises(SearchSpaceError, match="written for tasks"):
        space.to_run_config({"unit": "nau", "lr": 0.01}, task=TaskConfig(name="recurrent"))


def test_per_layer_units_and_options() -> None:
    space = _space(
        "tasks: [static]\nparameters:\n  unit: nau\n  output_unit: [nmu, nalu]\n"
        "  depth: {type: int, low: 2, high: 3}\n"
        "  unit_0: {value: nac_add, condition: {depth: {min: 3}}}\n"
        "  gate: {choices: [constant], condition: {output_unit: [nalu]}}\n"
        "  weight_init: {value: normal, target: 'model.layers[0].options.weight_init',"
        " condition: {depth: 3}}\n"
    )
    config = space.to_run_config(
        {"output_unit": "nalu", "depth": 3, "gate": "constant"}, task=STATIC
    )
    assert [layer.unit for layer in config.model.layers] == ["nac_add", "nau", "nalu"]
    assert config.model.layers[2].options == {"gate": "constant"}
    assert config.model.layers[0].options == {"weight_init": "normal"}
    assert space["weight_init"].target == "model.layers[0].options.weight_init"


def test_layer_beyond_depth_is_an_error(write_space: Write) -> None:
    text = "parameters:\n  unit: [nau]\n  depth: {type: int, low: 1, high: 2}\n  unit_1: [nmu]\n"
    _one(write_space, text, "unit_1", "depth is 1", "min: 2")


def test_alternatives_sharing_a_target_must_exclude_each_other(write_space: Write) -> None:
    good = (
        "parameters:\n  unit: [nau]\n  optimizer: [adam, sgd]\n"
        "  lr_adam: {type: float, low: 1e-4, high: 1e-2, log: true, target: train.lr,"
        " condition: {optimizer: adam}}\n"
        "  lr_sgd: {type: float, low: 1e-2, high: 1, log: true, target: train.lr,"
        " condition: {optimizer: sgd}}\n"
    )
    space = load_space(write_space(good))
    config = space.to_run_config({"unit": "nau", "optimizer": "sgd", "lr_sgd": 0.5}, task=STATIC)
    assert config.train.lr == 0.5
    clash = good.replace("condition: {optimizer: sgd}", "condition: {unit: nau}")
    _one(write_space, clash, "lr_sgd", "only one of them may be active")
