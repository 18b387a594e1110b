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
from nalu_core._metrics import normalized_error, population_mse, wilson_interval
from nalu_core._mnist_data import MnistDataError, load_mnist, read_idx, write_idx
from nalu_core._network import PopulationNetwork, build_network, validate_model_config
from nalu_core._published import (
    MADSEN_GRID,
    PUBLISHED_ROWS,
    PublishedResult,
    PublishedRow,
    published_row,
)
from nalu_core._recurrent import (
    PopulationGRU,
    PopulationLSTM,
    PopulationRNN,
    RecurrentHead,
    register_recurrent_units,
)
from nalu_core._registry import (
    UNITS,
    OptionSpec,
    RegularizerSchedule,
    UnitSpec,
    get_unit,
    register_unit,
)
from nalu_core._tasks import (
    RANGE_PRESETS,
    TASKS,
    ProbeBin,
    StaticArithmetic,
    Task,
    TaskSpec,
    build_task,
    parse_ranges,
    register_task,
    validate_task_config,
)
from nalu_core._tasks_language import NumberTranslation
from nalu_core._tasks_mnist import MnistAdd, MnistCount
from nalu_core._tasks_sequence import RecurrentArithmetic, SequenceTask, evaluate_splits
from nalu_core._trainer import EvalReport, PopulationTrainer, SeedResult, TrainResult
from nalu_core._units import (
    INALU,
    NAC,
    NALU,
    NAU,
    NMRU,
    NMU,
    NPU,
    Linear,
    PopulationModule,
)

# _units registers the layer units on import; the recurrent cells register here
register_recurrent_units()

__all__ = [
    "MADSEN_GRID",
    "PUBLISHED_ROWS",
    "PublishedResult",
    "PublishedRow",
    "published_row",
    "MnistAdd",
    "MnistCount",
    "MnistDataError",
    "NumberTranslation",
    "PopulationGRU",
    "PopulationLSTM",
    "PopulationRNN",
    "RecurrentArithmetic",
    "RecurrentHead",
    "SequenceTask",
    "evaluate_splits",
    "load_mnist",
    "read_idx",
    "write_idx",
    "wilson_interval",
    "population_mse",
    "normalized_error",
    "TrainResult",
    "SeedResult",
    "PopulationTrainer",
    "EvalReport",
    "validate_task_config",
    "register_task",
    "parse_ranges",
    "build_task",
    "TaskSpec",
    "Task",
    "StaticArithmetic",
    "ProbeBin",
    "TASKS",
    "RANGE_PRESETS",
    "INALU",
    "MAX_DEPTH",
    "NAC",
    "NALU",
    "NAU",
    "NMRU",
    "NMU",
    "NPU",
    "UNITS",
    "ConfigError",
    "LayerConfig",
    "Linear",
    "ModelConfig",
    "NaluCoreError",
    "OptionSpec",
    "PopulationModule",
    "PopulationNetwork",
    "RegularizerSchedule",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "UnitSpec",
    "build_network",
    "get_unit",
    "register_recurrent_units",
    "register_unit",
    "resolve_device",
    "resolve_dtype",
    "validate_model_config",
]
