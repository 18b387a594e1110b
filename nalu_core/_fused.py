"""Compiled single-pass kernels for hot element-wise passes on CPU (today: the sampler).

torch.compile (inductor) turns a few element-wise ops into one vectorised C++ loop: no
temporaries between the ops and, for the sampler, a write straight into the caller's buffer.
Each kernel computes exactly the numbers of its eager expression (integer ops wrap like
torch's; the float ops are the same Sleef/IEEE ops in the same order), pinned bit for bit by
tests/nalu_core/test_data_streams.py. ``dynamic=True`` keeps one kernel for every shape (a
specialised one per shape would hit dynamo's recompile limit in a process that builds many
trainers). Without a working compiler the eager path runs (one warning).

Tried and left out: log(|x| + ε) of the network's input as one compiled pass (NALU at G = P
spends a third of its step there). Inductor's vectorised log differs from eager torch's in
the last bit for some inputs, which broke the bit-for-bit promise of G = P.

NALU_FUSED_SAMPLER=0 turns every kernel off, =1 uses them at any size (default: large inputs).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

Tensor = torch.Tensor

MIN_ELEMENTS = 1 << 18
_kernels: dict[str, Callable[..., Any] | None] = {}


def enabled(name: str, elements: int, *, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether kernel ``name`` runs for an input of this size, device and dtype."""
    setting = os.environ.get("NALU_FUSED_SAMPLER", "")
    if setting == "0" or device.type != "cpu" or dtype != torch.float32:
        return False
    if name in _kernels and _kernels[name] is None:  # it failed to compile once
        return False
    return setting == "1" or elements >= MIN_ELEMENTS


def compiled(name: str, fn: Callable[..., Any]) -> Callable[..., Any] | None:
    """``fn`` compiled once (None once it has failed)."""
    if name not in _kernels:
        _kernels[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _kernels[name]


def run(name: str, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
    """``(True, fn(*args))`` through the compiled kernel, or ``(False, None)`` when it is not
    available (the caller then runs its eager path)."""
    kernel = compiled(name, fn)
    if kernel is None:
        return False, None
    try:
        return True, kernel(*args)
    except Exception as err:  # noqa: BLE001 - any compiler failure: the eager path stays
        _kernels[name] = None
        warnings.warn(f"fused kernel {name!r} unavailable, eager path: {err}", stacklevel=3)
        return False, None


def is_available(name: str) -> bool:
    """False once ``name`` failed to compile or run."""
    return _kernels.get(name, True) is not None
