"""Conformance with the reference code (stable-nalu, nalm-benchmark, nalm-division).

One test (or group) per difference listed in shared/reference/protocol-conformance.md. Each
pins the reference behaviour with numbers derived here, independently of the code under
test: a closed form, or a separate simulation written in the test (numpy, its own seeds),
never by calling the function that computes the value being checked.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from nalu_core import (
    PUBLISHED_ROWS,
    UNITS,
    LayerConfig,
    ModelConfig,
    PopulationTrainer,
    RunConfig,
    SeedResult,
    StaticArithmetic,
    TaskConfig,
    TrainConfig,
    TrainResult,
    build_network,
)

EPS_MADSEN = 1e-5
EPS_MISTRY = 1e-4


# --- 1 and 9: success thresholds -------------------------------------------------------------


def _madsen_threshold_sim(op: str, *, n: int = 400_000, seed: int = 20200) -> float:
    """The paper's near-perfect solution on 100 inputs, U[2,6]: subsets of 25 sharing 12 (at
    offset 0: the inputs are i.i.d., so the offset does not matter), first layer 1 − ε on the
    relevant inputs and ε elsewhere, the op exact."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(2.0, 6.0, size=(n, 100))
    a_idx, b_idx = np.arange(0, 25), np.arange(13, 38)
    w_a = np.full(100, EPS_MADSEN)
    w_a[a_idx] = 1 - EPS_MADSEN
    w_b = np.full(100, EPS_MADSEN)
    w_b[b_idx] = 1 - EPS_MADSEN
    a, b = x[:, a_idx].sum(1), x[:, b_idx].sum(1)
    a_hat, b_hat = x @ w_a, x @ w_b
    fn = {"add": np.add, "sub": np.subtract, "mul": np.multiply}[op]
    return float(np.mean((fn(a_hat, b_hat) - fn(a, b)) ** 2))


def _mistry_div_sim(*, n: int = 1_000_000, seed: int = 2022) -> float:
    """Mistry et al.'s near-perfect division on 2 inputs, U[2,6]: ((1−ε)/(1+ε)) · a/b."""
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(2.0, 6.0, size=(2, n))
    y = (1 - EPS_MISTRY) / (1 + EPS_MISTRY) * a / b
    return float(np.mean((y - a / b) ** 2))


def _train_json(tmp_path: Path, *args: str) -> dict[str, Any]:
    # imported here: the rest of this module needs only nalu_core, so `pytest -m gpu
    # tests/nalu_core` collects on a bare CUDA image without the study stack (gpu_check.sh)
    from typer.testing import CliRunner

    from study.cli import app

    out = tmp_path / f"r{len(list(tmp_path.iterdir()))}.json"
    base = ["train", "--seeds", "1", "--steps", "1", "--eval-every", "1", "--device", "cpu"]
    result = CliRunner().invoke(app, [*base, *args, "--quiet", "--json", str(out)])
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(out.read_text())
    return data


@pytest.mark.parametrize("op", ["add", "sub", "mul"])
def test_static_threshold_from_train_json_matches_an_independent_simulation(
    tmp_path: Path, op: str
) -> None:
    # acceptance: + − × on the 100-input task, U[2,6], madsen2020 rule, within 10%
    data = _train_json(tmp_path, "--op", op, "--unit", "nau")
    assert data["threshold_rule"] == "madsen2020"
    assert data["threshold_epsilon"] == EPS_MADSEN
    ours, independent = data["threshold"], _madsen_threshold_sim(op)
    assert ours == pytest.approx(independent, rel=0.10), (ours, independent)


def test_static_add_threshold_has_the_closed_form() -> None:
    # â + b̂ − (a + b) = 2ε (Σ_neither x − Σ_both x): 62 inputs in neither subset, 12 in both;
    # x ~ U[2,6]: mean 4, variance 16/12
    eps = EPS_MADSEN
    mean = 2 * eps * (62 - 12) * 4.0
    var = 4 * eps**2 * (62 + 12) * 16 / 12
    assert StaticArithmetic(op="add").threshold() == pytest.approx(mean**2 + var, rel=5e-3)


def test_subsets_are_the_true_25_and_12_not_the_r_scripts_26_and_13() -> None:
    task = StaticArithmetic(op="mul")
    (a0, a1), (b0, b1) = task.a_slice, task.b_slice
    assert (a1 - a0, b1 - b0, a1 - b0) == (25, 25, 12)


def test_division_threshold_from_train_json_matches_mistry(tmp_path: Path) -> None:
    # acceptance: ÷ on the 2-input task, U[2,6], mistry2022 rule, within 10%
    data = _train_json(tmp_path, "--op", "div", "--input-size", "2", "--unit", "nmru")
    assert data["threshold_rule"] == "mistry2022"
    assert data["threshold_epsilon"] == EPS_MISTRY
    ours, independent = data["threshold"], _mistry_div_sim()
    assert ours == pytest.approx(independent, rel=0.10), (ours, independent)
    # and the closed form: (2ε/(1+ε))² E[a²] E[1/b²], E[a²] = 52/3, E[1/b²] = 1/12
    closed = (2 * EPS_MISTRY / (1 + EPS_MISTRY)) ** 2 * (52 / 3) * (1 / 12)
    assert ours == pytest.approx(closed, rel=1e-2)


@pytest.mark.parametrize(
    ("op", "closed"),
    [
        # + and −: ε (|a| + |b|); E[(a + b)²] = 64 + 32/12 on U[2,6]
        ("add", EPS_MISTRY**2 * (64 + 32 / 12)),
        ("sub", EPS_MISTRY**2 * (64 + 32 / 12)),
        # ×: ((1 − ε)² − 1)² E[a²]²
        ("mul", ((1 - EPS_MISTRY) ** 2 - 1) ** 2 * (52 / 3) ** 2),
    ],
)
def test_mistry_rules_of_the_other_ops(op: str, closed: float) -> None:
    task = StaticArithmetic(op=op, input_size=2)
    assert task.threshold_rule == "mistry2022"
    assert task.threshold() == pytest.approx(closed, rel=1e-2)


def test_the_rule_is_a_task_option() -> None:
    assert StaticArithmetic(op="add", input_size=2, threshold_rule="madsen2020").epsilon == 1e-5
    assert StaticArithmetic(op="add", threshold_rule="mistry2022").threshold_rule == "mistry2022"
    assert StaticArithmetic(op="square", input_size=2).threshold_rule == "madsen2020"


# --- 2: each published row's own schedule ----------------------------------------------------


def _layer_weights(config: RunConfig, step: int) -> list[float]:
    trainer = PopulationTrainer(config)
    return [s.weight(step) for s in trainer.schedules]


def test_the_nmu_row_gives_lambda_10_to_both_layers_from_1e6_to_2e6() -> None:
    row = PUBLISHED_ROWS["madsen2020/nmu"]
    assert row.units == ("nau", "nmu")
    config = row.run_config("mul", steps=10, seeds=1, eval_samples=10)
    # λ̂ · (t − 1e6)/(2e6 − 1e6), the same on both layers
    assert _layer_weights(config, 999_999) == [0.0, 0.0]
    assert _layer_weights(config, 1_500_000) == [5.0, 5.0]
    assert _layer_weights(config, 3_000_000) == [10.0, 10.0]


def test_the_nau_row_and_the_unregularised_rows() -> None:
    nau = PUBLISHED_ROWS["madsen2020/nau"].run_config("add", steps=10, seeds=1, eval_samples=10)
    assert _layer_weights(nau, 27_500) == [0.005, 0.005]  # 0.01 · (27.5k − 5k)/45k
    for key in ("madsen2020/nac_add", "madsen2020/nac_mul", "madsen2020/nalu"):
        config = PUBLISHED_ROWS[key].run_config("add", steps=10, seeds=1, eval_samples=10)
        assert _layer_weights(config, 3_000_000) == [0.0, 0.0], key
    for row in PUBLISHED_ROWS.values():
        if row.paper == "madsen2020":
            assert (row.lr, row.batch_size, row.steps, row.clip) == (1e-3, 128, 5_000_000, "none")


def test_the_mistry_division_rows() -> None:
    nmru = PUBLISHED_ROWS["mistry2022/nmru"].run_config("div", steps=10, seeds=1)
    assert nmru.train.lr == 1e-2 and nmru.train.clip == "norm" and nmru.train.clip_value == 1
    assert nmru.model.layers[0].options == {"sign_retrieval": True}
    assert _layer_weights(nmru, 27_500) == [5.0]  # 10 · (27.5k − 20k)/15k
    realnpu = PUBLISHED_ROWS["mistry2022/realnpu"].run_config("div", steps=10, seeds=1)
    assert realnpu.train.lr == 5e-3
    assert _layer_weights(realnpu, 15_000) == [pytest.approx(1e-8)]


# --- 3 and 4: the task ------------------------------------------------------------------------


def test_the_subset_offset_is_drawn_per_seed() -> None:
    config = RunConfig(
        task=TaskConfig(op="add"),
        model=ModelConfig.stacked("nau", depth=2),
        train=TrainConfig(seeds=12, seed=3, steps=1, eval_samples=64),
    )
    trainer = PopulationTrainer(config)
    task = trainer.task
    assert isinstance(task, StaticArithmetic) and task.replica_offsets is not None
    offsets = task.replica_offsets
    assert len(set(offsets)) > 1 and all(0 <= o <= 100 - 38 for o in offsets)
    # replica p's targets are the sums at its own offset, computed here by slicing
    x, t = trainer.eval_sets["extrapolation"]
    for p, o in enumerate(offsets):
        a = x[:, o : o + 25].double().sum(1)
        b = x[:, o + 13 : o + 38].double().sum(1)
        torch.testing.assert_close(t[p, :, 0].double(), a + b, rtol=1e-6, atol=1e-4)
    # a replica's offset depends on its seed only, not on the population
    alone = PopulationTrainer(
        RunConfig(
            task=config.task,
            model=config.model,
            train=TrainConfig(seeds=1, seed=3 + 5, steps=1, eval_samples=64),
        )
    ).task
    assert isinstance(alone, StaticArithmetic)
    alone_offset = alone.a_slice[0] if alone.replica_offsets is None else alone.replica_offsets[0]
    assert alone_offset == offsets[5]


def test_subset_sizes_use_floor() -> None:
    # 0.25 × 14 = 3.5: floor 3 (round would give 4); overlap floor(0.5 × 3) = 1
    task = StaticArithmetic(op="add", input_size=14)
    assert task.subset_size == 3 and task.shared_size == 1
    assert StaticArithmetic(op="add", input_size=10, subset_ratio=0.29).subset_size == 2


# --- 5: solved-at -----------------------------------------------------------------------------


def _seed(seed: int, success: bool, solved_at: int | None, sparsity: float) -> SeedResult:
    return SeedResult(
        seed=seed,
        interpolation_mse=0.0,
        extrapolation_mse=0.0 if success else 1.0,
        success=success,
        solved_at=solved_at,
        sparsity_error=sparsity,
        diverged=False,
    )


def test_solved_at_is_rs_median_over_solved_seeds_only() -> None:
    seeds = [
        _seed(0, True, 1000, 0.1),
        _seed(1, True, 4000, 0.3),
        _seed(2, False, 500, 0.49),  # crossed once, but fails at its best step
        _seed(3, False, None, 0.4),
    ]
    result = TrainResult(
        config=RunConfig(),
        threshold=1.0,
        success_rate=0.5,
        success_ci=(0.0, 1.0),
        seeds=seeds,
        history=[],
        division_probe=None,
    )
    metrics = result.metrics()
    assert metrics["solved_at_median"] == statistics.median([1000, 4000])  # R: 2500
    # the reference summarises the sparsity error over the solved seeds (a mean)
    assert metrics["sparsity_error_mean"] == pytest.approx(statistics.mean([0.1, 0.3]))


# --- 6: iNALU -----------------------------------------------------------------------------------


def test_inalu_is_schlors_unit() -> None:
    P = 4
    layer = UNITS["inalu"].build(100, 50, population=P, dtype=torch.float64)
    layer.reset_parameters([torch.Generator().manual_seed(s) for s in range(P)])
    for name, mean in (("W_hat_add", 0.88), ("M_hat_add", 0.5), ("W_hat_mul", 0.88)):
        values = getattr(layer, name).detach()
        assert float(values.mean()) == pytest.approx(mean, abs=0.01), name
        assert float(values.std()) == pytest.approx(0.2, abs=0.01), name
    g_hat = layer.g_hat.detach()
    assert g_hat.shape == (P, 50)  # one gate per output, no input weights
    assert float(g_hat.mean()) == pytest.approx(0.0, abs=0.05)
    assert float(g_hat.std()) == pytest.approx(0.2, abs=0.05)
    # Schlör's regulariser: Σ over the raw parameters of mean(max(20 − |θ|, 0))
    params = [layer.W_hat_add, layer.M_hat_add, layer.W_hat_mul, layer.M_hat_mul, layer.g_hat]
    expected = [
        sum(float(np.maximum(20 - np.abs(p[r].detach().numpy()), 0).mean()) for p in params)
        for r in range(P)
    ]
    torch.testing.assert_close(layer.regularization(), torch.tensor(expected, dtype=torch.float64))


def test_inalu_regulariser_applies_after_10k_steps_once_interpolation_mse_is_below_1() -> None:
    config = RunConfig(
        task=TaskConfig(op="add", options={"input_size": 2}),
        model=ModelConfig(layers=(LayerConfig(unit="inalu"),)),
        train=TrainConfig(seeds=2, steps=1, eval_samples=10, dtype="float64"),
    )
    trainer = PopulationTrainer(config)
    reg = trainer.network.regularization().detach()  # (P,)
    trainer.last_interpolation = torch.tensor([0.5, 2.0], dtype=torch.float64)
    trainer.step = 10_000
    assert trainer._regularization() is None
    trainer.step = 10_001
    term = trainer._regularization()
    assert term is not None
    torch.testing.assert_close(term.detach(), torch.stack([0.05 * reg[0], reg[1] * 0]))


# --- 7: NMRU ----------------------------------------------------------------------------------


def _nmru_reference(x: np.ndarray, w: np.ndarray, *, train: bool, sign: bool) -> np.ndarray:
    """Mistry's NMRU on one sample: z = [x, 1/(x + ε) in training or 1/x], then
    Π_i (W_i |z_i| + 1 − W_i) · cos(π Σ_i W_i [z_i < 0]) with sign retrieval, else
    Π_i (W_i z_i + 1 − W_i)."""
    eps = float(np.finfo(np.float32).eps)
    z = np.concatenate([x, 1 / (x + eps) if train else 1 / x])
    if not sign:
        return np.array([np.prod(w[j] * z + 1 - w[j]) for j in range(w.shape[0])])
    k = np.pi * (z < 0)
    return np.array(
        [np.prod(w[j] * np.abs(z) + 1 - w[j]) * np.cos(k @ w[j]) for j in range(w.shape[0])]
    )


@pytest.mark.parametrize("sign", [False, True])
def test_nmru_reciprocal_in_training_and_evaluation(sign: bool) -> None:
    layer = UNITS["nmru"].build(2, 2, population=1, dtype=torch.float64, sign_retrieval=sign)
    w = np.array([[1.0, 0.0, 0.0, 1.0], [0.3, 0.9, 0.6, 0.2]])
    x = np.array([[-3.0, 2.0], [1.5, -0.25], [4.0, 0.5]])
    with torch.no_grad():
        layer.W.copy_(torch.tensor(w).unsqueeze(0))
    for train in (True, False):
        layer.train(train)
        ours = layer(torch.tensor(x).unsqueeze(0))[0].detach().numpy()
        expected = np.stack([_nmru_reference(row, w, train=train, sign=sign) for row in x])
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-15)
    # x0 / x1 exactly at evaluation, the ε-shifted reciprocal in training
    assert expected[0, 0] == pytest.approx(-1.5, rel=1e-15)


def test_evaluation_uses_the_exact_reciprocal() -> None:
    config = RunConfig(
        task=TaskConfig(op="div", options={"input_size": 2}),
        model=ModelConfig(layers=(LayerConfig(unit="nmru"),)),
        train=TrainConfig(seeds=1, steps=1, eval_samples=50, dtype="float64"),
    )
    trainer = PopulationTrainer(config)
    with torch.no_grad():
        trainer.network.layers[0].W.copy_(torch.tensor([[[1.0, 0.0, 0.0, 1.0]]]))
    mse = trainer._evaluate_mse()
    assert float(mse["extrapolation"][0]) < 1e-28  # exact x0/x1 (1/(x1 + ε) would give ~1e-14)
    assert trainer.network.training


# --- 8: RealNPU -------------------------------------------------------------------------------


def test_realnpu_l1_with_its_beta_schedule_and_no_gate_clamp() -> None:
    layer = UNITS["realnpu"].build(3, 2, population=1, dtype=torch.float64)
    w = np.array([[0.5, -1.25, 2.0], [0.0, 0.75, -0.1]])
    g = np.array([1.4, -0.2, 0.6])
    with torch.no_grad():
        layer.W_re.copy_(torch.tensor(w).unsqueeze(0))
        layer.g.copy_(torch.tensor(g).unsqueeze(0))
    # nalm-benchmark's --regualizer-l1: Σ_θ ||θ||_1 over the unit's parameters
    l1 = float(layer.regularization().detach()[0])
    assert l1 == pytest.approx(np.abs(w).sum() + np.abs(g).sum())
    layer.clamp_()  # npu_clip: none: the stored gate is left alone...
    torch.testing.assert_close(layer.g[0].detach(), torch.tensor(g))
    # ...and the forward pass reads it clamped to [0, 1]
    x = np.array([[2.0, -3.0, 0.5]])
    eps = float(np.finfo(np.float32).eps)
    gc = np.clip(g, 0, 1)
    r = gc * (np.abs(x) + eps) + 1 - gc
    k = gc * (x < 0) * np.pi
    expected = np.exp(np.log(r) @ w.T) * np.cos(k @ w.T)
    ours = layer(torch.tensor(x).unsqueeze(0))[0].detach().numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    # β: 1e-9, ×10 at every 10k steps (from step 10k on), capped at 1e-7
    schedule = UNITS["realnpu"].regularizer
    assert schedule is not None
    expected_beta = {0: 1e-9, 9_999: 1e-9, 10_000: 1e-8, 19_999: 1e-8, 20_000: 1e-7, 49_000: 1e-7}
    for step, beta in expected_beta.items():
        assert schedule.weight(step) == pytest.approx(beta, rel=1e-9), step


# --- replay: NAU -> NMU against an implementation from the paper's equations ----------------


def _replay_reference(
    w1: np.ndarray, w2: np.ndarray, x: np.ndarray, t: np.ndarray, lam: float, lr: float
) -> dict[str, Any]:
    """Madsen & Johansen (2020): z = W1 x (NAU); y_j = Π_i (W2_ji z_i + 1 − W2_ji) (NMU);
    L = mean (y − t)² + λ (R(W1) + R(W2)), R(W) = mean min(|W|, 1 − |W|); one Adam step
    (β = 0.9, 0.999, ε = 1e-8, bias-corrected), then W1 clamped to [−1, 1], W2 to [0, 1]."""
    z = x @ w1.T  # (B, h)
    terms = w2[None, :, :] * z[:, None, :] + 1 - w2[None, :, :]  # (B, out, h)
    y = terms.prod(-1)  # (B, out)
    n = y.size

    def r_sparse(w: np.ndarray) -> float:
        return float(np.minimum(np.abs(w), 1 - np.abs(w)).mean())

    def r_grad(w: np.ndarray) -> np.ndarray:
        a = np.abs(w)
        return np.sign(w) * np.where(a < 1 - a, 1.0, -1.0) / w.size

    reg = r_sparse(w1) + r_sparse(w2)
    loss = float(((y - t) ** 2).mean()) + lam * reg
    dy = 2 * (y - t) / n  # (B, out)
    # ∂y_j/∂W2_ji = y_j (z_i − 1)/term_ji; ∂y_j/∂z_i = y_j W2_ji/term_ji
    g2 = np.einsum("bj,bji->ji", dy * y, (z[:, None, :] - 1) / terms)
    dz = np.einsum("bj,bji->bi", dy * y, w2[None, :, :] / terms)
    g1 = dz.T @ x
    g1, g2 = g1 + lam * r_grad(w1), g2 + lam * r_grad(w2)

    def adam(w: np.ndarray, g: np.ndarray) -> np.ndarray:
        m, v = 0.1 * g, 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9), v / (1 - 0.999)
        return w - lr * m_hat / (np.sqrt(v_hat) + 1e-8)

    return {
        "y": y,
        "loss": loss,
        "reg": reg,
        "w1": np.clip(adam(w1, g1), -1, 1),
        "w2": np.clip(adam(w2, g2), 0, 1),
    }


def test_nau_nmu_replay_matches_the_papers_equations() -> None:
    rng = np.random.default_rng(7)
    n_in, hidden, batch, lam, lr = 6, 2, 16, 0.3, 1e-3
    w1 = rng.uniform(-0.9, 0.9, size=(hidden, n_in))
    w2 = rng.uniform(0.1, 0.9, size=(1, hidden))
    x = rng.uniform(1.0, 2.0, size=(batch, n_in))
    t = (x[:, :2].sum(1) * x[:, 2:4].sum(1))[:, None]
    ref = _replay_reference(w1, w2, x, t, lam, lr)

    config = RunConfig(
        task=TaskConfig(op="mul", options={"input_size": n_in}),
        model=ModelConfig(layers=(LayerConfig(unit="nau"), LayerConfig(unit="nmu"))),
        train=TrainConfig(
            seeds=1,
            steps=1,
            lr=lr,
            batch_size=batch,
            eval_samples=10,
            dtype="float64",
            regularizer_lambda=lam,
            regularizer_start=0,
            regularizer_end=0,
        ),
    )
    trainer = PopulationTrainer(config)
    nau, nmu = trainer.network.layers
    with torch.no_grad():
        nau.W.copy_(torch.tensor(w1).unsqueeze(0))
        nmu.W.copy_(torch.tensor(w2).unsqueeze(0))
    xt, tt = torch.tensor(x).unsqueeze(0), torch.tensor(t).unsqueeze(0)
    y = trainer.network(xt)
    np.testing.assert_allclose(y[0].detach().numpy(), ref["y"], rtol=1e-12)
    reg = trainer._regularization()
    assert reg is not None
    assert float(reg.detach()[0]) == pytest.approx(lam * ref["reg"], rel=1e-12)
    loss = float((trainer.task.loss(y, tt)[0] + reg[0]).detach())
    assert loss == pytest.approx(ref["loss"], rel=1e-12)
    # one optimiser step of the trainer itself, on these inputs
    trainer._sample = lambda: (xt, tt)  # type: ignore[method-assign]
    trainer._train_step()
    np.testing.assert_allclose(nau.W[0].detach().numpy(), ref["w1"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(nmu.W[0].detach().numpy(), ref["w2"], rtol=1e-10, atol=1e-12)
    assert not np.allclose(ref["w1"], w1)  # the step moved the weights


def test_build_network_stacks_nau_then_nmu_for_the_nmu_row() -> None:
    row = PUBLISHED_ROWS["madsen2020/nmu"]
    config = row.run_config("mul", steps=1, seeds=1)
    net = build_network(config.model, 100, 1, population=1)
    assert [type(layer).__name__ for layer in net.layers] == ["NAU", "NMU"]
    assert math.isclose(config.train.regularizer_lambda or 0, 10.0)
