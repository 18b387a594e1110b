from __future__ import annotations

from collections.abc import Iterator

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from nalu_core import (
    UNITS,
    ConfigError,
    LayerConfig,
    ModelConfig,
    OptionSpec,
    PopulationModule,
    RegularizerSchedule,
    register_unit,
    validate_model_config,
)
from nalu_core._units import NAU


@pytest.fixture(autouse=True)
def _seeded_global_rng() -> None:
    # unseeded draws (inputs, default inits) would make a failure unreproducible
    torch.manual_seed(0)


ISSUE_UNITS = {
    "nac_add",
    "nac_mul",
    "nalu",
    "nau",
    "nmu",
    "inalu",
    "npu",
    "realnpu",
    "nmru",
    "linear",
    "mlp",
}
MLP_ACTIVATIONS = {
    "none",
    "relu",
    "relu6",
    "tanh",
    "sigmoid",
    "softsign",
    "selu",
    "elu",
    "leaky_relu",
    "crelu",
}


@pytest.fixture
def scratch_unit() -> Iterator[str]:
    name = "test_scratch_unit"
    yield name
    UNITS.pop(name, None)


def test_registry_lists_every_unit_of_the_issue() -> None:
    assert ISSUE_UNITS <= set(UNITS)
    assert all(UNITS[name].kind == "layer" for name in ISSUE_UNITS)
    assert set(UNITS["mlp"].options["activation"].choices or ()) == MLP_ACTIVATIONS


@pytest.mark.parametrize("name", sorted(ISSUE_UNITS))
def test_every_unit_builds_from_its_defaults(name: str) -> None:
    spec = UNITS[name]
    assert spec.doc and spec.name == name
    unit = spec.build(3, 2, population=2, **spec.defaults())
    assert isinstance(unit, PopulationModule)


def test_published_regularizer_schedules() -> None:
    assert UNITS["nau"].regularizer == RegularizerSchedule(lambda_=0.01, start=5_000, end=50_000)
    assert UNITS["nmu"].regularizer == RegularizerSchedule(
        lambda_=10.0, start=1_000_000, end=2_000_000
    )
    schedule = UNITS["nau"].regularizer
    assert schedule is not None
    assert [schedule.weight(t) for t in (0, 5_000, 27_500, 50_000, 10**6)] == pytest.approx(
        [0.0, 0.0, 0.005, 0.01, 0.01]
    )


@pytest.mark.parametrize(
    ("unit", "options", "field", "hint"),
    [
        ("nalu", {"gate": "sometimes"}, "options.gate", "['input', 'constant']"),
        ("nalu", {"epsilon": -1.0}, "options.epsilon", "[0.0, inf)"),
        ("nalu", {"shared_weights": "yes"}, "options.shared_weights", "a bool"),
        ("nalu", {"gate_init_std": None, "bogus": 1}, "options.bogus", "gate_init_std"),
        ("mlp", {"activation": "swish"}, "options.activation", "crelu"),
        ("nau", {"clamp": 1}, "options.clamp", "a bool"),
        ("npu", {"gate_init": 1.5}, "options.gate_init", "[0.0, 1.0]"),
        ("inalu", {"epsilon": 0.0}, "options.epsilon", "(0.0, inf)"),
        ("nmu", {"epsilon": 1e-7}, "options.epsilon", "clamp"),
    ],
)
def test_bad_options_name_the_field_and_the_allowed_values(
    unit: str, options: dict[str, object], field: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        UNITS[unit].validate_options(options)
    assert info.value.field == field
    assert field in str(info.value) and hint in str(info.value)


def test_options_coerce_ints_to_floats_but_not_bools() -> None:
    assert UNITS["nalu"].validate_options({"epsilon": 0})["epsilon"] == 0.0
    assert isinstance(UNITS["nalu"].validate_options({"epsilon": 0})["epsilon"], float)
    with pytest.raises(ConfigError):
        UNITS["nalu"].validate_options({"epsilon": True})


def test_validate_model_config_names_the_layer_field() -> None:
    model = ModelConfig(
        layers=(LayerConfig(unit="nau"), LayerConfig(unit="nalu", options={"gate": "x"}))
    )
    with pytest.raises(ConfigError) as info:
        validate_model_config(model)
    assert info.value.field == "model.layers[1].options.gate"
    assert "model.layers[1].options.gate" in str(info.value) and "'constant'" in str(info.value)

    with pytest.raises(ConfigError) as info:
        validate_model_config(ModelConfig.stacked("nacc", depth=2))
    assert info.value.field == "model.layers[0].unit"
    assert "nac_add" in str(info.value)


def test_validate_model_config_fills_defaults_without_building() -> None:
    resolved = validate_model_config(
        ModelConfig.stacked("nalu", depth=2, options={"epsilon": 1e-5})
    )
    assert resolved[0] == {**UNITS["nalu"].defaults(), "epsilon": 1e-5}
    assert len(resolved) == 2


def test_register_unit_supports_recurrent_kind_and_refuses_duplicates(scratch_unit: str) -> None:
    spec = register_unit(scratch_unit, NAU, kind="recurrent", doc="scratch")
    assert UNITS[scratch_unit] is spec and spec.kind == "recurrent"
    with pytest.raises(ValueError, match="already registered"):
        register_unit(scratch_unit, NAU)
    register_unit(scratch_unit, NAU, replace=True)
    assert UNITS[scratch_unit].kind == "layer"
    with pytest.raises(ConfigError) as info:
        register_unit(scratch_unit, NAU, kind="cell", replace=True)  # type: ignore[arg-type]
    assert info.value.field == "kind"


def test_recurrent_cells_are_registered_as_recurrent() -> None:
    recurrent = {name for name, spec in UNITS.items() if spec.kind == "recurrent"}
    assert {"lstm", "gru", "rnn"} <= recurrent


def test_option_spec_rejects_a_bad_default() -> None:
    with pytest.raises(ConfigError):
        OptionSpec(type=float, default=2.0, high=1.0)


@settings(max_examples=60, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_float_option_accepts_exactly_its_range(value: float) -> None:
    spec = OptionSpec(type=float, default=0.5, low=0.0, high=1.0, high_open=True)
    inside = value == value and 0.0 <= value < 1.0
    if inside:
        assert spec.validate(value, field="x") == value
    else:
        with pytest.raises(ConfigError, match="x must"):
            spec.validate(value, field="x")


@settings(max_examples=30, deadline=None)
@given(
    name=st.sampled_from(sorted(ISSUE_UNITS)),
    data=st.data(),
)
def test_any_valid_option_set_builds(name: str, data: st.DataObject) -> None:
    spec = UNITS[name]
    options = {}
    for key, option in spec.options.items():
        if option.choices is not None:
            options[key] = data.draw(st.sampled_from(option.choices))
        elif option.type is bool:
            options[key] = data.draw(st.booleans())
    unit = spec.build(2, 2, population=2, dtype=torch.float64, **options)
    assert unit(torch.rand(2, 3, 2, dtype=torch.float64) + 0.5).shape == (2, 3, 2)
