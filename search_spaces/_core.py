"""The one place that asks nalu_core which units, options and tasks exist.

Validation defers to nalu_core's own registry, validators and model builders, so a space
accepts exactly what the trainer accepts and no list of names is kept twice.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import nalu_core
from nalu_core import LayerConfig, ModelConfig, TaskConfig


def unit_names() -> list[str]:
    return sorted(nalu_core.UNITS)


def unit_options(unit: str) -> set[str]:
    """The option names ``unit`` accepts; empty for an unknown unit."""
    spec = nalu_core.UNITS.get(unit)
    return set(spec.options) if spec is not None else set()


def task_names() -> list[str]:
    return sorted(nalu_core.TASKS)


def validate_model(model: ModelConfig) -> None:
    nalu_core.validate_model_config(model)


def validate_task(task: TaskConfig) -> None:
    _validate_task_once(_key(task))


def check_buildable(task: TaskConfig, model: ModelConfig) -> None:
    """Build the task's model with one replica: catches what only the task knows (a
    recurrent cell in a static network, or after layer 0). Options are left out (they are
    checked by :func:`validate_model`), so each task × layer structure is built once."""
    structure = ModelConfig(
        layers=tuple(LayerConfig(unit=layer.unit) for layer in model.layers),
        hidden_size=model.hidden_size,
    )
    _build_once(_key(task), _key(structure))


def _key(config: TaskConfig | ModelConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True, default=repr)


@functools.lru_cache(maxsize=512)
def _validate_task_once(task: str) -> None:
    nalu_core.validate_task_config(TaskConfig.from_dict(json.loads(task)))


@functools.lru_cache(maxsize=64)
def _task_once(task: str) -> Any:
    # a task may load data on first use (the MNIST pools): build each task config once
    return nalu_core.build_task(TaskConfig.from_dict(json.loads(task)))


@functools.lru_cache(maxsize=512)
def _build_once(task: str, model: str) -> None:
    _task_once(task).build_model(ModelConfig.from_dict(json.loads(model)), population=1)
