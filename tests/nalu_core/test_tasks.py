from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nalu_core import RANGE_PRESETS, ConfigError, StaticArithmetic, TaskConfig, build_task
from nalu_core._tasks import DIVISION_PROBE_BINS, _static_threshold, parse_ranges

OPS = ["add", "sub", "mul", "div", "square", "sqrt"]


def _reference(op: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return {
        "add": lambda: a + b,
        "sub": lambda: a - b,
        "mul": lambda: a * b,
        "div": lambda: a / b,
        "square": lambda: a**2,
        "sqrt": lambda: a**0.5,
    }[op]()


@st.composite
def ranges(draw: st.DrawFn, *, non_negative: bool) -> list[list[float]]:
    lo_min = 0.0 if non_negative else -50.0
    cuts = sorted(
        draw(
            st.lists(st.floats(lo_min, 50.0, allow_nan=False), min_size=2, max_size=4, unique=True)
        )
    )
    cuts = cuts[: len(cuts) // 2 * 2]
    pairs = [[cuts[i], cuts[i + 1]] for i in range(0, len(cuts), 2)]
    return [p for p in pairs if p[1] - p[0] > 1e-3] or [[1.0, 2.0]]


def _inside(x: torch.Tensor, intervals: tuple[tuple[float, float], ...]) -> torch.Tensor:
    ok = torch.zeros_like(x, dtype=torch.bool)
    for lo, hi in intervals:
        ok |= (x >= lo - 1e-4 * max(1.0, abs(lo))) & (x <= hi + 1e-4 * max(1.0, abs(hi)))
    return ok


@settings(max_examples=40, deadline=None)
@given(
    op=st.sampled_from(OPS),
    input_size=st.sampled_from([2, 5, 20, 100]),
    data=st.data(),
    subset_seed=st.integers(0, 1000),
    seeds=st.lists(st.integers(0, 2**31), min_size=1, max_size=3),
)
def test_batches_hold_the_op_of_the_sampled_inputs_and_stay_in_range(
    op: str, input_size: int, data: st.DataObject, subset_seed: int, seeds: list[int]
) -> None:
    interpolation = data.draw(ranges(non_negative=op == "sqrt"))
    task = build_task(
        TaskConfig(
            name="static",
            op=op,
            options={
                "input_size": input_size,
                "interpolation": interpolation,
                "subset_seed": subset_seed,
            },
        )
    )
    assert isinstance(task, StaticArithmetic)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    x, t = task.sample(gens, 64, dtype=torch.float64)
    assert x.shape == (len(seeds), 64, input_size) and t.shape == (len(seeds), 64, 1)
    assert bool(_inside(x, task.interpolation).all())
    a0, a1 = task.a_slice
    b0, b1 = task.b_slice
    assert 0 <= a0 < a1 <= input_size and 0 <= b0 < b1 <= input_size
    a = x[..., a0:a1].sum(-1, keepdim=True)
    b = x[..., b0:b1].sum(-1, keepdim=True)
    torch.testing.assert_close(t, _reference(op, a, b), rtol=1e-9, atol=1e-12, equal_nan=True)


def test_subsets_follow_madsen_defaults() -> None:
    task = StaticArithmetic(op="add")  # 100 inputs, subset 0.25, overlap 0.5
    assert task.a_slice[1] - task.a_slice[0] == 25
    assert task.b_slice[1] - task.b_slice[0] == 25
    assert task.a_slice[1] - task.b_slice[0] == 12  # floor(0.5 * 25) shared inputs
    single = StaticArithmetic(op="add", input_size=2)
    assert (single.a_slice, single.b_slice) == ((0, 1), (1, 2))
    other = StaticArithmetic(op="add", subset_seed=7)
    assert other.a_slice != task.a_slice  # the offset is seeded


def test_replica_batches_do_not_depend_on_the_population() -> None:
    task = StaticArithmetic(op="mul", input_size=10)
    alone, _ = task.sample([torch.Generator().manual_seed(5)], 32, dtype=torch.float32)
    gens = [torch.Generator().manual_seed(s) for s in (3, 5, 9)]
    together, _ = task.sample(gens, 32, dtype=torch.float32)
    assert torch.equal(alone[0], together[1])
    assert not torch.equal(together[0], together[1])


def test_union_ranges_never_sample_the_gap() -> None:
    task = build_task(
        TaskConfig(op="add", options={"input_size": 2, "range_preset": "madsen_neg2_2"})
    )
    sets = task.evaluation_sets(torch.Generator().manual_seed(0), 20_000, dtype=torch.float32)
    x, _ = sets["extrapolation"]
    assert bool(((x.abs() >= 2) & (x.abs() <= 6)).all())
    assert 0.45 < float((x > 0).float().mean()) < 0.55  # both intervals, by length
    xi, _ = sets["interpolation"]
    assert float(xi.min()) < -1.9 and float(xi.max()) > 1.9


def test_evaluation_sets_are_fixed_by_their_seed() -> None:
    task = StaticArithmetic(op="div", input_size=2)
    one = task.evaluation_sets(torch.Generator().manual_seed(3), 100, dtype=torch.float32)
    two = task.evaluation_sets(torch.Generator().manual_seed(3), 100, dtype=torch.float32)
    assert all(torch.equal(one[k][0], two[k][0]) for k in one)
    assert bool((one["extrapolation"][0] >= 2).all())


def test_threshold_is_deterministic_and_matches_the_closed_form() -> None:
    task = StaticArithmetic(op="add", input_size=2)
    first = task.threshold()
    _static_threshold.cache_clear()
    again = StaticArithmetic(op="add", input_size=2).threshold()
    assert first == again
    # t - 0.99999 (a + b) = 1e-5 (a + b), a, b ~ U[2, 6]: E[(a + b)^2] = 64 + 2 * 16 / 12
    assert first == pytest.approx(1e-10 * (64 + 32 / 12), rel=5e-3)


@pytest.mark.parametrize("op", OPS)
def test_thresholds_are_positive_and_tiny(op: str) -> None:
    value = StaticArithmetic(op=op, input_size=2).threshold()
    assert 0 < value < 1e-5


def test_division_probe_is_stratified_by_the_denominator() -> None:
    task = StaticArithmetic(op="div", input_size=10)
    bins = task.division_probe_sets(torch.Generator().manual_seed(0), 500, dtype=torch.float64)
    assert [(b.lo, b.hi) for b in bins] == list(DIVISION_PROBE_BINS)
    for b in bins:
        denominator = b.x[:, task.b_slice[0] : task.b_slice[1]].sum(-1)
        assert bool((denominator.abs() >= b.lo * 0.999).all())
        assert bool((denominator.abs() <= b.hi * 1.001).all())
        numerator = b.x[:, task.a_slice[0] : task.a_slice[1]].sum(-1)
        torch.testing.assert_close(b.t.squeeze(-1), numerator / denominator)
    assert (
        StaticArithmetic(op="mul").division_probe_sets(torch.Generator(), 10, dtype=torch.float32)
        == []
    )


def test_presets_cover_madsen_and_mistry() -> None:
    assert sum(name.startswith("madsen_") for name in RANGE_PRESETS) == 7
    assert sum(name.startswith("mistry_") for name in RANGE_PRESETS) == 9
    task = StaticArithmetic(op="sub", range_preset="mistry_neg20_neg10")
    assert task.interpolation == ((-20.0, -10.0),)
    assert task.extrapolation == ((-40.0, -20.0),)


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (TaskConfig(name="nope"), "task.name"),
        (TaskConfig(op="pow"), "task.op"),
        (TaskConfig(options={"bogus": 1}), "task.options.bogus"),
        (TaskConfig(options={"input_size": 1}), "task.options.input_size"),
        (TaskConfig(options={"interpolation": "2,1"}), "task.options.interpolation"),
        (TaskConfig(options={"extrapolation": "a,b"}), "task.options.extrapolation"),
        (TaskConfig(options={"range_preset": "nope"}), "task.options.range_preset"),
        (
            TaskConfig(options={"range_preset": "madsen_1_2", "interpolation": "1,2"}),
            "task.options.range_preset",
        ),
        (TaskConfig(options={"subset_ratio": 0.9}), "task.options.subset_ratio"),
        (TaskConfig(op="sqrt", options={"interpolation": "-1,1"}), "task.options.interpolation"),
    ],
)
def test_bad_task_configs_name_the_field(config: TaskConfig, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_task(config)
    assert info.value.field == field


def test_parse_ranges_accepts_the_documented_forms() -> None:
    union = ((-6.0, -2.0), (2.0, 6.0))
    assert parse_ranges("-6,-2;2,6", field="f") == union
    assert parse_ranges("[-6,-2]u[2,6]", field="f") == union
    assert parse_ranges([[2, 6], [-6, -2]], field="f") == union
    assert parse_ranges([1, 2], field="f") == ((1.0, 2.0),)
    with pytest.raises(ConfigError):
        parse_ranges("0,3;2,6", field="f")  # overlapping
    assert math.isfinite(parse_ranges("1e-3,2", field="f")[0][0])
