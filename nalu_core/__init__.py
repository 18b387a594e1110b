"""Neural arithmetic units, tasks, metrics and the population trainer.

Pure torch: this package imports none of ray, optuna or mlflow.
"""

from __future__ import annotations

from nalu_core._config import (
    MAX_DEPTH,
    LayerConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
)
from nalu_core._device import resolve_device, resolve_dtype
from nalu_core._errors import ConfigError, NaluCoreError

__all__ = [
    "MAX_DEPTH",
    "ConfigError",
    "LayerConfig",
    "ModelConfig",
    "NaluCoreError",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "resolve_device",
    "resolve_dtype",
]
