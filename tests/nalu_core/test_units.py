from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings
from torch import Tensor, nn

from nalu_core import UNITS, PopulationModule


@pytest.fixture(autouse=True)
def _seeded_global_rng() -> None:
    # unseeded draws (inputs, default inits) would make a failure unreproducible
    torch.manual_seed(0)


P = 3
EXACT = {"epsilon": 0.0}  # log(|x| + ε) is exact on these inputs only without the ε shift
BIG = 40.0  # tanh(40) and σ(40) are exactly 1 in float64
LAYER_UNITS = sorted(name for name, spec in UNITS.items() if spec.kind == "layer")
UnaryOp = Callable[[Tensor], Tensor]


def build(name: str, in_features: int, out_features: int = 1, **options: Any) -> nn.Module:
    """A float64 unit whose replica i is seeded with i, so every test run sees the same draws."""
    unit = UNITS[name].build(
        in_features, out_features, population=P, dtype=torch.float64, **options
    )
    unit.reset_parameters([torch.Generator().manual_seed(i) for i in range(P)])
    return unit


def set_params(unit: nn.Module, **values: Any) -> nn.Module:
    """Give every replica the same hand-set parameter value."""
    with torch.no_grad():
        for name, value in values.items():
            param = getattr(unit, name)
            param.copy_(torch.tensor(value, dtype=param.dtype).expand_as(param))
    return unit


def nac_hat(*weights: float) -> dict[str, list[list[float]]]:
    """Ŵ, M̂ giving W = tanh(Ŵ)σ(M̂) = weights exactly (weights in {-1, 0, 1} or atanh-able)."""
    w_hat = [BIG * w if abs(w) == 1 else math.atanh(w) for w in weights]
    return {"W_hat": [w_hat], "M_hat": [[BIG] * len(weights)]}


def inputs(low: float, high: float, in_features: int = 2, batch: int = 64) -> Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, in_features, generator=gen, dtype=torch.float64)
    return (low + (high - low) * x).expand(P, batch, in_features).clone()  # (P, B, in)


def add(x: Tensor) -> Tensor:
    return x[..., :1] + x[..., 1:2]


def sub(x: Tensor) -> Tensor:
    return x[..., :1] - x[..., 1:2]


def mul(x: Tensor) -> Tensor:
    return x[..., :1] * x[..., 1:2]


def div(x: Tensor) -> Tensor:
    return x[..., :1] / x[..., 1:2]


def square(x: Tensor) -> Tensor:
    return x[..., :1] ** 2


def sqrt(x: Tensor) -> Tensor:
    return x[..., :1].sqrt()


def first(x: Tensor) -> Tensor:
    """A single-input unit (weight W = 2 for x², 0.5 for √x) sees x only."""
    return x[..., :1]


def twice(x: Tensor) -> Tensor:
    """x² for units whose weights are bounded by 1: the input is fed twice, [x, x]."""
    return torch.cat((x[..., :1], x[..., :1]), dim=-1)


# (id, unit, options, parameters, op, input range, input transform)
REFERENCE = [
    ("nac_add+", "nac_add", {}, nac_hat(1, 1), add, (-5, 5), None),
    ("nac_add-", "nac_add", {}, nac_hat(1, -1), sub, (-5, 5), None),
    ("nac_mul*", "nac_mul", EXACT, nac_hat(1, 1), mul, (0.5, 5), None),
    ("nac_mul/", "nac_mul", EXACT, nac_hat(1, -1), div, (0.5, 5), None),
    ("nac_mul^2", "nac_mul", EXACT, nac_hat(1, 1), square, (0.5, 5), twice),
    ("nac_mul_sqrt", "nac_mul", EXACT, nac_hat(0.5), sqrt, (0.5, 5), first),
    ("nau+", "nau", {}, {"W": [[1.0, 1.0]]}, add, (-5, 5), None),
    ("nau-", "nau", {}, {"W": [[1.0, -1.0]]}, sub, (-5, 5), None),
    ("nmu*", "nmu", {}, {"W": [[1.0, 1.0]]}, mul, (-5, 5), None),
    ("nmu^2", "nmu", {}, {"W": [[1.0, 1.0]]}, square, (-5, 5), twice),
    ("linear+", "linear", {}, {"W": [[1.0, 1.0]], "b": [0.0]}, add, (-5, 5), None),
    ("linear-", "linear", {}, {"W": [[1.0, -1.0]], "b": [0.0]}, sub, (-5, 5), None),
    ("mlp_relu+", "mlp", {}, {"W": [[1.0, 1.0]], "b": [0.0]}, add, (0, 5), None),
    ("npu*", "npu", EXACT, {"W_re": [[1.0, 1.0]], "g": [1.0, 1.0]}, mul, (-5, 5), None),
    ("npu/", "npu", EXACT, {"W_re": [[1.0, -1.0]], "g": [1.0, 1.0]}, div, (0.5, 5), None),
    ("npu^2", "npu", EXACT, {"W_re": [[2.0]], "g": [1.0]}, square, (-5, 5), first),
    ("npu_sqrt", "npu", EXACT, {"W_re": [[0.5]], "g": [1.0]}, sqrt, (0.5, 5), first),
    ("realnpu*", "realnpu", EXACT, {"W_re": [[1.0, 1.0]], "g": [1.0, 1.0]}, mul, (-5, 5), None),
    (
        "realnpu/",
        "realnpu",
        EXACT,
        {"W_re": [[1.0, -1.0]], "g": [1.0, 1.0]},
        div,
        (-5, -0.5),
        None,
    ),
    ("realnpu^2", "realnpu", EXACT, {"W_re": [[2.0]], "g": [1.0]}, square, (-5, 5), first),
    ("realnpu_sqrt", "realnpu", EXACT, {"W_re": [[0.5]], "g": [1.0]}, sqrt, (0.5, 5), first),
    ("nmru*", "nmru", {}, {"W": [[1.0, 1.0, 0.0, 0.0]]}, mul, (-5, 5), None),
    ("nmru/", "nmru", {}, {"W": [[1.0, 0.0, 0.0, 1.0]]}, div, (-5, 5), None),
    ("nmru^2", "nmru", {}, {"W": [[1.0, 1.0, 0.0, 0.0]]}, square, (-5, 5), twice),
]


def _nalu(gate: float, *weights: float) -> dict[str, Any]:
    return {**nac_hat(*weights), "G": [gate]}


NALU_ADD = {"gate": "constant"}  # σ(+40) = 1: the additive path only
NALU_MUL = {"gate": "constant", **EXACT}  # σ(−40) ≈ 4e-18: the multiplicative path only
REFERENCE += [
    ("nalu+", "nalu", NALU_ADD, _nalu(BIG, 1, 1), add, (-5, 5), None),
    ("nalu-", "nalu", NALU_ADD, _nalu(BIG, 1, -1), sub, (-5, 5), None),
    ("nalu*", "nalu", NALU_MUL, _nalu(-BIG, 1, 1), mul, (0.5, 5), None),
    ("nalu/", "nalu", NALU_MUL, _nalu(-BIG, 1, -1), div, (0.5, 5), None),
    ("nalu^2", "nalu", NALU_MUL, _nalu(-BIG, 1, 1), square, (0.5, 5), twice),
    ("nalu_sqrt", "nalu", NALU_MUL, _nalu(-BIG, 0.5), sqrt, (0.5, 5), first),
]


def _inalu(gate: float, add_w: tuple[float, ...], mul_w: tuple[float, ...]) -> dict[str, Any]:
    a, m = nac_hat(*add_w), nac_hat(*mul_w)
    return {
        "W_hat_add": a["W_hat"],
        "M_hat_add": a["M_hat"],
        "W_hat_mul": m["W_hat"],
        "M_hat_mul": m["M_hat"],
        "g_hat": [gate],
    }


# iNALU's gate is input-independent (Schlör): σ(±40) is 1 (or 0) to float64 precision
REFERENCE += [
    ("inalu+", "inalu", {}, _inalu(BIG, (1, 1), (0, 0)), add, (0.5, 5), None),
    ("inalu-", "inalu", {}, _inalu(BIG, (1, -1), (0, 0)), sub, (0.5, 5), None),
    ("inalu*", "inalu", {}, _inalu(-BIG, (0, 0), (1, 1)), mul, (0.5, 5), None),
    ("inalu/", "inalu", {}, _inalu(-BIG, (0, 0), (1, -1)), div, (0.5, 5), None),
    ("inalu^2", "inalu", {}, _inalu(-BIG, (0, 0), (1, 1)), square, (0.5, 5), twice),
    ("inalu_sqrt", "inalu", {}, _inalu(-BIG, (0,), (0.5,)), sqrt, (0.5, 5), first),
]


@pytest.mark.parametrize(
    ("unit", "options", "params", "op", "bounds", "transform"),
    [pytest.param(*case[1:], id=case[0]) for case in REFERENCE],
)
def test_hand_set_solution_computes_the_operation(
    unit: str,
    options: dict[str, Any],
    params: dict[str, Any],
    op: UnaryOp,
    bounds: tuple[float, float],
    transform: UnaryOp | None,
) -> None:
    x = inputs(*bounds)
    fed = transform(x) if transform else x
    layer = set_params(build(unit, fed.shape[-1], **options), **params)
    layer.train(False)  # the NMRU's exact reciprocal (training adds ε)
    torch.testing.assert_close(layer(fed), op(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("unit", ["nmu", "nmru"])
def test_products_keep_full_precision_for_tiny_inputs(unit: str) -> None:
    layer = UNITS[unit].build(2, 1, population=P)  # float32
    set_params(layer, W=[[1.0, 1.0] + [0.0] * (layer.W.shape[-1] - 2)])
    x = inputs(1e-4, 1e-3).float()
    torch.testing.assert_close(layer(x), mul(x), rtol=1e-6, atol=0)


def test_inalu_recovers_the_sign_of_products_and_quotients() -> None:
    x = inputs(-5, 5)
    x = torch.where(x.abs() < 0.5, torch.full_like(x, 0.5), x)
    for weights, op in (((1, 1), mul), ((1, -1), div)):
        layer = set_params(build("inalu", 2), **_inalu(-BIG, (0, 0), weights))
        torch.testing.assert_close(layer(x), op(x), rtol=1e-9, atol=1e-9)


def test_nalu_input_gate_with_bias_selects_each_path() -> None:
    x = inputs(0.5, 5)
    for bias, op in ((BIG, add), (-BIG, mul)):
        layer = build("nalu", 2, gate_bias=True, **EXACT)
        set_params(layer, **nac_hat(1, 1), G=0.0, gate_b=bias)
        torch.testing.assert_close(layer(x), op(x), rtol=1e-9, atol=1e-9)


def test_nalu_separate_weights_add_and_multiply_at_once() -> None:
    x = inputs(0.5, 5)
    layer = build("nalu", 2, gate="constant", shared_weights=False, **EXACT)
    a, m = nac_hat(1, -1), nac_hat(1, 1)
    set_params(layer, W_hat=a["W_hat"], M_hat=a["M_hat"], G=0.0)
    set_params(layer, W_hat_mul=m["W_hat"], M_hat_mul=m["M_hat"])
    torch.testing.assert_close(layer(x), 0.5 * sub(x) + 0.5 * mul(x), rtol=1e-9, atol=1e-9)


def test_crelu_concatenates_both_halves_and_keeps_the_width() -> None:
    layer = build("mlp", 2, 4, activation="crelu")
    set_params(layer, W=[[1.0, 0.0], [0.0, 1.0]], b=[0.0, 0.0])
    x = inputs(-5, 5)
    y = layer(x)
    assert y.shape == (P, x.shape[1], 4)
    torch.testing.assert_close(y, torch.cat((x.relu(), (-x).relu()), dim=-1))
    assert build("mlp", 2, 3, activation="crelu")(x).shape == (P, x.shape[1], 3)


@pytest.mark.parametrize("unit", LAYER_UNITS)
def test_population_replicas_are_independent(unit: str) -> None:
    # tanh: a relu replica may start dead and get no gradient at all
    layer = build(unit, 3, 2, **({"activation": "tanh"} if unit == "mlp" else {}))
    x = inputs(0.5, 2, in_features=3)

    def grads(weights: Tensor) -> list[Tensor]:
        layer.zero_grad()
        (layer(x).pow(2).sum(dim=(1, 2)) * weights).sum().backward()
        return [p.grad.clone() for p in layer.parameters() if p.grad is not None]

    base = grads(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    changed = grads(torch.tensor([1.0, 3.0, 1.0], dtype=torch.float64))
    assert base
    for before, after in zip(base, changed, strict=True):
        torch.testing.assert_close(after[[0, 2]], before[[0, 2]], rtol=0, atol=0)
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(base, changed, strict=True))
    only_one = grads(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert all(not g[[0, 2]].any() for g in only_one)


@pytest.mark.parametrize("unit", LAYER_UNITS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_are_finite_near_and_at_zero(unit: str, dtype: torch.dtype) -> None:
    layer = UNITS[unit].build(4, 2, population=P, dtype=dtype)
    layer.reset_parameters([torch.Generator().manual_seed(i) for i in range(P)])
    values = [0.0, 1e-8, -1e-8, 1e-4, -1e-4, 1e-2, -0.5, 1.0]
    x = torch.tensor(values, dtype=dtype).reshape(1, 2, 4).expand(P, 2, 4).clone()
    x.requires_grad_(True)
    y = layer(x)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, param in layer.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize(
    ("unit", "param", "low", "high"),
    [
        ("nau", "W", -1, 1),
        ("nmu", "W", 0, 1),
        ("nmru", "W", 0, 1),
    ],
)
@settings(max_examples=15, deadline=None)
@given(values=st.lists(st.floats(-10, 10), min_size=6, max_size=6))
def test_clamp_projects_into_the_domain(
    unit: str, param: str, low: float, high: float, values: list[float]
) -> None:
    layer = build(unit, 2, 1)
    tensor = getattr(layer, param)
    with torch.no_grad():
        flat = torch.tensor(values, dtype=tensor.dtype).repeat(tensor.numel())
        tensor.copy_(flat[: tensor.numel()].reshape(tensor.shape))
    inside = (tensor >= low) & (tensor <= high)
    before = tensor.detach().clone()
    layer.clamp_()
    assert ((tensor >= low) & (tensor <= high)).all()
    assert torch.equal(tensor[inside], before[inside])


def test_regularizer_and_sparsity_error_follow_madsen() -> None:
    layer = set_params(build("nau", 2, 1), W=[[0.25, -1.0]])
    torch.testing.assert_close(
        layer.regularization(), torch.full((P,), 0.125, dtype=torch.float64)
    )
    torch.testing.assert_close(layer.sparsity_error(), torch.full((P,), 0.25, dtype=torch.float64))
    solved = set_params(build("nmu", 2, 1), W=[[1.0, 0.0]])
    assert not solved.regularization().any() and not solved.sparsity_error().any()
    assert torch.isnan(build("npu", 2, 1).sparsity_error()).all()
    assert not build("linear", 2, 1).regularization().any()


@settings(max_examples=25, deadline=None)
@given(
    unit=st.sampled_from(LAYER_UNITS),
    population=st.integers(1, 4),
    batch=st.integers(1, 5),
    in_features=st.integers(1, 5),
    out_features=st.integers(1, 4),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_output_shape_and_dtype(
    unit: str,
    population: int,
    batch: int,
    in_features: int,
    out_features: int,
    dtype: torch.dtype,
) -> None:
    layer = UNITS[unit].build(in_features, out_features, population=population, dtype=dtype)
    assert isinstance(layer, PopulationModule)
    y = layer(torch.rand(population, batch, in_features, dtype=dtype) + 0.5)
    assert y.shape == (population, batch, out_features) and y.dtype == dtype
    assert layer.regularization().shape == (population,)
    assert layer.sparsity_error().shape == (population,)


@settings(max_examples=20, deadline=None)
@given(
    unit=st.sampled_from(LAYER_UNITS),
    small=st.integers(1, 3),
    extra=st.integers(1, 5),
    seed=st.integers(0, 2**31),
)
def test_replica_i_is_the_same_whatever_the_population(
    unit: str, small: int, extra: int, seed: int
) -> None:
    def make(population: int) -> nn.Module:
        layer = UNITS[unit].build(3, 2, population=population)
        layer.reset_parameters(
            [torch.Generator().manual_seed(seed + i) for i in range(population)]
        )
        return layer

    little, big = make(small), make(small + extra)
    for (name, a), (_, b) in zip(little.named_parameters(), big.named_parameters(), strict=True):
        assert torch.equal(a, b[:small]), name
    x = torch.rand(1, 4, 3).expand(small + extra, 4, 3) + 0.5
    torch.testing.assert_close(little(x[:small]), big(x)[:small], equal_nan=True)


def test_generators_must_match_the_population() -> None:
    with pytest.raises(ValueError, match="one generator per replica"):
        build("nau", 2).reset_parameters([torch.Generator()])


def test_bad_sizes_name_the_field() -> None:
    with pytest.raises(ValueError, match="population"):
        UNITS["nau"].build(2, 1, population=0)


@pytest.mark.gpu
@pytest.mark.parametrize("unit", LAYER_UNITS)
def test_cuda_matches_cpu(unit: str) -> None:
    gens = [torch.Generator().manual_seed(i) for i in range(P)]
    cpu = UNITS[unit].build(3, 2, population=P, dtype=torch.float64)
    cpu.reset_parameters(gens)
    gpu = UNITS[unit].build(3, 2, population=P, dtype=torch.float64, device="cuda")
    gpu.reset_parameters([torch.Generator().manual_seed(i) for i in range(P)])
    x = inputs(0.5, 2, in_features=3)
    y = gpu(x.cuda())
    assert y.device.type == "cuda"
    torch.testing.assert_close(y.cpu(), cpu(x), rtol=1e-9, atol=1e-9)
    y.sum().backward()
    gpu.clamp_()


@pytest.mark.parametrize(("fan_in", "fan_out"), [(100, 2), (10, 10), (2, 1)])
def test_madsen_nac_init_matches_the_target_variance(fan_in: int, fan_out: int) -> None:
    layer = UNITS["nac_add"].build(fan_in, fan_out, population=400, dtype=torch.float64)
    layer.reset_parameters([torch.Generator().manual_seed(i) for i in range(400)])
    target = 2.0 / max(fan_in + fan_out, 5)  # stable-nalu floors the fan at 5
    assert layer.weight().var().item() == pytest.approx(target, rel=0.05)


@pytest.mark.parametrize(("n_in", "out"), [(1, 1), (2, 1), (3, 2), (8, 3)])
def test_batch_major_nmu_is_the_reference_product_with_its_gradients(n_in: int, out: int) -> None:
    """The NMU's ``batch_major`` kernel (shared data streams) against the (P, B, out, in)
    product: the same outputs and gradients up to rounding, in float64 and in float32, and
    torch's gradcheck of its hand-written backward."""
    from nalu_core._units import _NarrowProduct, _product

    gen = torch.Generator().manual_seed(n_in * 10 + out)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        xt = (torch.rand(3, n_in, 16, generator=gen, dtype=dtype) * 4 - 2).requires_grad_()
        w = torch.rand(3, out, n_in, generator=gen, dtype=dtype).requires_grad_()
        x = xt.transpose(1, 2)  # (P, B, in) as a layer's transposed output hands it on
        y_ref = _product(x, w)
        (gx_ref, gw_ref) = torch.autograd.grad(y_ref.pow(2).sum(), (xt, w))
        y = _NarrowProduct.apply(x, w)
        (gx, gw) = torch.autograd.grad(y.pow(2).sum(), (xt, w))
        torch.testing.assert_close(y, y_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(gx, gx_ref, rtol=tol, atol=tol)
        torch.testing.assert_close(gw, gw_ref, rtol=tol, atol=tol)
    xt = torch.rand(2, n_in, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(2, out, n_in, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: _NarrowProduct.apply(a.transpose(1, 2), b), (xt, w)
    )


def test_the_trainer_turns_batch_major_on_for_shared_streams_only() -> None:
    from nalu_core import (
        LayerConfig,
        ModelConfig,
        PopulationTrainer,
        RunConfig,
        TaskConfig,
        TrainConfig,
    )

    def flags(streams: int | None) -> set[bool]:
        config = RunConfig(
            task=TaskConfig(name="static", op="mul", options={"input_size": 10}),
            model=ModelConfig(layers=(LayerConfig(unit="nau"), LayerConfig(unit="nmu"))),
            train=TrainConfig(seeds=4, steps=1, eval_samples=100, data_streams=streams),
        )
        network = PopulationTrainer(config).network
        return {m.batch_major for m in network.modules() if isinstance(m, PopulationModule)}

    assert flags(None) == {False} and flags(4) == {False}  # G = P: the reference layout
    assert flags(2) == {True}
