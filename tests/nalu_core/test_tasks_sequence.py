from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nalu_core import (
    ConfigError,
    ModelConfig,
    PopulationTrainer,
    RecurrentArithmetic,
    RunConfig,
    TaskConfig,
    TrainConfig,
    build_task,
    evaluate_splits,
)
from nalu_core._tasks_sequence import summarize_splits


def _task(op: str = "add", **options: object) -> RecurrentArithmetic:
    task = build_task(TaskConfig(name="recurrent", op=op, options=options))
    assert isinstance(task, RecurrentArithmetic)
    return task


def _gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in range(n)]


@settings(max_examples=25, deadline=None)
@given(
    op=st.sampled_from(["add", "sub", "mul"]),
    input_size=st.integers(2, 12),
    length=st.integers(1, 6),
    subset_seed=st.integers(0, 50),
)
def test_targets_match_the_sequence(
    op: str, input_size: int, length: int, subset_seed: int
) -> None:
    task = _task(op, input_size=input_size, length=length, subset_seed=subset_seed)
    x, t = task.sample(_gens(2), 5, dtype=torch.float64)
    assert x.shape == (2, 5, length, input_size) and t.shape == (2, 5, 1)
    (a0, a1), (b0, b1) = task.a_slice, task.b_slice
    for p in range(2):
        for i in range(5):
            a = sum(float(x[p, i, s, j]) for s in range(length) for j in range(a0, a1))
            b = sum(float(x[p, i, s, j]) for s in range(length) for j in range(b0, b1))
            expected = {"add": a + b, "sub": a - b, "mul": a * b}[op]
            assert math.isclose(float(t[p, i, 0]), expected, rel_tol=1e-9, abs_tol=1e-9)


def test_splits_extrapolate_in_length_and_range() -> None:
    task = _task(length=4, extrapolation_length=9, interpolation="1,2", extrapolation="2,6")
    sets = task.evaluation_sets(torch.Generator().manual_seed(0), 50, dtype=torch.float32)
    x_in, t_in = sets["interpolation"]
    x_ex, t_ex = sets["extrapolation"]
    assert x_in.shape == (50, 4, 10) and x_ex.shape == (50, 9, 10)
    assert 1 <= x_in.min() and x_in.max() <= 2 and 2 <= x_ex.min() and x_ex.max() <= 6
    torch.testing.assert_close(t_ex, task.target(x_ex))
    # the default extrapolation keeps the training range: Trask's length-only setting
    default = _task().evaluation_sets(torch.Generator().manual_seed(0), 20, dtype=torch.float32)
    assert default["extrapolation"][0].max() <= 2


def test_replica_data_depends_only_on_its_generator() -> None:
    task = _task()
    x2, _ = task.sample(_gens(2), 3, dtype=torch.float32)
    x4, _ = task.sample(_gens(4), 3, dtype=torch.float32)
    torch.testing.assert_close(x2, x4[:2])


def test_threshold_is_small_and_positive() -> None:
    threshold = _task(length=3, extrapolation_length=5).threshold()
    assert 0 < threshold < 1e-3


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"length": 0}, "task.options.length"),
        ({"extrapolation_length": "long"}, "task.options.extrapolation_length"),
        ({"subset_ratio": 0.9}, "task.options.subset_ratio"),
        ({"extrapolation": "6,2"}, "task.options.extrapolation"),
        ({"bogus": 1}, "task.options.bogus"),
    ],
)
def test_bad_options_name_the_field(options: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as err:
        _task(**options)
    assert err.value.field == field


def test_trainer_runs_the_recurrent_baselines_and_accumulators() -> None:
    for model in (
        ModelConfig.stacked("lstm", hidden_size=4),
        ModelConfig.stacked("rnn", hidden_size=4),
        ModelConfig.stacked("nac_add", depth=2, hidden_size=2),
    ):
        config = RunConfig(
            task=TaskConfig(name="recurrent", options={"length": 3, "extrapolation_length": 6}),
            model=model,
            train=TrainConfig(seeds=2, steps=4, eval_every=2, batch_size=8, eval_samples=32),
        )
        trainer = PopulationTrainer(config)
        reports = list(trainer.run())
        assert [r.step for r in reports] == [2, 4]
        result = trainer.result()
        assert len(result.seeds) == 2 and result.threshold is not None


def test_evaluate_splits_reports_error_and_normalised_error() -> None:
    task = _task(length=3, extrapolation_length=6)
    model = ModelConfig.stacked("gru", hidden_size=4)
    network = task.build_model(model, population=2)
    baseline = task.build_model(model, population=2)
    sets = task.evaluation_sets(torch.Generator().manual_seed(1), 40, dtype=torch.float32)
    report = evaluate_splits(task, network, sets, population=2, baseline=baseline)
    assert set(report) == {"interpolation", "extrapolation"}
    for metrics in report.values():
        assert set(metrics) == {"mse", "mae", "normalized_error"}
        assert all(len(v) == 2 for v in metrics.values())
    # the baseline against itself is 100 by definition
    same = evaluate_splits(task, network, sets, population=2, baseline=network)
    assert same["extrapolation"]["normalized_error"] == pytest.approx([100.0, 100.0])


def test_to_config_round_trips() -> None:
    task = _task("sub", length=4, extrapolation_length=8, extrapolation="2,6")
    assert build_task(task.to_config()) == task


# --- the per-trial summary of the sequence metrics -----------------------------------------


def test_summarize_splits_reference_values() -> None:
    report = {
        "interpolation": {
            "mse": [1.0, 2.0, 3.0],
            "mae": [0.5, 0.1, 0.9],
            "accuracy": [0.2, 0.9, 0.4],
        },
        "extrapolation_1000": {"mse": [10.0, 30.0, 20.0], "mae": [3.0, 5.0, 4.0]},
    }
    out = summarize_splits(report, diverged=[False, False, False])
    assert out == {
        "interpolation_mae_median": 0.5,
        "interpolation_mae_best": 0.1,
        "interpolation_accuracy_median": 0.4,
        "interpolation_accuracy_best": 0.9,
        # the trainer already summarises interpolation's MSE; the 1000-digit split's is new
        "extrapolation_1000_mse_median": 20.0,
        "extrapolation_1000_mae_median": 4.0,
        "extrapolation_1000_mae_best": 3.0,
    }


def test_summarize_splits_counts_a_diverged_replica_as_the_worst() -> None:
    report = {
        "extrapolation": {"mae": [0.1, 0.2, math.nan, 0.3], "accuracy": [1.0, 0.5, 0.2, 0.1]}
    }
    out = summarize_splits(report, diverged=[True, False, False, False])
    # replica 0 is diverged (its good-looking figures do not count), replica 2 is NaN
    assert out["extrapolation_mae_best"] == 0.2
    assert out["extrapolation_mae_median"] == math.inf  # median of [inf, 0.2, inf, 0.3]
    assert out["extrapolation_accuracy_best"] == 0.5
    assert out["extrapolation_accuracy_median"] == pytest.approx(0.15)  # of [0, .5, .2, .1]


def test_trainer_logs_the_sequence_metrics_and_the_convergence_verdict() -> None:
    config = RunConfig(
        task=TaskConfig(name="recurrent", op="add", options={"input_size": 4, "length": 3}),
        model=ModelConfig.stacked("nac_add", depth=2),
        train=TrainConfig(seeds=2, steps=40, eval_every=10, eval_samples=64, device="cpu"),
    )
    trainer = PopulationTrainer(config)
    for _ in trainer.run():
        pass
    result = trainer.result()
    metrics = result.metrics()
    # recurrent arithmetic reports MAE at each length, at each replica's best step
    current = trainer._swap_in_best()
    report = evaluate_splits(trainer.task, trainer.network, trainer.eval_sets, population=2)  # type: ignore[arg-type]
    trainer._swap_back(current)
    for split in ("interpolation", "extrapolation"):
        assert metrics[f"{split}_mae_median"] == pytest.approx(
            statistics.median(report[split]["mae"])
        )
        assert metrics[f"{split}_mae_best"] == pytest.approx(min(report[split]["mae"]))
    # no training split: no convergence verdict for this task
    assert "converged" not in metrics
    assert result.to_dict()["metrics"]["interpolation_mae_median"] == pytest.approx(
        metrics["interpolation_mae_median"]
    )
