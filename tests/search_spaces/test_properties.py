from __future__ import annotations

import optuna
from hypothesis import given, settings
from hypothesis import strategies as st

from nalu_core import TaskConfig
from search_spaces import InvalidSearchSpaceError, SearchSpace

STATIC = TaskConfig(name="static", op="add", options={"input_size": 2})
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None)
@given(low=finite, high=finite, log=st.booleans(), seed=st.integers(0, 2**16))
def test_float_range_is_valid_exactly_when_well_formed(
    low: float, high: float, log: bool, seed: int
) -> None:
    # gate_init_mean accepts any float, so only the range itself can be wrong
    data = {
        "tasks": ["static"],
        "parameters": {
            "unit": "nalu",
            "gate_init_mean": {"type": "float", "low": low, "high": high, "log": log},
        },
    }
    well_formed = low < high and (low > 0 or not log)
    try:
        space = SearchSpace.from_mapping(data)
    except InvalidSearchSpaceError as err:
        assert not well_formed
        assert err.param == "gate_init_mean"
        return
    assert well_formed
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(5):
        point = space.suggest(study.ask())
        assert low <= point["gate_init_mean"] <= high
        config = space.to_run_config(point, task=STATIC)
        assert config.model.layers[0].options["gate_init_mean"] == point["gate_init_mean"]


@settings(max_examples=30, deadline=None)
@given(low=st.integers(1, 50), span=st.integers(1, 50), step=st.integers(1, 7))
def test_int_grid_samples_stay_on_the_grid(low: int, span: int, step: int) -> None:
    high = low + span * step
    data = {
        "parameters": {
            "unit": "nau",
            "batch_size": {"type": "int", "low": low, "high": high, "step": step},
        }
    }
    space = SearchSpace.from_mapping(data)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=low))
    for _ in range(5):
        value = space.suggest(study.ask())["batch_size"]
        assert low <= value <= high and (value - low) % step == 0
