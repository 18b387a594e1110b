"""Element-wise optimisers over stacked population parameters (P, ...).

Adam, RMSprop and SGD with torch's default hyperparameters and torch's update formulas, but
without ``torch.optim``: its first ``step()`` imports ``torch._dynamo`` (seconds here), and
the trainer needs nothing of it beyond the arithmetic. Every update is element-wise, so one
replica's state never touches another's. ``state_dict()`` has ``torch.optim``'s layout, so
checkpoints written with ``torch.optim.Adam``/``RMSprop``/``SGD`` load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

OptimizerName = Literal["adam", "rmsprop", "sgd"]

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPS = 1e-8
_RMSPROP_ALPHA = 0.99
_RMSPROP_EPS = 1e-8
# the per-element state of each optimiser, in torch.optim's names
_STATE_KEYS: dict[str, tuple[str, ...]] = {
    "adam": ("exp_avg", "exp_avg_sq"),
    "rmsprop": ("square_avg",),
    "sgd": (),
}


class PopulationOptimizer:
    """``step()`` updates ``params`` from their ``.grad``; ``state[p]`` holds p's moments."""

    def __init__(self, params: Sequence[Tensor], *, name: OptimizerName, lr: float) -> None:
        if name not in _STATE_KEYS:
            raise ValueError(f"unknown optimizer {name!r}; known: {sorted(_STATE_KEYS)}")
        self.name = name
        self.lr = lr
        self.params = list(params)
        self.state: dict[Tensor, dict[str, Tensor]] = {}
        self.steps = 0

    def _state(self, p: Tensor) -> dict[str, Tensor]:
        state = self.state.get(p)
        if state is None:
            state = {"step": torch.zeros((), dtype=torch.float32)}
            for key in _STATE_KEYS[self.name]:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            self.state[p] = state
        return state

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for p in self.params:
            if p.grad is not None:
                self._update(p, p.grad, self._state(p))

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Tensor]) -> None:
        state["step"] += 1
        if self.name == "adam":
            beta1, beta2 = _ADAM_BETAS
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step = float(state["step"])
            bias_correction2_sqrt = (1 - beta2**step) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(_ADAM_EPS)
            p.addcdiv_(exp_avg, denom, value=-self.lr / (1 - beta1**step))
        elif self.name == "rmsprop":
            square_avg = state["square_avg"]
            square_avg.mul_(_RMSPROP_ALPHA).addcmul_(grad, grad, value=1 - _RMSPROP_ALPHA)
            p.addcdiv_(grad, square_avg.sqrt().add_(_RMSPROP_EPS), value=-self.lr)
        else:
            p.add_(grad, alpha=-self.lr)

    # --- state: torch.optim's layout ----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state = {
            i: {k: v.clone() for k, v in self.state[p].items()}
            for i, p in enumerate(self.params)
            if p in self.state
        }
        group = {"lr": self.lr, "params": list(range(len(self.params)))}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["state"]
        self.state = {}
        for i, p in enumerate(self.params):
            if i not in saved:
                continue
            own = self._state(p)
            for key, value in saved[i].items():
                if key in own:
                    own[key].copy_(value)
