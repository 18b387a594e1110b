"""A range sweep (study/_sweep.py) pools separate trainers exactly, and resumes exactly."""

from __future__ import annotations

from nalu_core import (
    ModelConfig,
    PopulationTrainer,
    RunConfig,
    TaskConfig,
    TrainConfig,
    wilson_interval,
)
from study._sweep import RANGE_METRIC, RangeSweep, with_range

RANGES = ("mistry_1_2", "mistry_neg2_neg1")


def _config(**train: object) -> RunConfig:
    return RunConfig(
        task=TaskConfig(name="static", op="div", options={"input_size": 2}),
        model=ModelConfig.stacked("nmru"),
        train=TrainConfig(
            seeds=3, steps=600, eval_every=100, eval_samples=500, lr=0.01, device="cpu", **train
        ),  # type: ignore[arg-type]
    )


def test_sweep_equals_one_trainer_per_range_pooled() -> None:
    config = _config()
    sweep = RangeSweep(config, RANGES)
    reports = list(sweep.run())
    assert [r.step for r in reports] == list(range(100, 601, 100))
    result = sweep.result()
    alone = {}
    for preset in RANGES:
        trainer = PopulationTrainer(with_range(config, preset))
        for _ in trainer.run():
            pass
        alone[preset] = trainer.result()
        assert trainer.config.task.options["range_preset"] == preset
    seeds = [s for r in alone.values() for s in r.seeds]
    n = sum(s.success for s in seeds)
    assert result.success_rate == n / 6 and result.success_ci == wilson_interval(n, 6)
    assert [s.to_dict() for s in result.seeds] == [s.to_dict() for s in seeds]
    metrics = result.metrics()
    for preset in RANGES:
        assert metrics[RANGE_METRIC + preset] == alone[preset].success_rate
    last = reports[-1].metrics()
    assert set(last) >= {RANGE_METRIC + p for p in RANGES} | {"success_lower"}


def test_sweep_state_dict_continues_bit_identically() -> None:
    config = _config()
    whole = RangeSweep(config, RANGES)
    want = [r.metrics() for r in whole.run()]
    first = RangeSweep(config, RANGES)
    run = first.run()
    got = [next(run).metrics() for _ in range(3)]
    state = first.state_dict()
    second = RangeSweep(config, RANGES)
    second.load_state_dict(state)
    assert second.step == 300
    got += [r.metrics() for r in second.run()]
    assert got == want
    assert second.history == whole.history


def test_a_solved_range_stops_while_the_others_go_on() -> None:
    config = _config(stop_when_solved=True)
    sweep = RangeSweep(config, RANGES)
    for _ in sweep.run():
        pass
    steps = {r: t.step for r, t in sweep.trainers.items()}
    solved = {r: bool(t.success.all()) for r, t in sweep.trainers.items()}
    # measured: U[1,2] has its 3 seeds solved by step 500, U[-2,-1] does not by 600
    assert solved == {"mistry_1_2": True, "mistry_neg2_neg1": False}
    assert steps == {"mistry_1_2": 500, "mistry_neg2_neg1": 600}
    assert sweep.result().steps == 600
