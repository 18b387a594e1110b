"""Arithmetic units in population form.

A unit built with ``population=P`` holds P independent replicas of its parameters: every
parameter has a leading replica dim and the forward pass maps ``(P, B, in) -> (P, B, out)``
with batched matmuls, never a Python loop over replicas. The input may also be ``(G, B, in)``
with G dividing P, one batch per group of P/G replicas (see :func:`ungroup`): layer-1 matmuls
then run as one GEMM per group and a log of the input is taken once per group. Replicas
share no parameters, so one optimiser over the stacked tensors trains P independent models
(Adam is elementwise).

References: Trask et al. 2018 (NAC, NALU), Madsen & Johansen 2020 (NAU, NMU, R_sparse),
Schlör et al. 2020 (iNALU), Heim et al. 2020 (NPU, RealNPU), Mistry et al. 2021 (NMRU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nalu_core._device import resolve_dtype
from nalu_core._errors import ConfigError
from nalu_core._registry import OptionSpec, RegularizerSchedule, register_unit

Generators = Sequence[torch.Generator] | None
WeightInit = Literal["madsen", "xavier_uniform", "normal"]
GateMode = Literal["input", "constant"]

# float32's machine epsilon: the NMRU reference guards its reciprocal with it.
_F32_EPS = float(torch.finfo(torch.float32).eps)


# ---------------------------------------------------------------------------------------------
# Seeded, per-replica initialisation
# ---------------------------------------------------------------------------------------------


def _check_generators(generators: Sequence[torch.Generator], population: int) -> None:
    if len(generators) != population:
        raise ValueError(f"need one generator per replica: {len(generators)=} != {population=}")


@torch.no_grad()
def _fill_(param: Tensor, generators: Generators, kind: str, a: float, b: float) -> None:
    """Fill ``param`` (P, ...) from U[a, b] (``kind="uniform"``) or N(a, b) (``"normal"``).

    Replica i draws from ``generators[i]`` on the generator's own device, so its values do not
    depend on P nor on the device the module lives on. ``None`` uses torch's global RNG.
    """
    if generators is None:
        if kind == "uniform":
            param.uniform_(a, b)
        else:
            param.normal_(a, b)
        return
    _check_generators(generators, param.shape[0])
    draws = []
    for gen in generators:
        draw = torch.empty(param.shape[1:], dtype=param.dtype, device=gen.device)
        if kind == "uniform":
            draw.uniform_(a, b, generator=gen)
        else:
            draw.normal_(a, b, generator=gen)
        draws.append(draw)
    param.copy_(torch.stack(draws))


def _nac_optimal_r(fan_in: int, fan_out: int) -> float:
    """r such that Ŵ, M̂ ~ U[-r, r] gives Var(tanh(Ŵ)σ(M̂)) = 2/fan (Madsen's stable-nalu).

    Var(W)(r) = (1 - tanh(r)/r)(r - tanh(r/2)) / (2r) rises monotonically towards 1/2, so the
    reference floors fan = fan_in + fan_out at 5 (target 0.4, r ≈ 9.6) and bisects on (0, 10].
    """

    def variance(r: float) -> float:
        return (1 - math.tanh(r) / r) * (r - math.tanh(r / 2)) / (2 * r)

    target = 2.0 / max(fan_in + fan_out, 5)
    low, high = 1e-9, 10.0
    for _ in range(80):
        mid = (low + high) / 2
        low, high = (mid, high) if variance(mid) < target else (low, mid)
    return (low + high) / 2


def _init_nac_pair_(
    w_hat: Tensor, m_hat: Tensor, generators: Generators, scheme: str, mean: float, std: float
) -> None:
    """Initialise the Ŵ, M̂ pair (P, out, in) of a NAC-style weight."""
    fan_out, fan_in = w_hat.shape[1], w_hat.shape[2]
    for param in (w_hat, m_hat):
        if scheme == "madsen":
            r = _nac_optimal_r(fan_in, fan_out)
            _fill_(param, generators, "uniform", -r, r)
        elif scheme == "xavier_uniform":
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            _fill_(param, generators, "uniform", -bound, bound)
        else:
            _fill_(param, generators, "normal", mean, std)


def _xavier_bound(fan_in: int, fan_out: int) -> float:
    return math.sqrt(6.0 / (fan_in + fan_out))


# ---------------------------------------------------------------------------------------------
# Shared maths
# ---------------------------------------------------------------------------------------------


# Up to this many inputs, _matmul multiplies and adds whole (P, out, B) planes: bmm costs
# microseconds per (B, in) @ (in, out) product, so thousands of tiny ones are slower.
_BROADCAST_MAX_IN = 2
# Up to this many inputs an NMU with ``batch_major`` takes _NarrowProduct (one plane per input).
_NARROW_PRODUCT_MAX_IN = 8


class _NarrowMatmul(torch.autograd.Function):
    """x (P, B, in) @ weight (P, out, in)^T for a handful of inputs, computed on the
    transposed planes x^T (P, in, B) so every op runs along the contiguous batch dim; the
    output is the transpose of a contiguous (P, out, B), which the next layer reads as x^T."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        xt = x.transpose(1, 2)  # (P, in, B)
        ctx.save_for_backward(xt, weight)
        yt = xt[:, 0:1] * weight[:, :, 0:1]  # (P, out, B)
        for i in range(1, xt.shape[1]):
            yt.addcmul_(xt[:, i : i + 1], weight[:, :, i : i + 1])
        return yt.transpose(1, 2)  # (P, B, out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        xt, weight = ctx.saved_tensors
        gt = grad.transpose(1, 2)  # (P, out, B)
        dx = dw = None
        if ctx.needs_input_grad[0]:
            wt = weight.transpose(1, 2)  # (P, in, out)
            dxt = wt[:, :, 0:1] * gt[:, 0:1]  # (P, in, B)
            for o in range(1, gt.shape[1]):
                dxt.addcmul_(wt[:, :, o : o + 1], gt[:, o : o + 1])
            dx = dxt.transpose(1, 2)  # (P, B, in)
        if ctx.needs_input_grad[1]:
            # dW[:, o, i] = sum_b g[:, o, b] x[:, i, b]
            dw = torch.stack([(gt * xt[:, i : i + 1]).sum(-1) for i in range(xt.shape[1])], -1)
        return dx, dw


class _NarrowProduct(torch.autograd.Function):
    """NMU product z_j = prod_i (W_ji x_i + 1 - W_ji) for a handful of inputs on the
    transposed planes x^T (P, in, B), as :class:`_NarrowMatmul`: every op runs along the
    contiguous batch dim, where the (P, B, out, in) terms of :func:`_product` run along a
    dim of size ``in``. Backward uses the products of the other terms (no division)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor) -> Tensor:
        xt = x.transpose(1, 2)  # (P, in, B)
        terms = [
            torch.addcmul(1 - weight[:, :, i : i + 1], weight[:, :, i : i + 1], xt[:, i : i + 1])
            for i in range(xt.shape[1])
        ]  # in x (P, out, B)
        z = terms[0]
        for term in terms[1:]:
            z = z * term
        ctx.save_for_backward(xt, weight, *terms)
        return z.transpose(1, 2)  # (P, B, out)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        xt, weight, *terms = ctx.saved_tensors
        gt = grad.transpose(1, 2)  # (P, out, B)
        dws = []
        # x's gradient is written plane by plane into one (P, in, B): no cat, and with one
        # output no sum over it (a sum over a size-1 dim is a copy of the same numbers)
        dxt = xt.new_empty(xt.shape) if ctx.needs_input_grad[0] else None  # (P, in, B)
        for i in range(len(terms)):
            others = [t for j, t in enumerate(terms) if j != i]
            g = gt
            for t in others:
                g = g * t  # (P, out, B)
            if ctx.needs_input_grad[1]:
                dws.append((g * (xt[:, i : i + 1] - 1)).sum(-1))  # (P, out)
            if dxt is not None:
                plane = dxt[:, i : i + 1]  # (P, 1, B)
                if g.shape[1] == 1:
                    torch.mul(g, weight[:, :, i : i + 1], out=plane)
                else:
                    torch.sum(g * weight[:, :, i : i + 1], 1, keepdim=True, out=plane)
        dx = dxt.transpose(1, 2) if dxt is not None else None  # (P, B, in)
        dw = torch.stack(dws, -1) if dws else None  # (P, out, in)
        return dx, dw


def ungroup(x: Tensor, population: int) -> Tensor:
    """``x (G, B, ...)`` shared by groups of P/G replicas -> ``(P, B, ...)`` (a copy).

    The population's input may come in G groups (``TrainConfig.data_streams``, or G = 1 for an
    evaluation set): replicas ``g·P/G .. (g+1)·P/G − 1`` read ``x[g]``. Units whose first op is
    per replica anyway (a gate on x, NPU's relevance gate) expand it with this.
    """
    groups = x.shape[0]
    if groups == population:
        return x
    if population % groups:
        raise ValueError(f"{groups=} groups do not divide {population=}")
    size = population // groups
    return x.unsqueeze(1).expand(groups, size, *x.shape[1:]).reshape(population, *x.shape[1:])


def _grouped_planes(x: Tensor, weight: Tensor) -> Tensor:
    """W @ x^T -> (P, out, B) with x (G, B, in) shared by groups of P/G replicas: one GEMM
    per group, its replicas' weights stacked, (G, P/G·out, in) @ (G, in, B)."""
    (P, out, n_in), G = weight.shape, x.shape[0]
    stacked = weight.reshape(G, (P // G) * out, n_in)
    return torch.bmm(stacked, x.transpose(1, 2)).view(P, out, -1)


def _matmul(x: Tensor, weight: Tensor) -> Tensor:
    # (P, B, in) @ (P, in, out) -> (P, B, out); x may be (G, B, in), G | P (see ungroup)
    P = weight.shape[0]
    if x.shape[0] != P:
        if x.dim() == 3 and x.shape[-1] > _BROADCAST_MAX_IN:
            return _grouped_planes(x, weight).transpose(1, 2)
        x = ungroup(x, P)
    if x.dim() == 3 and x.shape[-1] <= _BROADCAST_MAX_IN:
        y: Tensor = _NarrowMatmul.apply(x, weight)  # type: ignore[no-untyped-call]
        return y
    if weight.shape[1] < x.shape[-1]:
        # few outputs: W @ x^T -> (P, out, B) runs about 1.5x faster forward and backward
        # (measured at 100 -> 2), and the transposed result suits a narrow next layer
        return torch.bmm(weight, x.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(x, weight.transpose(1, 2))


def log_abs(
    x: Tensor, epsilon: float, *, scratch: dict[str, Tensor], clip: bool = False
) -> Tensor:
    """log(|x| + ε), or log(max(|x|, ε)) with ``clip``, of the same shape as x.

    For an input that needs no gradient (the data batch of a first layer) the three passes run
    in place in a buffer kept in ``scratch`` across steps: the same kernels, so the same bits,
    without three fresh (P, B, in) temporaries a step (at P = 1024 and 100 inputs each is
    52 MB that glibc maps anew, and their page faults cost 5x the arithmetic: 42 ms against
    8 ms). A graph still holding last step's buffer fails loudly on backward (autograd's
    version counter), it cannot read overwritten numbers.
    """
    if x.requires_grad:
        if clip:
            return torch.log(x.abs().clamp_min(epsilon))
        return torch.log(x.abs() + epsilon)
    buf = scratch.get("log_abs")
    if buf is None or buf.shape != x.shape or buf.dtype != x.dtype or buf.device != x.device:
        buf = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        scratch["log_abs"] = buf
    torch.abs(x, out=buf)
    if clip:
        buf.clamp_min_(epsilon)
    else:
        buf.add_(epsilon)
    return buf.log_()


def _stackable(x: Tensor, out: int, population: int) -> bool:
    """Whether two (P, out, in) weights on ``x`` can share one :func:`_matmul` GEMM: the data
    batch (no gradient, so no change in how x's gradient sums up) in the W @ x^T form, which
    the stacked weight keeps (2·out < in). With one batch per replica (x (P, B, in)) the
    stacked GEMM must also give the numbers of two, which depends on the BLAS kernel the CPU
    gets: :func:`_stacking_is_exact` checks it once per shape."""
    n_in = x.shape[-1]
    if x.requires_grad or x.dim() != 3 or n_in <= _BROADCAST_MAX_IN or 2 * out >= n_in:
        return False
    if x.shape[0] != population:
        return True  # shared streams (G < P) make no bit-for-bit promise
    if x.device.type != "cpu":
        return False
    # each replica's GEMM is its own batch entry of the bmm: a bounded number of them tells
    # what every one does, without a second (P, B, in) batch in memory at large P
    key = (min(population, _PROBE_REPLICAS), out, n_in, x.shape[1], x.dtype)
    exact = _STACKING_EXACT.get(key)
    if exact is None:
        exact = _STACKING_EXACT[key] = _stacking_is_exact(*key)
    return exact


_PROBE_REPLICAS = 64
# (P probed, out, in, B, dtype) -> whether stacking two weights keeps every row's bits here
_STACKING_EXACT: dict[tuple[int, int, int, int, torch.dtype], bool] = {}


def _stacking_is_exact(P: int, out: int, n_in: int, B: int, dtype: torch.dtype) -> bool:
    """Whether ``_matmul`` of two weights stacked gives the bits of two ``_matmul``s, forward
    and for the weights' gradients, on random numbers of this shape. A GEMM's summation order
    comes from its kernel's blocking, not from the numbers, so one probe decides. MKL on an
    Intel Xeon keeps each row's order whatever the row count; on an AMD EPYC it does not
    (tests/nalu_core/test_data_streams.py)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(P, B, n_in, generator=gen, dtype=dtype)  # (P, B, in)
    w1, w2 = (torch.rand(P, out, n_in, generator=gen, dtype=dtype) for _ in range(2))
    grad = torch.rand(P, B, 2 * out, generator=gen, dtype=dtype)  # (P, B, 2·out)
    with torch.enable_grad():
        stacked_w = torch.cat([w1, w2], dim=1).requires_grad_()  # (P, 2·out, in)
        stacked = _matmul(x, stacked_w)  # (P, B, 2·out)
        stacked.backward(grad)  # type: ignore[no-untyped-call]
        parts = []
        for w, g in ((w1, grad[..., :out]), (w2, grad[..., out:])):
            w = w.clone().requires_grad_()
            y = _matmul(x, w)  # (P, B, out)
            y.backward(g.contiguous())  # type: ignore[no-untyped-call]
            parts.append((y.detach(), w.grad))
    assert stacked_w.grad is not None
    same_forward = torch.equal(stacked.detach(), torch.cat([y for y, _ in parts], dim=-1))
    same_grad = torch.equal(stacked_w.grad, torch.cat([g for _, g in parts], dim=1))  # type: ignore[misc]
    return same_forward and same_grad


def _r_sparse(weight: Tensor) -> Tensor:
    """Madsen's R_sparse: mean over the weights of min(|W|, 1 - |W|), per replica -> (P,)."""
    w = weight.abs()
    return torch.minimum(w, 1 - w).flatten(1).mean(dim=1)


def _sparsity_error(*weights: Tensor) -> Tensor:
    """Madsen's sparsity error: max over the weights of min(|W|, |1 - |W||), per replica (P,)."""
    per_tensor = []
    for weight in weights:
        w = weight.detach().abs()
        per_tensor.append(torch.minimum(w, (1 - w).abs()).flatten(1).amax(dim=1))
    return torch.stack(per_tensor).amax(dim=0)


def _product(x: Tensor, weight: Tensor) -> Tensor:
    """NMU product z_j = prod_i (W_ji x_i + 1 - W_ji) for x (P, B, in), W (P, out, in)."""
    P, G = weight.shape[0], x.shape[0]
    if G != P:
        # x (G, B, in) shared by groups of P/G replicas: broadcast, never copied per replica
        B, (out, n_in) = x.shape[1], weight.shape[1:]
        w5 = weight.view(G, P // G, 1, out, n_in)  # (G, P/G, 1, out, in)
        grouped = torch.addcmul(1 - w5, w5, x.view(G, 1, B, 1, n_in))  # (G, P/G, B, out, in)
        return grouped.prod(dim=-1).view(P, B, out)
    w = weight.unsqueeze(1)  # (P, 1, out, in)
    # (1 - W) + W x, in this order, is exact at W = 1 and W = 0 even for tiny x
    terms = torch.addcmul(1 - w, w, x.unsqueeze(2))  # (P, B, out, in)
    return terms.prod(dim=-1)  # (P, B, out)


def _weight_options(default: str, *, extra: tuple[str, ...] = ()) -> dict[str, OptionSpec]:
    schlor = " (schlor: Ŵ ~ N(0.88, 0.2), M̂ ~ N(0.5, 0.2), Schlör's iNALU)" if extra else ""
    return {
        "weight_init": OptionSpec(
            type=str,
            default=default,
            choices=(*extra, "madsen", "xavier_uniform", "normal"),
            doc="Ŵ/M̂ init: Madsen's variance-matched uniform, Glorot uniform, or "
            "N(weight_mean, weight_std)" + schlor,
        ),
        "weight_mean": OptionSpec(type=float, default=0.0, doc="mean of Ŵ/M̂ (normal only)"),
        "weight_std": OptionSpec(type=float, default=0.1, low=0.0, doc="std of Ŵ/M̂ (normal only)"),
    }


_EPSILON = OptionSpec(
    type=float, default=1e-7, low=0.0, doc="ε in log(|x| + ε), keeps the log finite at x = 0"
)


# ---------------------------------------------------------------------------------------------
# Base class
# ---------------------------------------------------------------------------------------------


class PopulationModule(nn.Module):
    """Base of every population unit: P replicas of an ``in -> out`` layer.

    Subclasses create parameters with :meth:`_parameter` and implement :meth:`forward` and
    :meth:`reset_parameters`; the defaults of the other hooks suit units without a regulariser
    or weight constraint.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_features", in_features),
            ("out_features", out_features),
            ("population", population),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, got {value!r}", field=name)
        self.in_features = in_features
        self.out_features = out_features
        self.population = population
        # per-module buffers reused across steps (see log_abs); never part of the state
        self._scratch: dict[str, Tensor] = {}
        self._factory: dict[str, Any] = {
            "device": torch.device(device) if device is not None else None,
            "dtype": resolve_dtype(dtype) if dtype is not None else torch.get_default_dtype(),
        }

    # Kernels laid out along the batch dim where they exist (NMU's narrow product): the same
    # maths with another float rounding. Off by default, so that one stream per seed keeps the
    # reference layout's numbers bit for bit; the trainer turns it on for shared data streams
    # (G < P), whose numbers no earlier run pinned.
    batch_major: bool = False

    def _parameter(self, *shape: int) -> nn.Parameter:
        return nn.Parameter(torch.empty(self.population, *shape, **self._factory))

    def reset_parameters(self, generators: Generators = None) -> None:
        raise NotImplementedError

    def regularization(self) -> Tensor:
        """Unscaled sparsity regulariser per replica (P,); zeros when the unit has none."""
        return torch.zeros(self.population, **self._current())

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the parameters back into their domain (after each optimiser step)."""

    def sparsity_error(self) -> Tensor:
        """Madsen's sparsity error per replica (P,); NaN where it is not meaningful."""
        return torch.full((self.population,), math.nan, **self._current())

    def _current(self) -> dict[str, Any]:
        # the module may have been moved with .to() since construction
        ref = next(self.parameters(), None)
        if ref is None:
            return self._factory
        return {"device": ref.device, "dtype": ref.dtype}

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"population={self.population}"
        )


# ---------------------------------------------------------------------------------------------
# NAC and NALU (Trask et al. 2018)
# ---------------------------------------------------------------------------------------------


class NAC(PopulationModule):
    """Neural accumulator: W = tanh(Ŵ) ⊙ σ(M̂).

    ``op="add"`` computes W x; ``op="mul"`` computes exp(W · log(|x| + ε)).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        op: Literal["add", "mul"] = "add",
        epsilon: float = 1e-7,
        weight_init: WeightInit = "madsen",
        weight_mean: float = 0.0,
        weight_std: float = 0.1,
    ) -> None:
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )
        if op not in ("add", "mul"):
            raise ConfigError(f"op must be 'add' or 'mul', got {op!r}", field="op")
        self.op = op
        self.epsilon = epsilon
        self.weight_init, self.weight_mean, self.weight_std = weight_init, weight_mean, weight_std
        self.W_hat = self._parameter(out_features, in_features)  # (P, out, in)
        self.M_hat = self._parameter(out_features, in_features)  # (P, out, in)
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        pair = (generators, self.weight_init, self.weight_mean, self.weight_std)
        _init_nac_pair_(self.W_hat, self.M_hat, *pair)

    def weight(self) -> Tensor:
        return torch.tanh(self.W_hat) * torch.sigmoid(self.M_hat)  # (P, out, in)

    def forward(self, x: Tensor) -> Tensor:
        if self.op == "add":
            return _matmul(x, self.weight())
        log_x = log_abs(x, self.epsilon, scratch=self._scratch)  # (G|P, B, in)
        return torch.exp(_matmul(log_x, self.weight()))

    def regularization(self) -> Tensor:
        return _r_sparse(self.weight())

    def sparsity_error(self) -> Tensor:
        return _sparsity_error(self.weight())


class NALU(PopulationModule):
    """Neural arithmetic logic unit: y = g ⊙ a + (1 − g) ⊙ m.

    a = W_a x and m = exp(W_m log(|x| + ε)), with W = tanh(Ŵ) ⊙ σ(M̂) shared between the paths
    (Trask) or separate. The gate is σ(G x [+ b]) (``gate="input"``, Trask) or a learned
    input-independent σ(c) per output (``gate="constant"``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        epsilon: float = 1e-7,
        gate: GateMode = "input",
        shared_weights: bool = True,
        gate_bias: bool = False,
        gate_init_mean: float = 0.0,
        gate_init_std: float | None = None,
        gate_init_bias: float = 0.0,
        weight_init: WeightInit = "madsen",
        weight_mean: float = 0.0,
        weight_std: float = 0.1,
    ) -> None:
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )
        if gate not in ("input", "constant"):
            raise ConfigError(f"gate must be 'input' or 'constant', got {gate!r}", field="gate")
        self.epsilon, self.gate, self.shared_weights = epsilon, gate, shared_weights
        self.gate_init = (gate_init_mean, gate_init_std, gate_init_bias)
        self.weight_init, self.weight_mean, self.weight_std = weight_init, weight_mean, weight_std
        self.W_hat = self._parameter(out_features, in_features)  # (P, out, in)
        self.M_hat = self._parameter(out_features, in_features)  # (P, out, in)
        if not shared_weights:
            self.W_hat_mul = self._parameter(out_features, in_features)  # (P, out, in)
            self.M_hat_mul = self._parameter(out_features, in_features)  # (P, out, in)
        if gate == "input":
            self.G = self._parameter(out_features, in_features)  # (P, out, in)
            self.gate_b = self._parameter(out_features) if gate_bias else None  # (P, out)
        else:
            self.G = self._parameter(out_features)  # (P, out): one logit per output
            self.gate_b = None
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        pair = (generators, self.weight_init, self.weight_mean, self.weight_std)
        _init_nac_pair_(self.W_hat, self.M_hat, *pair)
        if not self.shared_weights:
            _init_nac_pair_(self.W_hat_mul, self.M_hat_mul, *pair)
        mean, std, bias = self.gate_init
        if self.gate == "input" and std is None:
            bound = _xavier_bound(self.in_features, self.out_features)
            _fill_(self.G, generators, "uniform", mean - bound, mean + bound)
        else:
            # a constant gate starts at σ(mean + bias) unless a spread is asked for
            offset = bias if self.gate == "constant" else 0.0
            _fill_(self.G, generators, "normal", mean + offset, std or 0.0)
        if self.gate_b is not None:
            with torch.no_grad():
                self.gate_b.fill_(bias)

    def weights(self) -> tuple[Tensor, Tensor]:
        """The (additive, multiplicative) weights, each (P, out, in)."""
        w_add = torch.tanh(self.W_hat) * torch.sigmoid(self.M_hat)
        if self.shared_weights:
            return w_add, w_add
        return w_add, torch.tanh(self.W_hat_mul) * torch.sigmoid(self.M_hat_mul)

    def gate_values(self, x: Tensor) -> Tensor:
        """g in (0, 1): (P, B, out) for an input gate, (P, 1, out) for a constant gate."""
        if self.gate == "constant":
            return torch.sigmoid(self.G).unsqueeze(1)
        logits = _matmul(x, self.G)
        if self.gate_b is not None:
            logits = logits + self.gate_b.unsqueeze(1)
        return torch.sigmoid(logits)

    def forward(self, x: Tensor) -> Tensor:
        w_add, w_mul = self.weights()
        if self.gate == "input" and _stackable(x, self.out_features, self.population):
            # W and G read the same x: one GEMM over their stacked rows (the same numbers)
            out = self.out_features
            stacked = torch.cat([w_add, self.G], dim=1)  # (P, 2·out, in)
            if x.shape[0] != self.population:
                # split along the planes (P, 2·out, B): its backward is one cat of the two
                # gradients, in the layout the GEMM's backward reads (slicing (P, B, 2·out)
                # costs a zero-filled tensor per slice and a transposing copy, 2 ms a step
                # at G = 32); at G = P the slices stay, as the bits were pinned with them
                planes = _grouped_planes(x, stacked)  # (P, 2·out, B)
                a_t, logits_t = torch.split(planes, out, dim=1)  # (P, out, B) each
                a, logits = a_t.transpose(1, 2), logits_t.transpose(1, 2)
            else:
                both = _matmul(x, stacked)  # (P, B, 2·out)
                a, logits = both[..., :out], both[..., out:]
            if self.gate_b is not None:
                logits = logits + self.gate_b.unsqueeze(1)
            g = torch.sigmoid(logits)
        else:
            a = _matmul(x, w_add)  # (P, B, out)
            g = self.gate_values(x)
        log_x = log_abs(x, self.epsilon, scratch=self._scratch)  # (G|P, B, in)
        m = torch.exp(_matmul(log_x, w_mul))  # (P, B, out)
        return g * a + (1 - g) * m

    def regularization(self) -> Tensor:
        w_add, w_mul = self.weights()
        if self.shared_weights:
            return _r_sparse(w_add)
        return (_r_sparse(w_add) + _r_sparse(w_mul)) / 2

    def sparsity_error(self) -> Tensor:
        return _sparsity_error(*self.weights())


# ---------------------------------------------------------------------------------------------
# NAU and NMU (Madsen & Johansen 2020)
# ---------------------------------------------------------------------------------------------


class NAU(PopulationModule):
    """Neural addition unit: a = W x with W clamped to [−1, 1]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        clamp: bool = True,
    ) -> None:
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )
        self.clamp = clamp
        self.W = self._parameter(out_features, in_features)  # (P, out, in)
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        std = math.sqrt(2.0 / (self.in_features + self.out_features))
        r = min(0.5, math.sqrt(3.0) * std)
        _fill_(self.W, generators, "uniform", -r, r)

    def forward(self, x: Tensor) -> Tensor:
        return _matmul(x, self.W)

    def regularization(self) -> Tensor:
        return _r_sparse(self.W)

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.clamp:
            self.W.clamp_(-1.0, 1.0)

    def sparsity_error(self) -> Tensor:
        return _sparsity_error(self.W)


class NMU(PopulationModule):
    """Neural multiplication unit: z_j = ∏_i (W_ji x_i + 1 − W_ji) with W clamped to [0, 1]."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        clamp: bool = True,
    ) -> None:
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )
        self.clamp = clamp
        self.W = self._parameter(out_features, in_features)  # (P, out, in)
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        _fill_(self.W, generators, "uniform", 0.25, 0.75)

    def forward(self, x: Tensor) -> Tensor:
        if self.batch_major and x.dim() == 3 and x.shape[0] == self.population:
            if x.shape[-1] <= _NARROW_PRODUCT_MAX_IN:
                y: Tensor = _NarrowProduct.apply(x, self.W)  # type: ignore[no-untyped-call]
                return y
        return _product(x, self.W)

    def regularization(self) -> Tensor:
        return _r_sparse(self.W)

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.clamp:
            self.W.clamp_(0.0, 1.0)

    def sparsity_error(self) -> Tensor:
        return _sparsity_error(self.W)


# ---------------------------------------------------------------------------------------------
# iNALU (Schlör et al. 2020)
# ---------------------------------------------------------------------------------------------


class INALU(PopulationModule):
    """Improved NALU: separate add/mul weights, an independent gate per output, sign recovery.

    m = exp(min(W_m · log(max(|x|, ε)), ω)) ⊙ ∏_i (sgn(x_i)|W_m,i| + 1 − |W_m,i|);
    out = g ⊙ (W_a x) + (1 − g) ⊙ m. The published unit (Schlör et al. 2020, as
    nalm-benchmark's ``layer/inalu.py`` runs it): an input-independent gate g = σ(ĝ) per
    output, ĝ ~ N(0, 0.2); Ŵ ~ N(0.88, 0.2), M̂ ~ N(0.5, 0.2); Schlör's regulariser
    Σ_θ mean(max(20 − |θ|, 0)) over Ŵ_a, M̂_a, Ŵ_m, M̂_m, ĝ. ``gate="input"`` (σ(G x), Glorot
    G), other ``weight_init`` schemes and ``regularizer="r_sparse"`` remain as options.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        epsilon: float = 1e-7,
        max_exponent: float = 20.0,
        gate: GateMode = "constant",
        regularizer: str = "schlor",
        weight_init: str = "schlor",
        weight_mean: float = 0.0,
        weight_std: float = 0.1,
    ) -> None:
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )
        self.epsilon, self.max_exponent = epsilon, max_exponent
        self.gate, self.regularizer = gate, regularizer
        self.weight_init, self.weight_mean, self.weight_std = weight_init, weight_mean, weight_std
        self.W_hat_add = self._parameter(out_features, in_features)  # (P, out, in)
        self.M_hat_add = self._parameter(out_features, in_features)  # (P, out, in)
        self.W_hat_mul = self._parameter(out_features, in_features)  # (P, out, in)
        self.M_hat_mul = self._parameter(out_features, in_features)  # (P, out, in)
        if gate == "input":
            self.G = self._parameter(out_features, in_features)  # (P, out, in)
        else:
            self.g_hat = self._parameter(out_features)  # (P, out)
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        if self.weight_init == "schlor":
            for param, mean in (
                (self.W_hat_add, 0.88),
                (self.M_hat_add, 0.5),
                (self.W_hat_mul, 0.88),
                (self.M_hat_mul, 0.5),
            ):
                _fill_(param, generators, "normal", mean, 0.2)
        else:
            pair = (generators, self.weight_init, self.weight_mean, self.weight_std)
            _init_nac_pair_(self.W_hat_add, self.M_hat_add, *pair)
            _init_nac_pair_(self.W_hat_mul, self.M_hat_mul, *pair)
        if self.gate == "input":
            bound = _xavier_bound(self.in_features, self.out_features)
            _fill_(self.G, generators, "uniform", -bound, bound)
        else:
            _fill_(self.g_hat, generators, "normal", 0.0, 0.2)

    def weights(self) -> tuple[Tensor, Tensor]:
        w_add = torch.tanh(self.W_hat_add) * torch.sigmoid(self.M_hat_add)
        w_mul = torch.tanh(self.W_hat_mul) * torch.sigmoid(self.M_hat_mul)
        return w_add, w_mul

    def forward(self, x: Tensor) -> Tensor:
        w_add, w_mul = self.weights()
        a = _matmul(x, w_add)  # (P, B, out)
        log_x = log_abs(x, self.epsilon, scratch=self._scratch, clip=True)
        m = torch.exp(_matmul(log_x, w_mul).clamp_max(self.max_exponent))  # (P, B, out)
        # sign recovery: an input with |W| = 1 contributes its sign, |W| = 0 contributes +1
        w_abs = w_mul.abs().unsqueeze(1)  # (P, 1, out, in)
        sign_x = ungroup(torch.sign(x), self.population)  # (P, B, in)
        sign = (sign_x.unsqueeze(2) * w_abs + 1 - w_abs).prod(dim=-1)  # (P, B, out)
        if self.gate == "input":
            g = torch.sigmoid(_matmul(x, self.G))  # (P, B, out)
        else:
            g = torch.sigmoid(self.g_hat).unsqueeze(1)  # (P, 1, out)
        return g * a + (1 - g) * m * sign

    def regularization(self) -> Tensor:
        if self.regularizer == "r_sparse":
            w_add, w_mul = self.weights()
            return (_r_sparse(w_add) + _r_sparse(w_mul)) / 2
        params = [self.W_hat_add, self.M_hat_add, self.W_hat_mul, self.M_hat_mul]
        params.append(self.G if self.gate == "input" else self.g_hat)
        # Schlör: pushes every raw parameter out to |θ| >= 20, where tanh/σ saturate
        terms = [(20 - p.abs()).clamp_min(0).flatten(1).mean(1) for p in params]
        return torch.stack(terms).sum(0)  # (P,)

    def sparsity_error(self) -> Tensor:
        return _sparsity_error(*self.weights())


# ---------------------------------------------------------------------------------------------
# NPU and RealNPU (Heim et al. 2020)
# ---------------------------------------------------------------------------------------------


class NPU(PopulationModule):
    """Neural power unit with a relevance gate g ∈ [0, 1] per input.

    r = g ⊙ (|x| + ε) + 1 − g, k = π g ⊙ [x < 0];
    z = exp(W_re log r − W_im k) ⊙ cos(W_im log r + W_re k). ``real=True`` drops W_im (RealNPU).
    The forward pass reads g clamped to [0, 1]; ``clamp_gate`` also projects the stored g
    after each step (the reference does not, ``npu_clip: none``). ``regularizer="l1"``:
    Σ|θ| over the unit's parameters (nalm-benchmark's ``--regualizer-l1``), scaled by the
    RealNPU's β schedule.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        real: bool = False,
        epsilon: float = 1e-7,
        gate_init: float = 0.5,
        clamp_gate: bool = False,
        regularizer: str = "none",
    ) -> None:
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )
        self.real, self.epsilon, self.gate_init = real, epsilon, gate_init
        self.clamp_gate, self.regularizer = clamp_gate, regularizer
        self.W_re = self._parameter(out_features, in_features)  # (P, out, in)
        self.W_im = None if real else self._parameter(out_features, in_features)
        self.g = self._parameter(in_features)  # (P, in)
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        bound = _xavier_bound(self.in_features, self.out_features)
        _fill_(self.W_re, generators, "uniform", -bound, bound)
        with torch.no_grad():
            # Heim et al.: imaginary weights start at 0, relevance gates at 0.5
            if self.W_im is not None:
                self.W_im.zero_()
            self.g.fill_(self.gate_init)

    def forward(self, x: Tensor) -> Tensor:
        g = self.g.clamp(0.0, 1.0).unsqueeze(1)  # (P, 1, in)
        x = ungroup(x, self.population)  # the gate is per replica: log r cannot be shared
        r = g * (x.abs() + self.epsilon) + 1 - g  # (P, B, in)
        k = g * (x < 0).to(x.dtype) * math.pi  # (P, B, in)
        log_r = torch.log(r)
        if self.W_im is None:
            return torch.exp(_matmul(log_r, self.W_re)) * torch.cos(_matmul(k, self.W_re))
        magnitude = torch.exp(_matmul(log_r, self.W_re) - _matmul(k, self.W_im))
        return magnitude * torch.cos(_matmul(log_r, self.W_im) + _matmul(k, self.W_re))

    def regularization(self) -> Tensor:
        if self.regularizer != "l1":
            return super().regularization()
        return sum(p.abs().flatten(1).sum(1) for p in self.parameters())  # type: ignore[return-value]

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.clamp_gate:
            self.g.clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# NMRU (Mistry et al. 2021)
# ---------------------------------------------------------------------------------------------


class NMRU(PopulationModule):
    """Neural multiplication reciprocal unit: an NMU over [x, 1/x] (2·in inputs).

    ``reciprocal="reference"`` (the published unit, nalm-division's
    ``layer/concat_reciprocal_nmu*.py``): 1/(x + ε) in training, the exact 1/x in evaluation
    (``module.eval()``); ``"floored"``: sign(x)/max(|x|, ε) always (finite at 0).
    ``sign_retrieval`` (Mistry's division runs, ``SignNMRU``): the NMU works on |[x, 1/x]|
    and the output is multiplied by cos(π k · W) with k = [x, 1/x] < 0, so that negative
    inputs with weight 1 flip the sign.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        epsilon: float = _F32_EPS,
        clamp: bool = True,
        reciprocal: str = "reference",
        sign_retrieval: bool = False,
    ) -> None:
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )
        self.epsilon, self.clamp = epsilon, clamp
        self.reciprocal, self.sign_retrieval = reciprocal, sign_retrieval
        self.W = self._parameter(out_features, 2 * in_features)  # (P, out, 2·in)
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        _fill_(self.W, generators, "uniform", 0.25, 0.75)

    def _reciprocal(self, x: Tensor) -> Tensor:
        if self.reciprocal == "floored":
            sign = torch.where(x < 0, -1.0, 1.0).to(x.dtype)
            return sign / x.abs().clamp_min(self.epsilon)
        return 1 / (x + self.epsilon) if self.training else 1 / x

    def forward(self, x: Tensor) -> Tensor:
        z = torch.cat((x, self._reciprocal(x)), dim=-1)  # (P, B, 2·in)
        if not self.sign_retrieval:
            return _product(z, self.W)  # (P, B, out)
        k = (z < 0).to(z.dtype) * math.pi  # (P, B, 2·in)
        return _product(z.abs(), self.W) * torch.cos(_matmul(k, self.W))  # (P, B, out)

    def regularization(self) -> Tensor:
        return _r_sparse(self.W)

    @torch.no_grad()
    def clamp_(self) -> None:
        if self.clamp:
            self.W.clamp_(0.0, 1.0)

    def sparsity_error(self) -> Tensor:
        return _sparsity_error(self.W)


# ---------------------------------------------------------------------------------------------
# Baselines: linear and MLP layers (Trask et al. 2018, Table 1)
# ---------------------------------------------------------------------------------------------

ACTIVATIONS = (
    "none",
    "relu",
    "relu6",
    "tanh",
    "sigmoid",
    "softsign",
    "selu",
    "elu",
    "leaky_relu",
    "crelu",
)


def _activate(z: Tensor, name: str) -> Tensor:
    if name == "none":
        return z
    if name == "crelu":
        return torch.cat((F.relu(z), F.relu(-z)), dim=-1)
    functions: dict[str, Callable[[Tensor], Tensor]] = {
        "relu": F.relu,
        "relu6": F.relu6,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "softsign": F.softsign,
        "selu": F.selu,
        "elu": F.elu,
        "leaky_relu": F.leaky_relu,
    }
    return functions[name](z)


class Linear(PopulationModule):
    """An affine layer W x + b followed by an activation (``"none"`` for the Linear baseline).

    ``crelu`` outputs [relu(z), relu(−z)], doubling the width: the affine part then has
    ⌈out/2⌉ units and the concatenation is cut to ``out_features`` (only an odd width loses
    the last relu(−z), e.g. a 1-output crelu layer is a relu layer).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        activation: str = "none",
        bias: bool = True,
    ) -> None:
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}",
                field="activation",
            )
        self.activation = activation
        self.width = math.ceil(out_features / 2) if activation == "crelu" else out_features
        self.W = self._parameter(self.width, in_features)  # (P, width, in)
        self.b = self._parameter(self.width) if bias else None  # (P, width)
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        # torch.nn.Linear's default: U(±1/√in) for both W and b
        bound = 1.0 / math.sqrt(self.in_features)
        _fill_(self.W, generators, "uniform", -bound, bound)
        if self.b is not None:
            _fill_(self.b, generators, "uniform", -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        z = _matmul(x, self.W)  # (P, B, width)
        if self.b is not None:
            z = z + self.b.unsqueeze(1)
        return _activate(z, self.activation)[..., : self.out_features]

    def sparsity_error(self) -> Tensor:
        if self.activation != "none":
            return super().sparsity_error()
        return _sparsity_error(self.W)


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------

_CLAMP = OptionSpec(type=bool, default=True, doc="clamp W into its domain after each step")

register_unit(
    "nac_add",
    NAC,
    fixed={"op": "add"},
    options=_weight_options("madsen"),
    doc="NAC₊ (Trask 2018): W x with W = tanh(Ŵ) ⊙ σ(M̂)",
)
register_unit(
    "nac_mul",
    NAC,
    fixed={"op": "mul"},
    options={"epsilon": _EPSILON, **_weight_options("madsen")},
    doc="NAC• (Trask 2018): exp(W · log(|x| + ε))",
)
register_unit(
    "nalu",
    NALU,
    options={
        "epsilon": _EPSILON,
        "gate": OptionSpec(
            type=str,
            default="input",
            choices=("input", "constant"),
            doc="σ(G x) (Trask) or a learned input-independent gate",
        ),
        "shared_weights": OptionSpec(
            type=bool, default=True, doc="one W for both paths (Trask) or separate W_a, W_m"
        ),
        "gate_bias": OptionSpec(type=bool, default=False, doc="add a learned bias to G x"),
        "gate_init_mean": OptionSpec(type=float, default=0.0, doc="mean of the gate init"),
        "gate_init_std": OptionSpec(
            type=float,
            default=None,
            low=0.0,
            nullable=True,
            doc="std of a normal gate init; null: Glorot uniform (input gate) or 0 (constant)",
        ),
        "gate_init_bias": OptionSpec(
            type=float,
            default=0.0,
            doc="initial gate bias (input gate with gate_bias) or offset (constant gate)",
        ),
        **_weight_options("madsen"),
    },
    doc="NALU (Trask 2018): g ⊙ (W x) + (1 − g) ⊙ exp(W log(|x| + ε))",
)
register_unit(
    "nau",
    NAU,
    options={"clamp": _CLAMP},
    regularizer=RegularizerSchedule(lambda_=0.01, start=5_000, end=50_000),
    doc="NAU (Madsen 2020): W x with W clamped to [−1, 1]",
)
register_unit(
    "nmu",
    NMU,
    options={"clamp": _CLAMP},
    regularizer=RegularizerSchedule(lambda_=10.0, start=1_000_000, end=2_000_000),
    doc="NMU (Madsen 2020): ∏_i (W_i x_i + 1 − W_i) with W clamped to [0, 1]",
)
register_unit(
    "inalu",
    INALU,
    options={
        "epsilon": OptionSpec(
            type=float, default=1e-7, low=0.0, low_open=True, doc="log input clipped at ε"
        ),
        "max_exponent": OptionSpec(
            type=float, default=20.0, low=0.0, low_open=True, doc="exponent cap ω"
        ),
        "gate": OptionSpec(
            type=str,
            default="constant",
            choices=("constant", "input"),
            doc="σ(ĝ) per output, ĝ ~ N(0, 0.2) (Schlör), or σ(G x) with Glorot G",
        ),
        "regularizer": OptionSpec(
            type=str,
            default="schlor",
            choices=("schlor", "r_sparse"),
            doc="Schlör's Σ mean(max(20 − |θ|, 0)) over the raw parameters, or R_sparse",
        ),
        **_weight_options("schlor", extra=("schlor",)),
    },
    # nalm-benchmark: 0.05 · R after step 10k, once the interpolation error is below 1
    regularizer=RegularizerSchedule(
        lambda_=0.05, start=10_001, end=10_001, max_interpolation_mse=1.0
    ),
    doc="iNALU (Schlör 2020): separate weights, independent gates, sign recovery",
)
_GATE_INIT = OptionSpec(
    type=float, default=0.5, low=0.0, high=1.0, doc="initial relevance gate value"
)
_CLAMP_GATE = OptionSpec(
    type=bool, default=False, doc="clamp the stored g to [0, 1] after each step (reference: no)"
)
# Mistry's division baselines (sltr-in2.sh): RealNPU β 1e-9, ×10 every 10k steps, up to 1e-7;
# NMRU --regualizer 10 over 20k -> 35k
REALNPU_BETA = RegularizerSchedule(
    lambda_=1e-7, kind="geometric", initial=1e-9, growth=10.0, every=10_000
)
NMRU_SCHEDULE = RegularizerSchedule(lambda_=10.0, start=20_000, end=35_000)


def _npu_options(epsilon: OptionSpec, regularizer: str) -> dict[str, OptionSpec]:
    other = "none" if regularizer == "l1" else "l1"
    return {
        "epsilon": epsilon,
        "gate_init": _GATE_INIT,
        "clamp_gate": _CLAMP_GATE,
        "regularizer": OptionSpec(
            type=str,
            default=regularizer,
            choices=(regularizer, other),
            doc="L1 Σ|θ| over the parameters, scaled by the unit's schedule (RealNPU: β), or none",
        ),
    }


register_unit(
    "npu",
    NPU,
    fixed={"real": False},
    options=_npu_options(_EPSILON, "none"),
    doc="NPU (Heim 2020): complex-weight power unit with a relevance gate",
)
register_unit(
    "realnpu",
    NPU,
    fixed={"real": True},
    options=_npu_options(
        OptionSpec(type=float, default=_F32_EPS, low=0.0, doc="ε in log(|x| + ε) (float32's)"),
        "l1",
    ),
    regularizer=REALNPU_BETA,
    doc="RealNPU (Heim 2020): the NPU with real weights only",
)
register_unit(
    "nmru",
    NMRU,
    options={
        "epsilon": OptionSpec(
            type=float,
            default=_F32_EPS,
            low=0.0,
            low_open=True,
            doc="ε of the training reciprocal 1/(x + ε) (or the |x| floor when floored)",
        ),
        "clamp": _CLAMP,
        "reciprocal": OptionSpec(
            type=str,
            default="reference",
            choices=("reference", "floored"),
            doc="1/(x + ε) in training and exact 1/x in evaluation, or sign(x)/max(|x|, ε)",
        ),
        "sign_retrieval": OptionSpec(
            type=bool, default=False, doc="Mistry's sign-retrieving NMRU (division runs)"
        ),
    },
    regularizer=NMRU_SCHEDULE,
    doc="NMRU (Mistry 2021): an NMU over the inputs and their reciprocals",
)
_BIAS = OptionSpec(type=bool, default=True, doc="learn a bias b")
register_unit(
    "linear",
    Linear,
    fixed={"activation": "none"},
    options={"bias": _BIAS},
    doc="Linear baseline: W x + b",
)
register_unit(
    "mlp",
    Linear,
    options={
        "activation": OptionSpec(
            type=str, default="relu", choices=ACTIVATIONS, doc="activation after W x + b"
        ),
        "bias": _BIAS,
    },
    doc="MLP layer (Trask 2018 Table 1): act(W x + b); crelu keeps the width (see docs)",
)
