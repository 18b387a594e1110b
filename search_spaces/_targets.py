"""Where a parameter's value goes in a RunConfig.

A parameter's name is its flat hyperparameter name (the MLflow param); its target is the
RunConfig field it sets. Well-known names have a default target, anything else is a unit
option; ``target:`` in the YAML overrides the default.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from dataclasses import dataclass
from typing import Literal

from nalu_core import MAX_DEPTH, TrainConfig

TargetKind = Literal[
    "unit",  # every layer's unit
    "output_unit",  # the last layer's unit
    "layer_unit",  # layer ``layer``'s unit
    "depth",
    "hidden_size",
    "option",  # option ``key`` of every layer whose unit declares it
    "layer_option",  # option ``key`` of layer ``layer``
    "train",  # TrainConfig field ``key``
    "task_option",  # TaskConfig option ``key``
    "published_row",  # a row of nalu_core's published table: its whole configuration
]

# the study spec owns these: every trial of a study trains the same seeds for the same steps
STUDY_TRAIN_FIELDS = frozenset(
    {"seeds", "seed", "steps", "eval_every", "eval_samples", "device", "dtype", "data_streams"}
)
TRAIN_FIELDS = tuple(
    f.name for f in dataclasses.fields(TrainConfig) if f.name not in STUDY_TRAIN_FIELDS
)
# the static task's named interpolation -> extrapolation range pair (Madsen, Mistry)
RANGE_OPTION = "range_preset"
# a key of nalu_core.PUBLISHED_ROWS: the trial runs that row's published configuration
PUBLISHED_ROW = "published_row"

_LAYER_UNIT = re.compile(r"^model\.layers\[(\d+)\]\.unit$")
_LAYER_OPTION = re.compile(r"^model\.layers\[(\d+)\]\.options\.([A-Za-z_]\w*)$")
_OPTION = re.compile(r"^model\.options\.([A-Za-z_]\w*)$")
_TRAIN = re.compile(r"^train\.([A-Za-z_]\w*)$")
_TASK_OPTION = re.compile(r"^task\.options\.([A-Za-z_]\w*)$")
_UNIT_NAME = re.compile(r"^unit_(\d+)$")
_FIXED = {
    "model.unit": "unit",
    "model.output_unit": "output_unit",
    "model.depth": "depth",
    "model.hidden_size": "hidden_size",
}


@dataclass(frozen=True, kw_only=True)
class Target:
    kind: TargetKind
    layer: int | None = None
    key: str | None = None

    @property
    def is_unit(self) -> bool:
        return self.kind in ("unit", "output_unit", "layer_unit")

    def __str__(self) -> str:
        match self.kind:
            case "layer_unit":
                return f"model.layers[{self.layer}].unit"
            case "option":
                return f"model.options.{self.key}"
            case "layer_option":
                return f"model.layers[{self.layer}].options.{self.key}"
            case "train":
                return f"train.{self.key}"
            case "task_option":
                return f"task.options.{self.key}"
            case "published_row":
                return PUBLISHED_ROW
            case _:
                return f"model.{self.kind}"


def default_target(name: str) -> str:
    """The target a parameter called ``name`` sets when its YAML gives none."""
    if name in ("unit", "output_unit", "depth", "hidden_size"):
        return f"model.{name}"
    if match := _UNIT_NAME.match(name):
        return f"model.layers[{match[1]}].unit"
    if name in TRAIN_FIELDS or name in STUDY_TRAIN_FIELDS:
        return f"train.{name}"  # the study-owned ones are refused with a clear message
    if name == RANGE_OPTION:
        return f"task.options.{RANGE_OPTION}"
    if name == PUBLISHED_ROW:
        return PUBLISHED_ROW
    return f"model.options.{name}"


def parse_target(text: str) -> Target:
    """Parse a target string; ``ValueError`` says what is wrong with it."""
    if text in _FIXED:
        return Target(kind=_FIXED[text])  # type: ignore[arg-type]
    if text == PUBLISHED_ROW:
        return Target(kind="published_row")
    if match := _LAYER_UNIT.match(text):
        return Target(kind="layer_unit", layer=_layer(match[1]))
    if match := _LAYER_OPTION.match(text):
        return Target(kind="layer_option", layer=_layer(match[1]), key=match[2])
    if match := _OPTION.match(text):
        return Target(kind="option", key=match[1])
    if match := _TASK_OPTION.match(text):
        return Target(kind="task_option", key=match[1])
    if match := _TRAIN.match(text):
        field = match[1]
        if field in STUDY_TRAIN_FIELDS:
            raise ValueError(f"train.{field} is set by the study spec, not by a search space")
        if field not in TRAIN_FIELDS:
            raise ValueError(
                f"train.{field} is not a TrainConfig field; known: {list(TRAIN_FIELDS)}"
            )
        return Target(kind="train", key=field)
    raise ValueError(
        f"unknown target {text!r}; targets are model.unit, model.output_unit, "
        "model.layers[i].unit, model.depth, model.hidden_size, model.options.OPTION, "
        "model.layers[i].options.OPTION, train.FIELD, task.options.OPTION or published_row"
    )


def _layer(index: str) -> int:
    layer = int(index)
    if layer >= MAX_DEPTH:
        raise ValueError(f"layer index {layer} is out of range: networks have at most {MAX_DEPTH}")
    return layer


@functools.lru_cache(maxsize=256)
def parse_target_cached(text: str) -> Target:
    return parse_target(text)
