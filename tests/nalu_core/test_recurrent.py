from __future__ import annotations

import pytest
import torch

from nalu_core import UNITS, ConfigError, LayerConfig, ModelConfig, RecurrentHead, get_unit
from nalu_core._recurrent import RECURRENT_CELLS

P, B, T, IN, H = 3, 4, 6, 5, 7


def _reference(name: str) -> torch.nn.Module:
    if name == "lstm":
        return torch.nn.LSTM(IN, H, batch_first=True)
    if name == "gru":
        return torch.nn.GRU(IN, H, batch_first=True)
    return torch.nn.RNN(IN, H, nonlinearity="relu", batch_first=True)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_cell_matches_torch_reference_for_every_replica(name: str) -> None:
    torch.manual_seed(0)
    cell = RECURRENT_CELLS[name](IN, H, population=P)
    x = torch.randn(P, B, T, IN)
    y = cell(x)
    assert y.shape == (P, B, T, H)
    for p in range(P):
        ref = _reference(name)
        with torch.no_grad():
            ref.weight_ih_l0.copy_(cell.weight_ih[p].T)
            ref.weight_hh_l0.copy_(cell.weight_hh[p].T)
            ref.bias_ih_l0.copy_(cell.bias[p, 0])
            ref.bias_hh_l0.zero_()  # the population cells carry one bias
        expected, _ = ref(x[p])
        torch.testing.assert_close(y[p], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_replicas_are_independent(name: str) -> None:
    cell = RECURRENT_CELLS[name](IN, H, population=P)
    x = torch.randn(P, B, T, IN)
    cell(x)[0].sum().backward()
    for param in cell.parameters():
        assert param.grad is not None
        assert param.grad[0].abs().sum() > 0
        assert torch.all(param.grad[1:] == 0)
    before = cell(x)[0].detach()
    with torch.no_grad():
        for param in cell.parameters():
            param[1:].add_(1.0)
    torch.testing.assert_close(cell(x)[0], before)


@pytest.mark.parametrize("name", ["lstm", "gru", "rnn"])
def test_replica_init_depends_only_on_its_seed(name: str) -> None:
    small = RECURRENT_CELLS[name](IN, H, population=2)
    large = RECURRENT_CELLS[name](IN, H, population=4)
    small.reset_parameters([torch.Generator().manual_seed(s) for s in (10, 11)])
    large.reset_parameters([torch.Generator().manual_seed(s) for s in (10, 11, 12, 13)])
    for a, b in zip(small.parameters(), large.parameters(), strict=True):
        torch.testing.assert_close(a, b[:2])
        assert not torch.equal(b[2], b[3])


def test_cells_are_registered_as_recurrent_units() -> None:
    for name in ("lstm", "gru", "rnn"):
        assert UNITS[name].kind == "recurrent"
    spec = get_unit("rnn")
    assert spec.defaults() == {"nonlinearity": "relu"}
    with pytest.raises(ConfigError, match="nonlinearity") as err:
        spec.validate_options({"nonlinearity": "sigmoid"})
    assert err.value.field == "options.nonlinearity"


def test_tanh_rnn_is_bounded() -> None:
    cell = get_unit("rnn").build(IN, H, population=P, nonlinearity="tanh")
    assert cell(100 * torch.randn(P, B, T, IN)).abs().max() <= 1


def test_accumulating_head_computes_running_sums() -> None:
    # a linear accumulator h_t = 1*h_{t-1} + 1*x_t is an exact running sum
    head = RecurrentHead(
        ModelConfig(layers=(LayerConfig(unit="linear", options={"bias": False}),)),
        1,
        1,
        population=P,
    )
    with torch.no_grad():
        head.cells[0].W.fill_(1.0)  # (P, 1, 2)
    x = torch.rand(P, B, T, 1)
    torch.testing.assert_close(head(x, every_step=True), x.cumsum(2))
    torch.testing.assert_close(head(x), x.sum(2))


def test_recurrent_head_shapes_and_hooks() -> None:
    for model in (
        ModelConfig.stacked("lstm", hidden_size=8),
        ModelConfig.stacked("gru", depth=2, hidden_size=8),
        ModelConfig.stacked("lstm", depth=2, hidden_size=8, output_unit="nalu"),
        ModelConfig.stacked("nac_add", depth=2, hidden_size=2),
        ModelConfig.stacked("nau", depth=1),
    ):
        head = RecurrentHead(model, IN, 3, population=P)
        x = torch.randn(P, B, T, IN)
        assert head(x).shape == (P, B, 3)
        assert head(x, every_step=True).shape == (P, B, T, 3)
        assert head.regularization().shape == (P,)
        assert head.sparsity_error().shape == (P,)
        head.clamp_()
        head.reset_parameters([torch.Generator().manual_seed(s) for s in range(P)])
    assert RecurrentHead(ModelConfig.stacked("nau"), IN, 1, population=P).regularizer is not None


def test_recurrent_unit_after_a_layer_unit_is_rejected() -> None:
    model = ModelConfig(layers=(LayerConfig(unit="nac_add"), LayerConfig(unit="lstm")))
    with pytest.raises(ConfigError, match="cells must come first") as err:
        RecurrentHead(model, IN, 1, population=P)
    assert err.value.field == "model.layers[1].unit"


def test_unknown_unit_names_the_field() -> None:
    model = ModelConfig(layers=(LayerConfig(unit="lstm"), LayerConfig(unit="nope")))
    with pytest.raises(ConfigError) as err:
        RecurrentHead(model, IN, 1, population=P)
    assert err.value.field == "model.layers[1].unit"
