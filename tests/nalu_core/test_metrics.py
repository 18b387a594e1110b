from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nalu_core import normalized_error, population_mse, wilson_interval
from nalu_core._metrics import (
    PLATEAU_TOLERANCE,
    converged,
    late_share,
    quantiles,
    succeeded,
)

Z2 = 1.959963984540054**2


@pytest.mark.parametrize(
    ("successes", "n", "lower", "upper"),
    [
        (0, 32, 0.0, Z2 / (32 + Z2)),  # closed forms at k = 0 and k = n
        (32, 32, 32 / (32 + Z2), 1.0),
        (16, 32, 0.33631, 0.66369),  # 0.5 -+ z sqrt(1/128 + z^2/4096) / (1 + z^2/32)
    ],
)
def test_wilson_interval_matches_known_values(
    successes: int, n: int, lower: float, upper: float
) -> None:
    lo, hi = wilson_interval(successes, n)
    assert lo == pytest.approx(lower, abs=2e-5)
    assert hi == pytest.approx(upper, abs=2e-5)


@given(n=st.integers(1, 5000), data=st.data())
def test_wilson_interval_brackets_the_rate(n: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n))
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson_interval(n - k, n) == pytest.approx((1 - hi, 1 - lo), abs=1e-12)


def test_wilson_interval_rejects_impossible_counts() -> None:
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_population_mse_is_per_replica_and_chunk_independent() -> None:
    torch.manual_seed(0)
    x = torch.randn(1000, 3, dtype=torch.float64)
    t = x.sum(-1, keepdim=True)
    w = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.5, 1.0]], dtype=torch.float64)  # (P, in)

    def model(xp: torch.Tensor) -> torch.Tensor:  # (P, B, in) -> (P, B, 1)
        return (xp * w[:, None, :]).sum(-1, keepdim=True)

    mse = population_mse(model, x, t, population=2)
    assert float(mse[0]) == 0.0
    expected = ((0.5 * x[:, 1]) ** 2).mean()
    assert float(mse[1]) == pytest.approx(float(expected), rel=1e-12)
    rel = population_mse(model, x, t, population=2, relative=True)
    assert float(rel[1]) == pytest.approx(float((0.5 * x[:, 1].abs() / t[:, 0].abs()).mean()))


def test_non_finite_predictions_count_as_infinitely_bad() -> None:
    x = torch.ones(10, 1)

    def model(xp: torch.Tensor) -> torch.Tensor:
        return torch.stack([xp[0], xp[1] * math.nan])

    mse = population_mse(model, x, x, population=2)
    assert mse.tolist() == [0.0, math.inf]
    assert succeeded(mse, 1e-3).tolist() == [True, False]
    assert succeeded(mse, None).tolist() == [False, False]


def test_normalized_error_is_100_at_the_baseline() -> None:
    assert normalized_error(torch.tensor([2.0, 0.0]), 2.0).tolist() == [100.0, 0.0]
    assert math.isnan(float(normalized_error(torch.tensor([1.0]), 0.0)[0]))


def test_quantiles_tolerate_inf_and_nan() -> None:
    assert quantiles([1.0, 2.0, 3.0]) == [1.5, 2.0, 2.5]
    assert quantiles([1.0, math.inf, math.inf])[1] == math.inf
    assert quantiles([1.0, math.nan, 3.0])[1] == 2.0
    assert all(math.isnan(q) for q in quantiles([]))


# --- convergence of a training-loss curve ----------------------------------------------------


@pytest.mark.parametrize(
    ("curve", "share"),
    [
        # a steady fall: the last 2 of 6 points (from index 3 on) made 4 of the 10 units
        ([10.0, 8.0, 6.0, 4.0, 2.0, 0.0], 0.4),
        # a fall, then flat: the last quarter made nothing
        ([10.0, 5.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0], 0.0),
        # noise above the best so far is not progress; 8 points: the last 2 are the window
        ([10.0, 4.0, 6.0, 5.0, 4.5, 4.2, 4.0, 3.0], (4.0 - 3.0) / (10.0 - 3.0)),
        # never improved (stuck at the initial constant): flat, so converged
        ([5.0, 5.0, 5.0, 5.0], 0.0),
        ([5.0, 6.0, 7.0, 8.0], 0.0),
        # a diverged tail (inf) is not progress either
        ([4.0, 2.0, 1.0, math.inf], 0.0),
    ],
)
def test_late_share_reference_values(curve: list[float], share: float) -> None:
    assert late_share(curve) == pytest.approx(share)
    assert converged(curve) == (share < PLATEAU_TOLERANCE)


@pytest.mark.parametrize("curve", [[], [1.0], [3.0, 2.0, 1.0], [math.nan, 1.0, 1.0, 1.0]])
def test_a_curve_too_short_to_judge_is_not_converged(curve: list[float]) -> None:
    assert math.isnan(late_share(curve))
    assert not converged(curve)


def test_late_share_window_is_checked() -> None:
    with pytest.raises(ValueError, match="window"):
        late_share([1.0] * 8, window=1.0)
