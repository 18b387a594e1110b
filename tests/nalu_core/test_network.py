from __future__ import annotations

import math
import time

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given, settings

from nalu_core import (
    UNITS,
    ConfigError,
    LayerConfig,
    ModelConfig,
    PopulationNetwork,
    build_network,
)


@pytest.fixture(autouse=True)
def _seeded_global_rng() -> None:
    # unseeded draws (inputs, default inits) would make a failure unreproducible
    torch.manual_seed(0)


LAYER_UNITS = sorted(name for name, spec in UNITS.items() if spec.kind == "layer")


def seeded(population: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(population)]


@settings(max_examples=25, deadline=None)
@given(
    units=st.lists(st.sampled_from(LAYER_UNITS), min_size=1, max_size=4),
    hidden=st.integers(1, 4),
    population=st.integers(1, 3),
    in_features=st.integers(1, 4),
    out_features=st.integers(1, 3),
)
def test_stack_widths_and_shapes(
    units: list[str], hidden: int, population: int, in_features: int, out_features: int
) -> None:
    model = ModelConfig(layers=tuple(LayerConfig(unit=u) for u in units), hidden_size=hidden)
    net = build_network(model, in_features, out_features, population=population)
    widths = [(layer.in_features, layer.out_features) for layer in net.layers]
    expected = [in_features] + [hidden] * (len(units) - 1) + [out_features]
    assert widths == list(zip(expected[:-1], expected[1:], strict=True))
    y = net(torch.rand(population, 5, in_features) + 0.5)
    assert y.shape == (population, 5, out_features)
    assert net.regularization().shape == (population,)
    assert net.sparsity_error().shape == (population,)


def test_nau_nmu_network_solves_a_times_plus_b_with_hand_set_weights() -> None:
    # Madsen's two-layer model: NAU forms the subset sums, NMU multiplies them
    model = ModelConfig(layers=(LayerConfig(unit="nau"), LayerConfig(unit="nmu")), hidden_size=2)
    net = build_network(model, 3, 1, population=2, dtype=torch.float64)
    with torch.no_grad():
        net.layers[0].W.copy_(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]))
        net.layers[1].W.copy_(torch.tensor([[1.0, 1.0]]))
    x = torch.rand(2, 16, 3, dtype=torch.float64) * 4 - 2
    expected = (x[..., 0] + x[..., 1]) * (x[..., 1] + x[..., 2])
    torch.testing.assert_close(net(x)[..., 0], expected)
    assert not net.regularization().any() and not net.sparsity_error().any()


def test_network_aggregates_the_layers() -> None:
    model = ModelConfig(layers=(LayerConfig(unit="nau"), LayerConfig(unit="nmu")), hidden_size=2)
    net = build_network(model, 2, 1, population=2, dtype=torch.float64)
    with torch.no_grad():
        net.layers[0].W.copy_(torch.tensor([[0.5, 1.0], [0.0, 2.0]]))
        net.layers[1].W.copy_(torch.tensor([[0.9, -0.3]]))
    expected_reg = net.layers[0].regularization() + net.layers[1].regularization()
    torch.testing.assert_close(net.regularization(), expected_reg)
    # layer 0 has min(0.5, 0.5) = 0.5 and |1 - 2| = 1; sparsity error is the max over all weights
    torch.testing.assert_close(net.sparsity_error(), torch.full((2,), 1.0, dtype=torch.float64))
    net.clamp_()
    assert net.layers[0].W.max() == 1.0 and net.layers[1].W.min() == 0.0


def test_sparsity_error_ignores_undefined_layers_and_is_nan_when_none_defines_it() -> None:
    mixed = ModelConfig(layers=(LayerConfig(unit="npu"), LayerConfig(unit="nau")))
    assert not torch.isnan(build_network(mixed, 2, 1, population=2).sparsity_error()).any()
    only_npu = ModelConfig.stacked("npu", depth=2)
    assert torch.isnan(build_network(only_npu, 2, 1, population=2).sparsity_error()).all()


def test_regularizer_schedule_comes_from_the_output_most_layer() -> None:
    nau_nmu = ModelConfig(layers=(LayerConfig(unit="nau"), LayerConfig(unit="nmu")))
    assert build_network(nau_nmu, 2, 1, population=1).regularizer == UNITS["nmu"].regularizer
    nau_nalu = ModelConfig(layers=(LayerConfig(unit="nau"), LayerConfig(unit="nalu")))
    assert build_network(nau_nalu, 2, 1, population=1).regularizer == UNITS["nau"].regularizer
    assert build_network(ModelConfig.stacked("nalu"), 2, 1, population=1).regularizer is None


@pytest.mark.parametrize("unit", LAYER_UNITS)
def test_replicas_match_across_population_sizes(unit: str) -> None:
    model = ModelConfig.stacked(unit, depth=3, hidden_size=3)
    small = build_network(model, 4, 2, population=2)
    big = build_network(model, 4, 2, population=5)
    small.reset_parameters(seeded(2, seed=7))
    big.reset_parameters(seeded(5, seed=7))
    for a, b in zip(small.parameters(), big.parameters(), strict=True):
        assert torch.equal(a, b[:2])
    x = torch.rand(1, 6, 4).expand(5, 6, 4) + 0.5
    torch.testing.assert_close(small(x[:2]), big(x)[:2], equal_nan=True)


@pytest.mark.parametrize("unit", ["nalu", "nmu", "linear"])
def test_network_replicas_train_independently(unit: str) -> None:
    net = build_network(ModelConfig.stacked(unit, depth=2), 3, 1, population=3)
    net(torch.rand(3, 8, 3) + 0.5)[1].sum().backward()
    for param in net.parameters():
        assert param.grad is not None
        assert not param.grad[[0, 2]].any() and param.grad[1].any()


def test_dtype_and_device_are_honoured() -> None:
    net = build_network(ModelConfig.stacked("nalu", depth=2), 2, 1, population=2, dtype="float64")
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert net(torch.rand(2, 3, 2, dtype=torch.float64)).dtype == torch.float64
    net32 = build_network(ModelConfig.stacked("nau"), 2, 1, population=2, device="cpu")
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in net32.parameters())


def test_build_rejects_recurrent_units_and_bad_options_by_field() -> None:
    model = ModelConfig(layers=(LayerConfig(unit="nau"), LayerConfig(unit="lstm")))
    with pytest.raises(ConfigError) as info:
        build_network(model, 2, 1, population=1)
    assert info.value.field == "model.layers[1].unit" and "recurrent" in str(info.value)
    bad = ModelConfig.stacked("mlp", depth=2, options={"activation": "gelu"})
    with pytest.raises(ConfigError) as info:
        build_network(bad, 2, 1, population=1)
    assert info.value.field == "model.layers[0].options.activation"


def test_network_is_a_population_network_with_its_config() -> None:
    model = ModelConfig.stacked("nau", depth=4, hidden_size=3)
    net = build_network(model, 5, 2, population=4)
    assert isinstance(net, PopulationNetwork) and net.config == model
    assert (net.population, net.in_features, net.out_features) == (4, 5, 2)


@pytest.mark.parametrize("unit", ["nalu", "nmu"])
def test_large_population_trains_as_one_batched_program(unit: str) -> None:
    # 4096 replicas of Madsen's 100-input task take one batched step, not 4096 small ones
    net = build_network(ModelConfig.stacked(unit, depth=2), 100, 1, population=4096)
    x = torch.rand(4096, 8, 100)  # in [0, 1): an NMU over 100 inputs in [1, 2] overflows
    start = time.perf_counter()
    loss = net(x).pow(2).mean()
    loss.backward()
    elapsed = time.perf_counter() - start
    assert math.isfinite(loss.item())
    assert elapsed < 5.0, f"{elapsed=:.2f}s for one step of 4096 replicas"


@pytest.mark.gpu
@pytest.mark.parametrize("unit", LAYER_UNITS)
def test_network_on_cuda(unit: str) -> None:
    model = ModelConfig.stacked(unit, depth=2, hidden_size=3)
    cpu = build_network(model, 3, 1, population=4, dtype=torch.float64)
    gpu = build_network(model, 3, 1, population=4, dtype=torch.float64, device="cuda")
    cpu.reset_parameters(seeded(4))
    gpu.reset_parameters(seeded(4))
    x = torch.rand(4, 16, 3, dtype=torch.float64) + 0.5
    y = gpu(x.cuda())
    torch.testing.assert_close(y.cpu(), cpu(x), rtol=1e-9, atol=1e-9, equal_nan=True)
    (y.pow(2).mean() + gpu.regularization().sum()).backward()
    gpu.clamp_()
    assert gpu.sparsity_error().device.type == "cuda"
