"""Population networks stacked from a :class:`ModelConfig`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from nalu_core._config import ModelConfig
from nalu_core._errors import ConfigError
from nalu_core._registry import RegularizerSchedule, UnitSpec, get_unit
from nalu_core._units import Generators, PopulationModule


def validate_model_config(
    model: ModelConfig, *, kinds: Collection[str] | None = None
) -> list[dict[str, Any]]:
    """Check every layer's unit and options against the registry; allocate nothing.

    Returns each layer's full options (defaults filled in). Errors name the field, e.g.
    ``model.layers[1].options.gate``, and list the allowed values. ``kinds`` restricts the
    unit kinds (``build_network`` accepts ``"layer"`` units only).
    """
    if not isinstance(model, ModelConfig):
        raise ConfigError(f"model must be a ModelConfig, got {model!r}", field="model")
    resolved = []
    for i, layer in enumerate(model.layers):
        where = f"model.layers[{i}]"
        spec = get_unit(layer.unit, field=f"{where}.unit")
        if kinds is not None and spec.kind not in kinds:
            raise ConfigError(
                f"{where}.unit: {layer.unit!r} is a {spec.kind} unit; allowed kinds: "
                f"{sorted(kinds)}",
                field=f"{where}.unit",
            )
        resolved.append(spec.validate_options(layer.options, prefix=f"{where}.options"))
    return resolved


class PopulationNetwork(nn.Module):
    """P replicas of a stack of units: (P, B, in) -> (P, B, out).

    ``regularization()`` sums the layers' unscaled regularisers; ``sparsity_error()`` takes the
    max over the layers where it is defined (Madsen's definition is a max over all weights), NaN
    when no layer defines it. ``regularizer`` is the published λ schedule of the output-most
    layer that has one (e.g. NMU's for a NAU -> NMU stack), or ``None``.
    """

    def __init__(
        self,
        layers: Sequence[PopulationModule],
        *,
        specs: Sequence[UnitSpec] = (),
        config: ModelConfig | None = None,
    ) -> None:
        super().__init__()
        if not layers:
            raise ConfigError("a network needs at least one layer", field="layers")
        populations = {layer.population for layer in layers}
        if len(populations) != 1:
            raise ConfigError(f"layers disagree on the population: {populations}", field="layers")
        self.layers = nn.ModuleList(layers)
        self.population = layers[0].population
        self.in_features = layers[0].in_features
        self.out_features = layers[-1].out_features
        self.config = config
        schedules = [spec.regularizer for spec in specs if spec.regularizer is not None]
        self.regularizer: RegularizerSchedule | None = schedules[-1] if schedules else None

    def _units(self) -> list[PopulationModule]:
        return [cast(PopulationModule, layer) for layer in self.layers]

    # the trainer and the evaluation may pass x (G, B, in), G | P: one batch per replica group
    accepts_groups = True

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)  # (P, B, features)
        return x

    def reset_parameters(self, generators: Generators = None) -> None:
        # layers draw in order from the same generators, so replica i only depends on seed i
        for layer in self._units():
            layer.reset_parameters(generators)

    def regularization(self) -> Tensor:
        return torch.stack([layer.regularization() for layer in self._units()]).sum(dim=0)

    @torch.no_grad()
    def clamp_(self) -> None:
        for layer in self._units():
            layer.clamp_()

    def sparsity_error(self) -> Tensor:
        errors = torch.stack([layer.sparsity_error() for layer in self._units()])  # (L, P)
        defined = ~torch.isnan(errors)
        best = torch.where(defined, errors, torch.full_like(errors, -torch.inf)).amax(dim=0)
        return torch.where(defined.any(dim=0), best, torch.full_like(best, torch.nan))


def build_network(
    model: ModelConfig,
    in_features: int,
    out_features: int,
    *,
    population: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> PopulationNetwork:
    """Stack ``model.layers``: in -> hidden_size -> ... -> hidden_size -> out."""
    options = validate_model_config(model, kinds=("layer",))
    depth = model.depth
    widths = [in_features] + [model.hidden_size] * (depth - 1) + [out_features]
    specs, layers = [], []
    for i, (layer, resolved) in enumerate(zip(model.layers, options, strict=True)):
        spec = get_unit(layer.unit, field=f"model.layers[{i}].unit")
        unit = spec.build(
            widths[i], widths[i + 1], population=population, device=device, dtype=dtype, **resolved
        )
        if not isinstance(unit, PopulationModule):
            raise TypeError(f"unit {layer.unit!r} built a {type(unit).__name__}, not a layer")
        specs.append(spec)
        layers.append(unit)
    return PopulationNetwork(layers, specs=specs, config=model)
