from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nalu_core import RANGE_PRESETS, ConfigError, StaticArithmetic, TaskConfig, build_task
from nalu_core._tasks import (
    DIVISION_PROBE_BINS,
    _static_threshold,
    counter_uniform,
    parse_ranges,
)

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
    # Mistry's + drifts by ε (|a| + |b|), ε = 1e-4, a, b ~ U[2, 6]: E[(a + b)^2] = 64 + 32 / 12
    assert task.threshold_rule == "mistry2022"
    assert first == pytest.approx(1e-8 * (64 + 32 / 12), rel=5e-3)


@pytest.mark.parametrize("op", OPS)
def test_thresholds_are_positive_and_tiny(op: str) -> None:
    value = StaticArithmetic(op=op, input_size=2).threshold()
    assert 0 < value < 1e-4


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


# --- counter-based streams -----------------------------------------------------------------


def _lowbias32(z: int) -> int:
    z ^= z >> 16
    z = (z * 0x7FEB352D) & 0xFFFFFFFF
    z ^= z >> 15
    z = (z * 0x846CA68B) & 0xFFFFFFFF
    return z ^ (z >> 16)


def _splitmix64(z: int) -> int:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & (2**64 - 1)
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & (2**64 - 1)
    return z ^ (z >> 31)


def test_counter_uniform_matches_its_unsigned_reference() -> None:
    # the torch version wraps int32/int64 multiplies and masks arithmetic shifts: pin it
    # against plain unsigned arithmetic
    seeds = torch.tensor([0, 7, 2**40 + 3], dtype=torch.int64)
    step = 123_456
    u = counter_uniform(seeds, step, 50, dtype=torch.float64)
    for p, seed in enumerate(seeds.tolist()):
        key = _splitmix64((seed * 0x9E3779B97F4A7C15 + (step + 1) * 0xD1B54A32D192ED03) % 2**64)
        low, high = key & 0xFFFFFFFF, key >> 32
        for j in range(50):
            z = _lowbias32(((_lowbias32(j) ^ low) + high) & 0xFFFFFFFF)
            assert u[p, j].item() == (z & 0xFFFFFF) * 2.0**-24


def test_counter_uniform_is_uniform_and_uncorrelated() -> None:
    n = 1_000_000
    seeds = torch.arange(1_000, dtype=torch.int64) + 5
    u = counter_uniform(seeds, 17, n // 1_000, dtype=torch.float64)  # (1000, 1000)
    flat = u.flatten()
    se = 1 / math.sqrt(n)
    assert abs(float(flat.mean()) - 0.5) < 5 * math.sqrt(1 / 12) * se
    assert abs(float(flat.var()) - 1 / 12) < 5 * math.sqrt(1 / 180) * se
    # Kolmogorov-Smirnov against U[0, 1): 1.95 / sqrt(n) is the 0.1% critical value
    ordered = flat.sort().values
    grid = torch.arange(1, n + 1, dtype=torch.float64) / n
    ks = float(torch.maximum(grid - ordered, ordered - (grid - 1 / n)).max())
    assert ks < 1.95 * se
    assert 0 <= float(flat.min()) and float(flat.max()) < 1

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    limit = 5 / math.sqrt(u[:, 1:].numel())
    assert abs(corr(u[:, 1:], u[:, :-1])) < limit  # neighbouring elements
    assert abs(corr(u[1:], u[:-1])) < limit  # neighbouring replicas (seeds)
    later = counter_uniform(seeds, 18, n // 1_000, dtype=torch.float64)
    assert abs(corr(u, later)) < 5 * se  # consecutive steps


def test_counter_rows_depend_only_on_their_seed_and_step() -> None:
    seeds = torch.tensor([11, 12, 13, 14], dtype=torch.int64)
    together = counter_uniform(seeds, 3, 300_001, dtype=torch.float32)  # spans chunks
    alone = counter_uniform(seeds[2:3], 3, 300_001, dtype=torch.float32)
    assert torch.equal(together[2], alone[0])
    assert not torch.equal(
        together[2], counter_uniform(seeds[2:3], 4, 300_001, dtype=torch.float32)[0]
    )


@pytest.mark.parametrize("preset", ["madsen_1_2", "madsen_neg2_2"])
def test_counter_batches_are_in_range_hold_the_op_and_ignore_the_population(
    preset: str,
) -> None:
    task = build_task(TaskConfig(op="mul", options={"input_size": 10, "range_preset": preset}))
    assert task.counter_sampling
    seeds = torch.tensor([3, 5, 9], dtype=torch.int64)
    x, t = task.sample_at(seeds, 8, 64, dtype=torch.float64)
    assert x.shape == (3, 64, 10) and t.shape == (3, 64, 1)
    assert bool(_inside(x, task.interpolation).all())
    a = x[..., task.a_slice[0] : task.a_slice[1]].sum(-1, keepdim=True)
    b = x[..., task.b_slice[0] : task.b_slice[1]].sum(-1, keepdim=True)
    torch.testing.assert_close(t, a * b)
    alone, _ = task.sample_at(seeds[1:2], 8, 64, dtype=torch.float64)
    assert torch.equal(alone[0], x[1])
    buffer = torch.full_like(x, math.nan)
    again, t_again = task.sample_at(seeds, 8, 64, dtype=torch.float64, out=buffer)
    assert again.data_ptr() == buffer.data_ptr()
    assert torch.equal(again, x) and torch.equal(t_again, t)
