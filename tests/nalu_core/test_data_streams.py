"""Shared data streams (TrainConfig.data_streams), grouped inputs, the fused sampler and the
design-effect-adjusted interval."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch

from nalu_core import (
    ConfigError,
    LayerConfig,
    ModelConfig,
    PopulationTrainer,
    RunConfig,
    TaskConfig,
    TrainConfig,
    _fused,
)
from nalu_core._metrics import (
    clustered_wilson_interval,
    intra_group_correlation,
    population_mse,
    wilson_interval,
)
from nalu_core._network import build_network
from nalu_core._tasks import StaticArithmetic, counter_uniform
from nalu_core._units import ungroup


def _config(
    units: tuple[str, ...],
    op: str,
    input_size: int,
    seeds: int,
    steps: int,
    *,
    subset_offset: str = "seed",
    **train: object,
) -> RunConfig:
    options = {"input_size": input_size, "subset_offset": subset_offset}
    return RunConfig(
        task=TaskConfig(name="static", op=op, options=options),
        model=ModelConfig(layers=tuple(LayerConfig(unit=u) for u in units), hidden_size=2),
        train=TrainConfig(
            seeds=seeds,
            steps=steps,
            eval_every=50,
            eval_samples=500,
            device="cpu",
            **train,  # type: ignore[arg-type]
        ),
    )


def _digest(trainer: PopulationTrainer) -> str:
    list(trainer.run())
    h = hashlib.sha256()
    for _, p in trainer.network.named_parameters():
        h.update(p.detach().numpy().tobytes())
    return h.hexdigest()[:16]


# Digests of the final parameters of every replica, recorded with the trainer before data
# streams existed (one torch thread): "fixed" subsets with main at 20d8795, per-seed subsets
# with issue-14 at 6dabc92 (where per-replica targets came in). A GEMM's rounding depends on
# the BLAS kernel a CPU gets, so the old trainer's bits do too: one set per kind of CPU, each
# made by running those two commits on it (the AMD one with /tmp worktrees of them on
# 2 December 2026).
CASES = [
    (("nau", "nmu"), "mul", 10, 4, 200),
    (("nalu", "nalu"), "add", 10, 3, 150),
    (("nac_mul", "nau"), "mul", 8, 2, 100),
    (("nau", "nmu"), "mul", 100, 8, 100),
    (("nalu", "nalu"), "add", 100, 4, 60),
]
PRE_CHANGE: dict[tuple[str, str], dict[str, list[str]]] = {
    ("GenuineIntel", "AVX512"): {
        "fixed": [
            "eaabcd9a6c4c733b",
            "1db123dd5160cd95",
            "8c9ed7ffd11f4984",
            "107aa6cac5e2db72",
            "5c2fb64cafa8f499",
        ],
        "seed": [
            "97693be69955761c",
            "d0aa7c49da4a98b4",
            "21bbd201a0342de5",
            "b1dceb9f45edac79",
            "a7429cd1d38bbffa",
        ],
    },
    ("AuthenticAMD", "AVX512"): {
        "fixed": [
            "6b9fe39efeaccc9d",
            "9c328a93beaf327c",
            "58c491b7111d64f4",
            "3b3e4ef9238676d2",
            "23ac51e356ba8ca3",
        ],
        "seed": [
            "c06dc2f527b81a8b",
            "4c08ee1e2ae0f022",
            "b3ed5c36f1de8ad2",
            "d76dcc8f496f4e53",
            "5f24007f6fbcc11e",
        ],
    },
}


def _cpu_kind() -> tuple[str, str]:
    vendor = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("vendor_id"):
                vendor = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return vendor, torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("subsets", ["fixed", "seed"])
@pytest.mark.parametrize("streams", ["default", "P", "P-fused"])
def test_one_stream_per_seed_is_the_pre_change_trainer_bit_for_bit(
    case: int, subsets: str, streams: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    digests = PRE_CHANGE.get(_cpu_kind())
    if digests is None:
        pytest.skip(f"no pre-change digests recorded for this CPU, {_cpu_kind()=}")
    units, op, input_size, seeds, steps = CASES[case]
    extra = {} if streams == "default" else {"data_streams": seeds}
    if streams == "P-fused":
        monkeypatch.setenv("NALU_FUSED_SAMPLER", "1")  # the compiled sampler at any size
    config = _config(units, op, input_size, seeds, steps, subset_offset=subsets, **extra)
    assert _digest(PopulationTrainer(config)) == digests[subsets][case]


def test_replicas_of_a_group_share_their_batch_and_groups_differ() -> None:
    trainer = PopulationTrainer(_config(("nau", "nau"), "add", 20, 8, 10, data_streams=2))
    x, t = trainer._sample()
    # one batch per group; per-seed subsets: every replica's own targets of its group's x
    assert x.shape == (2, 128, 20) and t.shape == (8, 128, 1)
    assert not torch.equal(x[0], x[1])
    torch.testing.assert_close(t, trainer.task._target(ungroup(x, 8)), rtol=1e-6, atol=1e-6)
    # group g draws the stream of its first replica, seed + g * P / G
    independent = PopulationTrainer(_config(("nau", "nau"), "add", 20, 8, 10))
    xi, ti = independent._sample()
    assert torch.equal(x[0], xi[0]) and torch.equal(x[1], xi[4])
    torch.testing.assert_close(t[[0, 4]], ti[[0, 4]], rtol=1e-6, atol=1e-6)


def _rebatched(trainer: PopulationTrainer, groups: int) -> None:
    """The old path fed each replica its group's batch: an independent reimplementation."""
    sample = trainer._sample

    def grouped_batch() -> tuple[torch.Tensor, torch.Tensor]:
        x, _ = sample()  # (P, B, in) from every replica's own stream
        size = trainer.population // groups
        x = ungroup(x[::size], trainer.population)  # each replica gets its leader's batch
        return x, trainer.task._target(x)  # each replica's own targets (per-seed subsets)

    trainer._sample = grouped_batch  # type: ignore[method-assign]


@pytest.mark.parametrize(
    "units", [("nau", "nmu"), ("nalu", "nalu"), ("nac_add", "nac_mul"), ("inalu", "nau")]
)
def test_grouped_training_matches_replicas_fed_their_groups_batch(
    units: tuple[str, ...],
) -> None:
    # The two paths round differently (one GEMM per group against one per replica), and on
    # `mul` Adam's g/sqrt(v) turns a last-bit difference in a near-zero gradient into a step
    # of its own: the gap grows from 1e-9 after one step to 1e-2 after twenty, at a rate that
    # depends on the CPU's BLAS kernels (on an AMD EPYC 60 steps gave 8% apart). So compare
    # the first steps, where any real difference of batch or target would already show.
    P, G, steps = 6, 2, 6
    grouped = PopulationTrainer(_config(units, "mul", 30, P, steps, data_streams=G))
    assert grouped.task.per_replica_targets  # per-seed subsets: targets differ in a group
    reference = PopulationTrainer(_config(units, "mul", 30, P, steps))
    _rebatched(reference, G)
    a, b = list(grouped.run()), list(reference.run())
    for ra, rb in zip(a, b, strict=True):
        # a product over 30 inputs magnifies the parameters' 1e-6 into its MSE (2e-4 seen)
        assert ra.interpolation_mse == pytest.approx(rb.interpolation_mse, rel=1e-3, abs=1e-9)
    for (name, pa), (_, pb) in zip(
        grouped.network.named_parameters(), reference.network.named_parameters(), strict=True
    ):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_data_streams_must_divide_the_seeds() -> None:
    with pytest.raises(ConfigError, match="data_streams") as err:
        TrainConfig(seeds=10, data_streams=4)
    assert err.value.field == "data_streams"
    with pytest.raises(ConfigError, match="data_streams"):
        TrainConfig(seeds=10, data_streams=0)
    assert TrainConfig(seeds=10, data_streams=5).data_streams == 5
    assert TrainConfig.from_dict({"seeds": 8, "data_streams": 2}).data_streams == 2


@pytest.mark.parametrize(
    "units",
    [
        ("nau", "nmu"),
        ("nalu", "nalu"),
        ("nac_add", "nac_mul"),
        ("nac_mul", "nac_add"),
        ("inalu", "inalu"),
        ("npu", "nau"),
        ("realnpu", "nau"),
        ("nmru", "nau"),
        ("nmu", "nau"),
        ("mlp", "linear"),
    ],
)
def test_evaluation_on_the_shared_set_gives_the_expanded_numbers(
    units: tuple[str, ...],
) -> None:
    P = 16
    model = ModelConfig(layers=tuple(LayerConfig(unit=u) for u in units), hidden_size=2)
    net = build_network(model, 100, 1, population=P)
    gens = [torch.Generator().manual_seed(s) for s in range(P)]
    net.reset_parameters(gens)
    x = torch.rand(300, 100, generator=torch.Generator().manual_seed(1)) + 1  # (N, in)
    t = x[:, :3].sum(-1, keepdim=True) * x[:, 3:5].sum(-1, keepdim=True)
    grouped = population_mse(net, x, t, population=P)

    def expanded(xs: torch.Tensor) -> torch.Tensor:
        assert xs.shape[0] == P
        return net(xs)

    plain = population_mse(expanded, x, t, population=P)
    # one GEMM for all replicas sums in another order than P small ones: layer 1 differs by
    # float rounding only; a log-space layer 2 (NAC•) amplifies it where a hidden value is
    # near 0, hence the looser bound on the whole network's MSE
    first = net.layers[0]
    shared = x[:64].unsqueeze(0)  # (1, N, in)
    torch.testing.assert_close(
        first(shared), first(shared.expand(P, -1, -1)), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(grouped, plain, rtol=1e-2, atol=0.0)


@pytest.mark.filterwarnings("error")  # a fallback to the plain path would pass unnoticed
@pytest.mark.parametrize(
    "interval", [(1.0, 2.0), (0.1, 0.2), (-2.0, 2.0), (10.0, 20.0), (-0.2, -0.1), (0.0, 1.0)]
)
@pytest.mark.parametrize(("P", "n"), [(4, 4096), (7, 1000), (64, 12800)])
def test_the_fused_sampler_draws_the_plain_numbers_bit_for_bit(
    interval: tuple[float, float], P: int, n: int
) -> None:
    seeds = torch.arange(5, 5 + P, dtype=torch.int64) * 7919
    for step in (0, 3, 123_456):
        plain = counter_uniform(seeds, step, n, dtype=torch.float32, interval=interval)
        out = torch.empty(P, n)
        fused = counter_uniform(
            seeds, step, n, dtype=torch.float32, interval=interval, out=out, fused=True
        )
        assert _fused.is_available("sampler")  # it compiled and ran
        assert fused.data_ptr() == out.data_ptr()  # written in place, nothing allocated
        assert torch.equal(fused, plain)


def test_sample_at_is_the_same_with_the_fused_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    task = StaticArithmetic(op="mul", input_size=100)
    seeds = torch.arange(3, dtype=torch.int64)
    plain = task.sample_at(seeds, 11, 64, dtype=torch.float32)
    monkeypatch.setenv("NALU_FUSED_SAMPLER", "1")
    fused = task.sample_at(seeds, 11, 64, dtype=torch.float32, out=torch.empty(3 * 64 * 100))
    assert torch.equal(plain[0], fused[0]) and torch.equal(plain[1], fused[1])


# a fallback to the plain path would pass unnoticed (other warnings of the compiler are not ours)
@pytest.mark.filterwarnings("error:fused kernel:UserWarning")
@pytest.mark.parametrize(
    ("op", "input_size", "interval", "seeds"),
    [
        ("mul", 100, "1,2", 64),
        ("sub", 100, "-2,2", 16),
        ("add", 10, "0.1,0.2", 8),
        ("div", 2, "1,2", 5),
        ("mul", 100, "-2,-1;1,2", 4),  # two ranges: the plain targets (no fused sums)
    ],
)
def test_targets_from_the_hashed_subset_sums_are_the_gemm_targets_bit_for_bit(
    op: str, input_size: int, interval: str, seeds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At G = P the fused sampler hashes each replica's subset sums again from the counter
    positions (no read of the batch); they must be the plain path's ``x @ masks`` targets."""
    from nalu_core._tasks import build_task, parse_ranges

    config = TaskConfig(
        name="static",
        op=op,
        options={"input_size": input_size, "interpolation": interval},
    )
    task = build_task(config).for_replicas(list(range(seeds)))
    ids = torch.arange(seeds, dtype=torch.int64) * 31 + 7
    plain_x, plain_t = task.sample_at(ids, 5, 128, dtype=torch.float32)
    monkeypatch.setenv("NALU_FUSED_SAMPLER", "1")
    for step in (5, 77_777):
        x, t = task.sample_at(ids, step, 128, dtype=torch.float32)
        expected = task._target(x)  # type: ignore[attr-defined]
        assert torch.equal(t, expected), step
        if step == 5:
            assert torch.equal(x, plain_x) and torch.equal(t, plain_t)
    if len(parse_ranges(interval, field="interval")) == 1:  # the fused sums ran, and held
        assert "subset_sums" in _fused._kernels and _fused.is_available("subset_sums")


def test_intra_group_correlation() -> None:
    # groups that all succeed or all fail: perfectly correlated
    assert intra_group_correlation([True, True, False, False, True, True], 3) == pytest.approx(1.0)
    # one replica per group, or no variation: undefined
    assert math.isnan(intra_group_correlation([True, False], 2))
    assert math.isnan(intra_group_correlation([True] * 8, 4))
    # the same rate in every group: below zero (anti-correlated within groups)
    assert intra_group_correlation([True, False] * 4, 4) < 0


def test_the_adjusted_interval_is_wilson_at_the_effective_sample_size() -> None:
    success = [True, False] * 16  # 16/32
    # independent seeds: the plain interval
    assert clustered_wilson_interval(success, 32)[0] == wilson_interval(16, 32)
    # perfectly correlated pairs: n_eff = 16 groups
    pairs = [True, True, False, False] * 8
    interval, rho, effect = clustered_wilson_interval(pairs, 16)
    assert rho == pytest.approx(1.0) and effect == pytest.approx(2.0)
    assert interval == pytest.approx(wilson_interval(8, 16))
    # negative correlation never narrows it
    assert clustered_wilson_interval(success, 16)[0] == pytest.approx(wilson_interval(16, 32))
    # no variation with shared streams: rho is assumed 1 (n_eff = number of groups)
    interval, rho, effect = clustered_wilson_interval([True] * 32, 8)
    assert math.isnan(rho) and effect == 4.0
    assert interval == pytest.approx(wilson_interval(8, 8))


def test_results_carry_both_intervals_and_the_correlation() -> None:
    trainer = PopulationTrainer(_config(("nau", "nau"), "add", 10, 8, 50, data_streams=4))
    list(trainer.run())
    result = trainer.result()
    metrics = result.metrics()
    assert {"success_lower_adjusted", "success_upper_adjusted", "intra_group_correlation"} <= set(
        metrics
    )
    data = result.to_dict()
    assert "success_ci_adjusted" in data and "intra_group_correlation" in data
    assert "intra_group_correlation" in trainer.history[-1]
