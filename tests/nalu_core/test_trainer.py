from __future__ import annotations

import io
import json
import math

import pytest
import torch

from nalu_core import (
    ModelConfig,
    PopulationTrainer,
    RunConfig,
    TaskConfig,
    TrainConfig,
)
from nalu_core._registry import RegularizerSchedule


def _config(unit: str = "nau", op: str = "add", *, depth: int = 1, **train: object) -> RunConfig:
    options = {
        "seeds": 4,
        "steps": 300,
        "eval_every": 100,
        "eval_samples": 2000,
        "device": "cpu",
        **train,
    }
    return RunConfig(
        task=TaskConfig(name="static", op=op, options={"input_size": 2}),
        model=ModelConfig.stacked(unit, depth=depth, hidden_size=2),
        train=TrainConfig(**options),  # type: ignore[arg-type]
    )


def _params(trainer: PopulationTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.network.named_parameters()}


def test_a_restored_run_continues_bit_identically() -> None:
    config = _config("nalu", "mul", steps=400, clip="norm", optimizer="rmsprop", lr=0.01)
    straight = PopulationTrainer(config)
    reports = list(straight.run())

    first = PopulationTrainer(config)
    it = first.run()
    head = [next(it), next(it)]  # stop after step 200
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = PopulationTrainer(config)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    tail = list(resumed.run())

    assert [r.step for r in head + tail] == [100, 200, 300, 400]
    for a, b in zip(reports, head + tail, strict=True):
        assert a.interpolation_mse == b.interpolation_mse
        assert a.extrapolation_mse == b.extrapolation_mse
    final, again = _params(straight), _params(resumed)
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert straight.result().to_dict()["seeds"] == resumed.result().to_dict()["seeds"]


def test_replicas_do_not_depend_on_the_population() -> None:
    # clipping by norm is per replica, so seed 1 trains the same alone or among others
    small = PopulationTrainer(_config("nalu", "div", seeds=1, seed=1, clip="norm", clip_value=0.1))
    big = PopulationTrainer(_config("nalu", "div", seeds=3, seed=0, clip="norm", clip_value=0.1))
    list(small.run())
    list(big.run())
    alone, among = _params(small), _params(big)
    for name in alone:
        torch.testing.assert_close(alone[name][0], among[name][1], rtol=1e-6, atol=1e-7)


def test_a_diverged_replica_is_frozen_and_isolated() -> None:
    config = _config("nalu", "div", steps=300)
    control = PopulationTrainer(config)
    list(control.run())

    trainer = PopulationTrainer(config)
    it = trainer.run()
    next(it)  # step 100
    with torch.no_grad():
        for p in trainer.network.parameters():
            p[1] = math.nan  # replica 1 blows up
    report = next(it)  # step 200
    frozen = _params(trainer)
    last = list(it)[-1]  # step 300

    assert report.diverged == [False, True, False, False]
    assert last.diverged == [False, True, False, False]
    assert int(trainer.diverged_at[1]) == 100
    assert math.isinf(last.extrapolation_mse[1])
    after, ref = _params(trainer), _params(control)
    for name, value in after.items():
        assert bool(torch.isfinite(value).all())
        assert torch.equal(value[1], frozen[name][1])  # frozen since step 100
        for p in (0, 2, 3):
            assert torch.equal(value[p], ref[name][p])
    for state in trainer.optimizer.state.values():
        assert all(bool(torch.isfinite(v).all()) for v in state.values())
    result = trainer.result()
    assert [s.diverged for s in result.seeds] == [False, True, False, False]
    assert not result.seeds[1].success


def test_nau_learns_addition_and_the_result_is_json() -> None:
    # a large step size solves 2-input addition in a few hundred steps
    trainer = PopulationTrainer(_config(seeds=4, steps=500, eval_every=250, lr=0.03))
    reports = list(trainer.run())
    result = trainer.result()
    assert result.success_rate == 1.0
    assert reports[-1].success == [True] * 4
    assert result.threshold is not None and result.threshold < 1e-6
    assert result.threshold_rule == "mistry2022"
    assert all(s.solved_at is not None and s.solved_at <= 500 for s in result.seeds)
    assert result.metrics()["threshold"] == result.threshold
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert set(data["seeds"][0]) >= {
        "seed",
        "interpolation_mse",
        "extrapolation_mse",
        "success",
        "solved_at",
        "sparsity_error",
        "diverged",
    }
    assert data["success_ci"][1] == 1.0 and data["division_probe"] is None
    assert set(trainer.result().best_replica_state()) == set(_params(trainer))


def test_a_replica_stops_when_solved_if_asked() -> None:
    trainer = PopulationTrainer(
        _config(seeds=2, steps=1000, eval_every=250, stop_when_solved=True, lr=0.03)
    )
    reports = list(trainer.run())
    solved = [r.step for r in reports if all(r.success)]
    assert solved, "NAU should solve addition within 1000 steps"
    # every replica frozen: the run ends at that evaluation instead of training on
    assert solved == [reports[-1].step] and reports[-1].step < 1000
    assert trainer.result().steps == trainer.step == solved[0]
    # and without the flag it trains to the end
    full = PopulationTrainer(_config(seeds=2, steps=1000, eval_every=250, lr=0.03))
    assert list(full.run())[-1].step == 1000


def test_division_reports_a_probe_per_denominator_decade() -> None:
    trainer = PopulationTrainer(_config("nalu", "div", steps=100))
    list(trainer.run())
    probe = trainer.result().division_probe
    assert probe is not None
    assert [b["lo"] for b in probe["bins"]] == [1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert all(len(b["relative_error"]) == 4 for b in probe["bins"])


def test_normalised_error_is_100_for_the_initial_model() -> None:
    trainer = PopulationTrainer(_config("nalu", "mul", steps=1, eval_every=1, lr=1e-12))
    report = next(trainer.run())
    errors = report.normalized_extrapolation_error
    assert sum(errors) / len(errors) == pytest.approx(100.0, rel=1e-3)


def test_stalled_replicas_are_reinitialised() -> None:
    def moved(reinit: bool) -> float:
        trainer = PopulationTrainer(
            _config(
                "mlp",
                "mul",
                depth=2,
                steps=300,
                eval_every=50,
                reinit_stalled=reinit,
                reinit_patience=1,
                lr=1e-9,
            )
        )
        start = _params(trainer)
        list(trainer.run())
        return min(
            float((v - start[k]).flatten(1).abs().amax(1).min())
            for k, v in _params(trainer).items()
        )

    # with lr ~ 0 nothing improves, so every replica is re-drawn from its init generator
    assert moved(False) < 1e-5
    assert moved(True) > 1e-3


def test_regulariser_schedule_ramps_linearly() -> None:
    schedule = RegularizerSchedule(lambda_=0.01, start=5000, end=50000)
    assert schedule.weight(0) == 0.0
    assert schedule.weight(27500) == pytest.approx(0.005)
    assert schedule.weight(10**6) == 0.01
    assert RegularizerSchedule(lambda_=1.0, start=10, end=10).weight(9) == 0.0
    assert RegularizerSchedule(lambda_=1.0, start=10, end=10).weight(10) == 1.0


@pytest.mark.gpu
def test_trains_on_cuda() -> None:
    trainer = PopulationTrainer(
        _config(seeds=8, steps=500, eval_every=250, lr=0.03, device="cuda")
    )
    reports = list(trainer.run())
    assert all(p.is_cuda for p in trainer.network_state().values())
    assert reports[-1].success_rate == 1.0
    assert trainer.result().division_probe is None


def test_request_stop_ends_a_run_at_the_next_step_and_a_new_run_continues() -> None:
    trainer = PopulationTrainer(_config(steps=100, eval_every=10, seeds=2))
    reports = trainer.run()
    assert next(reports).step == 10
    trainer.request_stop()  # as NaluTrainable does from another thread when a trial is pruned
    assert next(reports, None) is None
    assert trainer.step == 10
    trainer.request_stop()
    assert [r.step for r in trainer.run()][:2] == [20, 30]  # a stop only ends the run it hit
