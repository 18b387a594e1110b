"""Population-batched recurrent cells (LSTM, GRU, plain RNN) and recurrent heads.

Every parameter has a leading replica dimension ``P``, so ``P`` independently seeded models
run as one batched program (``matmul`` over the replica dim), exactly like the arithmetic
units. No ``torch.func.vmap`` is needed: the cells are written batched natively.

The sequence models of the tasks (recurrent arithmetic, MNIST, number translation) share one
rule for reading a :class:`~nalu_core.ModelConfig` as a recurrent head, implemented by
:class:`RecurrentHead`:

- leading layers of kind ``"recurrent"`` (``lstm``, ``gru``, ``rnn``): a stacked RNN with
  ``hidden_size`` units; the remaining layer units (a linear readout when there are none)
  map the last cell's hidden state to the output. Cells cannot follow a layer unit.
- ``layers[0]`` of kind ``"layer"`` (``nac_add``, ``nalu``, ``linear``, ...): it is applied as an
  *accumulating recurrence* ``h_t = unit([h_{t-1}, x_t])`` (Trask et al. 2018, the recurrent
  NAC); its state has ``hidden_size`` units and ``layers[1:]`` read it out, or, when the model has
  one layer, ``out_features`` units
  (then the state is the prediction, as in Trask's MNIST counting model).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from nalu_core._config import LayerConfig, ModelConfig
from nalu_core._errors import ConfigError
from nalu_core._registry import UNITS, OptionSpec, RegularizerSchedule, get_unit, register_unit
from nalu_core._units import Generators, PopulationModule, _fill_

Nonlinearity = Literal["tanh", "relu"]
State = tuple[Tensor, ...]


class PopulationRecurrentCell(PopulationModule):
    """Shared machinery: ``G`` gates of width ``H``, PyTorch's U(-1/sqrt(H), 1/sqrt(H)) init.

    ``in_features`` is the width of ``x_t`` and ``out_features`` the hidden size ``H``.
    """

    gates: int = 1

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> None:
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )
        gh = self.gates * out_features
        self.weight_ih = self._parameter(in_features, gh)  # (P, in, G*H)
        self.weight_hh = self._parameter(out_features, gh)  # (P, H, G*H)
        self.bias = self._parameter(1, gh)  # (P, 1, G*H)
        self.reset_parameters()

    def reset_parameters(self, generators: Generators = None) -> None:
        bound = 1.0 / math.sqrt(self.out_features)
        for param in (self.weight_ih, self.weight_hh, self.bias):
            _fill_(param, generators, "uniform", -bound, bound)

    def initial_state(self, batch: int) -> State:
        h = self.weight_hh.new_zeros(self.population, batch, self.out_features)
        return (h,)

    def step(self, xw: Tensor, state: State) -> State:
        """One step from the projected input ``xw = x_t W_ih + b``, (P, B, G*H)."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """(P, B, T, in) -> hidden states (P, B, T, H), from a zero state."""
        P, B, T, _ = x.shape
        # the input projection of all steps at once; only the recurrence is sequential
        xw = torch.baddbmm(self.bias, x.reshape(P, B * T, -1), self.weight_ih)  # (P, B*T, G*H)
        xw = xw.reshape(P, B, T, -1)
        state = self.initial_state(B)
        outputs = []
        for t in range(T):
            state = self.step(xw[:, :, t], state)
            outputs.append(state[0])
        return torch.stack(outputs, dim=2)  # (P, B, T, H)


class PopulationLSTM(PopulationRecurrentCell):
    """LSTM cell (gates i, f, g, o in PyTorch's order); state (h, c)."""

    gates = 4

    def initial_state(self, batch: int) -> State:
        h = self.weight_hh.new_zeros(self.population, batch, self.out_features)
        return (h, h.clone())

    def step(self, xw: Tensor, state: State) -> State:
        h, c = state  # (P, B, H) each
        z = xw + torch.bmm(h, self.weight_hh)  # (P, B, 4H)
        i, f, g, o = z.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h, c)


class PopulationGRU(PopulationRecurrentCell):
    """GRU cell (gates r, z, n in PyTorch's order; one bias on the input side)."""

    gates = 3

    def step(self, xw: Tensor, state: State) -> State:
        (h,) = state  # (P, B, H)
        H = self.out_features
        hw = torch.bmm(h, self.weight_hh)  # (P, B, 3H)
        r = torch.sigmoid(xw[..., :H] + hw[..., :H])
        z = torch.sigmoid(xw[..., H : 2 * H] + hw[..., H : 2 * H])
        n = torch.tanh(xw[..., 2 * H :] + r * hw[..., 2 * H :])
        return ((1 - z) * n + z * h,)


class PopulationRNN(PopulationRecurrentCell):
    """Elman RNN ``h_t = act(x_t W_ih + h_{t-1} W_hh + b)``; ReLU is Trask's baseline."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
        nonlinearity: Nonlinearity = "relu",
    ) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ConfigError(
                f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity=}",
                field="nonlinearity",
            )
        self.nonlinearity = nonlinearity
        super().__init__(
            in_features, out_features, population=population, device=device, dtype=dtype
        )

    def step(self, xw: Tensor, state: State) -> State:
        (h,) = state
        z = xw + torch.bmm(h, self.weight_hh)  # (P, B, H)
        return (torch.relu(z) if self.nonlinearity == "relu" else torch.tanh(z),)


RECURRENT_CELLS: dict[str, type[PopulationRecurrentCell]] = {
    "lstm": PopulationLSTM,
    "gru": PopulationGRU,
    "rnn": PopulationRNN,
}


def register_recurrent_units() -> None:
    """Adds ``lstm``, ``gru`` and ``rnn`` to the unit registry as ``kind="recurrent"``."""
    docs = {
        "lstm": "Population LSTM cell (Hochreiter & Schmidhuber 1997), Trask's LSTM baseline.",
        "gru": "Population GRU cell (Cho et al. 2014).",
        "rnn": "Population Elman RNN; nonlinearity relu is Trask's ReLU-RNN baseline.",
    }
    for name, cls in RECURRENT_CELLS.items():
        if name in UNITS:
            continue
        options = {}
        if cls is PopulationRNN:
            options["nonlinearity"] = OptionSpec(
                type=str, default="relu", choices=("relu", "tanh"), doc="hidden activation"
            )
        register_unit(name, cls, kind="recurrent", options=options, doc=docs[name])


register_recurrent_units()


def _build_layer(
    layer: LayerConfig,
    in_features: int,
    out_features: int,
    *,
    population: int,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    field: str,
) -> nn.Module:
    """A single population unit through the registry, its options validated under ``field``."""
    spec = get_unit(layer.unit, field=f"{field}.unit")
    options = spec.validate_options(layer.options, prefix=f"{field}.options")
    return spec.build(
        in_features, out_features, population=population, device=device, dtype=dtype, **options
    )


def unit_kind(unit: str, *, field: str = "unit") -> str:
    """The registry's kind of ``unit``: ``"recurrent"`` (a cell) or ``"layer"``."""
    return str(get_unit(unit, field=field).kind)


class RecurrentHead(nn.Module):
    """Reads a sequence (P, B, T, in) into outputs (P, B, out) at the last step, or every step.

    See the module docstring for how ``model`` is read. All replicas run batched.
    """

    def __init__(
        self,
        model: ModelConfig,
        in_features: int,
        out_features: int,
        *,
        population: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        layers = model.layers
        kinds = [
            unit_kind(la.unit, field=f"model.layers[{i}].unit") for i, la in enumerate(layers)
        ]
        # a leading run of cells is a stacked RNN; without one, layer 0 accumulates
        n_cells = next((i for i, kind in enumerate(kinds) if kind != "recurrent"), len(kinds))
        self.recurrent = n_cells > 0
        n_core = max(n_cells, 1)
        for i in range(n_core, len(layers)):
            if kinds[i] == "recurrent":
                raise ConfigError(
                    f"recurrent unit {layers[i].unit!r} at layer {i} follows a non-recurrent "
                    "layer; cells must come first",
                    field=f"model.layers[{i}].unit",
                )
        rest = layers[n_core:]
        if self.recurrent and not rest:
            # cells alone have no output map: read them out linearly, as Trask's baselines do
            rest = (LayerConfig(unit="linear"),)
        self.state_size = model.hidden_size if rest else out_features
        kw: dict[str, Any] = {"population": population, "device": device, "dtype": dtype}
        if self.recurrent:
            cell_in = [in_features] + [self.state_size] * (n_core - 1)
        else:
            cell_in = [self.state_size + in_features]
        self.cells = nn.ModuleList(
            _build_layer(layers[i], cell_in[i], self.state_size, **kw, field=f"model.layers[{i}]")
            for i in range(n_core)
        )
        sizes = [self.state_size] + [model.hidden_size] * (len(rest) - 1) + [out_features]
        self.readout = nn.ModuleList(
            _build_layer(layer, sizes[i], sizes[i + 1], **kw, field=f"model.layers[{n_core + i}]")
            for i, layer in enumerate(rest)
        )
        # the trainer scales the regulariser by the output-most published schedule
        schedules = [get_unit(layer.unit).regularizer for layer in (*layers[:n_core], *rest)]
        found = [s for s in schedules if s is not None]
        self.regularizer: RegularizerSchedule | None = found[-1] if found else None

    def states(self, x: Tensor) -> Tensor:
        """(P, B, T, in) -> recurrent states of the last cell (P, B, T, S)."""
        if self.recurrent:
            for cell in self.cells:
                x = cell(x)  # (P, B, T, S)
            return x
        P, B, T, _ = x.shape
        accumulate = self.cells[0]
        h = x.new_zeros(P, B, self.state_size)
        states = []
        for t in range(T):
            h = accumulate(torch.cat([h, x[:, :, t]], dim=-1))  # (P, B, S)
            states.append(h)
        return torch.stack(states, dim=2)

    def read(self, h: Tensor) -> Tensor:
        """States (P, B, S) -> outputs (P, B, out)."""
        for layer in self.readout:
            h = layer(h)
        return h

    def forward(self, x: Tensor, *, every_step: bool = False) -> Tensor:
        """(P, B, T, in) -> (P, B, out), or (P, B, T, out) with ``every_step``."""
        h = self.states(x)  # (P, B, T, S)
        if not every_step:
            return self.read(h[:, :, -1])
        P, B, T, S = h.shape
        return self.read(h.reshape(P, B * T, S)).reshape(P, B, T, -1)

    def _parts(self) -> list[nn.Module]:
        return [*self.cells, *self.readout]

    def reset_parameters(self, generators: list[torch.Generator] | None = None) -> None:
        for part in self._parts():
            part.reset_parameters(generators)  # type: ignore[operator]

    def regularization(self) -> Tensor:
        terms = [part.regularization() for part in self._parts()]  # type: ignore[operator]
        return torch.stack(terms).sum(dim=0)  # (P,)

    def sparsity_error(self) -> Tensor:
        """Max over the parts that define it (NaN for the gated cells), as PopulationNetwork."""
        errors = torch.stack([part.sparsity_error() for part in self._parts()])  # type: ignore[operator]
        defined = ~torch.isnan(errors)  # (L, P)
        best = torch.where(defined, errors, torch.full_like(errors, -torch.inf)).amax(dim=0)
        return torch.where(defined.any(dim=0), best, torch.full_like(best, torch.nan))

    def clamp_(self) -> None:
        for part in self._parts():
            part.clamp_()  # type: ignore[operator]
