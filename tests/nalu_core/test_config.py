from __future__ import annotations

import pytest

from nalu_core import ConfigError, ModelConfig, RunConfig, TrainConfig


def test_run_config_round_trips_through_dict() -> None:
    config = RunConfig(
        model=ModelConfig.stacked("nalu", depth=2, hidden_size=3, options={"epsilon": 1e-7}),
        train=TrainConfig(seeds=4, lr=0.01, clip="norm"),
    )
    assert RunConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"train": {"lrr": 1.0}}, "train.lrr"),
        ({"train": {"lr": -1.0}}, "train.lr"),
        ({"train": {"optimizer": "adamw"}}, "train.optimizer"),
        ({"train": {"regularizer_start": 10, "regularizer_end": 5}}, "train.regularizer_end"),
        ({"model": {"layers": [], "hidden_size": 2}}, "model.layers"),
        ({"bogus": {}}, "bogus"),
    ],
)
def test_bad_values_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(data)
    assert info.value.field == field
    assert field.split(".")[-1] in str(info.value)
