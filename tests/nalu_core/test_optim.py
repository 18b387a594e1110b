from __future__ import annotations

import pytest
import torch

from nalu_core._optim import PopulationOptimizer

TORCH = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop, "sgd": torch.optim.SGD}


def _params(seed: int) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 2, 3), (4, 1)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64)) for s in shapes]


def _grads(step: int, params: list[torch.nn.Parameter]) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) * 10.0**step


@pytest.mark.parametrize("name", ["adam", "rmsprop", "sgd"])
def test_updates_match_torch_optim(name: str) -> None:
    ours, theirs = _params(0), _params(0)
    mine = PopulationOptimizer(ours, name=name, lr=0.01)  # type: ignore[arg-type]
    ref = TORCH[name](theirs, lr=0.01)
    for step in range(6):
        _grads(step - 3, ours)
        _grads(step - 3, theirs)
        mine.step()
        ref.step()
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0.0)


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_state_round_trips_including_torch_optim_checkpoints(name: str) -> None:
    params = _params(1)
    ref = TORCH[name](params, lr=0.05)
    for step in range(3):
        _grads(step, params)
        ref.step()
    # a checkpoint written by torch.optim continues identically under ours
    copy = [torch.nn.Parameter(p.detach().clone()) for p in params]
    mine = PopulationOptimizer(copy, name=name, lr=0.05)  # type: ignore[arg-type]
    mine.load_state_dict(ref.state_dict())
    _grads(3, params)
    _grads(3, copy)
    ref.step()
    mine.step()
    for a, b in zip(copy, params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0.0)
    again = PopulationOptimizer(copy, name=name, lr=0.05)  # type: ignore[arg-type]
    again.load_state_dict(mine.state_dict())
    for p in copy:
        for key, value in mine.state[p].items():
            assert torch.equal(again.state[p][key], value)


def test_one_replica_never_moves_another() -> None:
    params = _params(2)
    opt = PopulationOptimizer(params, name="adam", lr=0.1)
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.zeros_like(p)
        p.grad[1] = 1.0  # only replica 1 has a gradient
    opt.step()
    for p, old in zip(params, before, strict=True):
        assert not torch.equal(p[1], old[1])
        keep = [0, 2, 3]
        assert torch.equal(p[keep], old[keep])


def test_unknown_optimizer_is_rejected() -> None:
    with pytest.raises(ValueError, match="lbfgs"):
        PopulationOptimizer(_params(0), name="lbfgs", lr=0.1)  # type: ignore[arg-type]
