"""Evaluation metrics: per-replica MSE, Trask's normalised error, Madsen's success criterion,
solved-at, success rate with a Wilson interval (plain, and widened for replicas that shared
their data streams), and the summaries the study logs."""

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
    per_replica_targets: bool = False,
    shifts: Sequence[int] | None = None,
) -> Tensor:
    """MSE of every replica on one shared set ``x (N, ...)``, ``t (N, out)`` -> ``(P,)``;
    with ``relative`` the mean relative error ``|y - t| / |t|`` instead.

    ``per_replica_targets``: ``t`` is ``(P, N, out)``, replica p's own targets of the shared
    ``x``. ``shifts``: replica p reads ``x (N, in)`` rolled by ``shifts[p]`` inputs (its
    subsets sit that far from the set's), gathered one chunk at a time.
    Chunked over samples so that P x N never materialises; a non-finite prediction gives
    an infinite error rather than NaN, so that "worse than anything" sorts correctly. A
    model with ``accepts_groups`` gets the set once, as one group ``(1, n, ...)``: its first
    layer then runs one GEMM for all replicas and takes the input's log once.
    """
    n = x.shape[0]
    grouped = bool(getattr(model, "accepts_groups", False))
    out = (t[0, 0] if per_replica_targets else t[0]).numel()
    width = max(x[0].numel(), out, 1)
    chunk = max(1, min(n, _EVAL_ELEMENTS // (population * width)))
    total = torch.zeros(population, dtype=torch.float64, device=x.device)
    index = None
    if shifts is not None:
        size = x.shape[-1]
        rolled = (
            torch.arange(size, device=x.device) - torch.tensor(shifts, device=x.device)[:, None]
        )
        index = rolled % size  # (P, in): replica p's input i is x[..., i - shift_p]
    for start in range(0, n, chunk):
        xc = x[start : start + chunk]
        if index is not None:
            xs = xc[:, index].transpose(0, 1)  # (P, n, in)
        elif grouped:
            xs = xc.unsqueeze(0)  # (1, n, in): one group, every replica
        else:
            xs = xc.unsqueeze(0).expand(population, *xc.shape)
        tc = t[:, start : start + chunk] if per_replica_targets else t[start : start + chunk]
        y = model(xs)  # (P, n, out)
        diff = (y - tc).double()
        err = (diff.abs() / tc.double().abs() if relative else diff.pow(2)).flatten(1).sum(1)
        total += err
    mse = total / (n * out)
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


_Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, *, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of ``successes`` out of ``n``."""
    if n <= 0:
        return (0.0, 1.0)
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n: {successes=} {n=}")
    return _wilson(successes / n, float(n), z=z, at_zero=successes == 0, at_n=successes == n)


def _wilson(p: float, n: float, *, z: float, at_zero: bool, at_n: bool) -> tuple[float, float]:
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the bounds at k = 0 and k = n are exactly 0 and 1; rounding must not move them
    lower = 0.0 if at_zero else max(0.0, centre - half)
    upper = 1.0 if at_n else min(1.0, centre + half)
    return (lower, upper)


def intra_group_correlation(success: Sequence[bool], groups: int) -> float:
    """ANOVA estimate of the intra-class correlation of a 0/1 outcome over ``groups`` equal,
    consecutive groups (replicas ``g·m .. g·m + m − 1`` form group g); NaN where it is
    undefined: one replica per group, fewer than two groups, or no variation at all."""
    n = len(success)
    if groups < 2 or n % groups or n // groups < 2:
        return math.nan
    m = n // groups
    rates = [sum(success[g * m : (g + 1) * m]) / m for g in range(groups)]
    mean = sum(rates) / groups
    between = m * sum((r - mean) ** 2 for r in rates) / (groups - 1)
    within = m * sum(r * (1 - r) for r in rates) / (groups * (m - 1))
    denom = between + (m - 1) * within
    return (between - within) / denom if denom > 0 else math.nan


def clustered_wilson_interval(
    success: Sequence[bool], groups: int, *, z: float = _Z95
) -> tuple[tuple[float, float], float, float]:
    """A Wilson interval widened by the design effect of ``groups`` clusters of replicas that
    shared their training data: ``(interval, intra-group correlation ρ, design effect)``.

    deff = 1 + (m − 1)·max(ρ, 0) for groups of m replicas; the interval is Wilson's at the
    effective sample size n / deff (Kish). A negative ρ̂ is read as 0 (never narrower than
    the plain interval). Where ρ cannot be estimated but replicas do share data (a single
    group, or no variation in the outcome), ρ = 1 is assumed: n_eff = the number of groups.
    One replica per group (independent seeds) gives exactly :func:`wilson_interval`.
    """
    n = len(success)
    k = sum(bool(s) for s in success)
    if n == 0 or groups >= n:
        return wilson_interval(k, n, z=z), math.nan, 1.0
    m = n // groups
    rho = intra_group_correlation(success, groups)
    effect = 1 + (m - 1) * (max(rho, 0.0) if math.isfinite(rho) else 1.0)
    interval = _wilson(k / n, n / effect, z=z, at_zero=k == 0, at_n=k == n)
    return interval, rho, effect


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
