"""Evaluation metrics: per-replica MSE, Trask's normalised error, Madsen's success criterion,
solved-at, success rate with a Wilson interval, and the summaries the study logs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Tensor = torch.Tensor

# Samples per forward pass in evaluation: P x chunk x width stays a few million floats.
_EVAL_ELEMENTS = 1 << 22


@torch.no_grad()
def population_mse(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    t: Tensor,
    *,
    population: int,
    relative: bool = False,
) -> Tensor:
    """MSE of every replica on one shared set ``x (N, ...)``, ``t (N, out)`` -> ``(P,)``;
    with ``relative`` the mean relative error ``|y - t| / |t|`` instead.

    Chunked over samples so that P x N never materialises; a non-finite prediction gives
    an infinite error rather than NaN, so that "worse than anything" sorts correctly.
    """
    n = x.shape[0]
    width = max(x[0].numel(), t[0].numel(), 1)
    chunk = max(1, min(n, _EVAL_ELEMENTS // (population * width)))
    total = torch.zeros(population, dtype=torch.float64, device=x.device)
    for start in range(0, n, chunk):
        xc, tc = x[start : start + chunk], t[start : start + chunk]
        y = model(xc.unsqueeze(0).expand(population, *xc.shape))  # (P, n, out)
        diff = (y - tc).double()
        err = (diff.abs() / tc.double().abs() if relative else diff.pow(2)).flatten(1).sum(1)
        total += err
    mse = total / (n * t[0].numel())
    return torch.where(torch.isfinite(mse), mse, torch.full_like(mse, math.inf))


def normalized_error(mse: Tensor, baseline: float) -> Tensor:
    """Trask et al. (2018): 100 = a randomly initialised model of the same architecture."""
    if not math.isfinite(baseline) or baseline <= 0:
        return torch.full_like(mse, math.nan)
    return 100.0 * mse / baseline


def succeeded(extrapolation_mse: Tensor, threshold: float | None) -> Tensor:
    """Madsen & Johansen (2020): below the MSE of the ε-perturbed exact solution."""
    if threshold is None:
        return torch.zeros_like(extrapolation_mse, dtype=torch.bool)
    return extrapolation_mse < threshold


def wilson_interval(
    successes: int, n: int, *, z: float = 1.959963984540054
) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of ``successes`` out of ``n``."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n: {successes=} {n=}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bounds at k = 0 and k = n are exactly 0 and 1; rounding must not move them
    lower = 0.0 if successes == 0 else max(0.0, centre - half)
    upper = 1.0 if successes == n else min(1.0, centre + half)
    return (lower, upper)


def quantiles(values: Sequence[float], qs: Sequence[float] = (0.25, 0.5, 0.75)) -> list[float]:
    """Linear-interpolated quantiles that tolerate inf (a diverged replica) and empty input."""
    finite_or_inf = sorted(v for v in values if not math.isnan(v))
    if not finite_or_inf:
        return [math.nan for _ in qs]
    out = []
    for q in qs:
        pos = q * (len(finite_or_inf) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        a, b = finite_or_inf[lo], finite_or_inf[hi]
        out.append(a if pos == lo or a == b else a + (b - a) * (pos - lo))
    return out


def median(values: Sequence[float]) -> float:
    return quantiles(values, (0.5,))[0]


# Convergence: a training-loss curve has converged when its last quarter of evaluations
# made less than 5% of the improvement the whole run made (best-so-far values).
PLATEAU_WINDOW = 0.25
PLATEAU_TOLERANCE = 0.05


def late_share(values: Sequence[float], *, window: float = PLATEAU_WINDOW) -> float:
    """The share of a loss curve's total improvement made in its last ``window`` of points.

    ``values`` are the losses of successive evaluations; the curve is their running best, so
    noise does not count as progress. A curve falling steadily gives about ``window``, a
    flat tail 0, a curve that never improved 0. Fewer than four points, or no finite first
    value, give NaN (too short to judge).
    """
    if not 0 < window < 1:
        raise ValueError(f"window must be in (0, 1): {window=}")
    if len(values) < 4 or not math.isfinite(values[0]):
        return math.nan
    best, running = math.inf, []
    for v in values:
        best = min(best, v) if not math.isnan(v) else best
        running.append(best)
    cut = len(running) - max(1, math.ceil(window * len(running)))
    total = running[0] - running[-1]
    if total <= 0:
        return 0.0
    return (running[cut - 1] - running[-1]) / total


def converged(
    values: Sequence[float],
    *,
    window: float = PLATEAU_WINDOW,
    tolerance: float = PLATEAU_TOLERANCE,
) -> bool:
    """True when the loss curve ``values`` has flattened: :func:`late_share` < ``tolerance``.

    A curve too short to judge is not converged.
    """
    share = late_share(values, window=window)
    return not math.isnan(share) and share < tolerance
