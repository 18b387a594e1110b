"""Each published row's own configuration, in one place.

Every row of Madsen & Johansen's (2020) Table 1 (static task, 100 inputs, U[1,2] -> U[2,6])
and Mistry et al.'s single-module division baselines, as their batch-job scripts ran them:
the stack, each layer's regulariser λ̂ with its onset and end, the learning rate, clipping and
steps. Sources (stable-nalu and nalm-division repositories): ``lfs_batch_jobs/
function_task_static.sh`` with ``experiments/simple_function_static.py``'s defaults
(``--regualizer 10``, start 1e6, end 2e6, Adam 1e-3, batch 128); ``lfs_batch_jobs/
single_layer_task/neurips_2021/sltr-in2.sh`` with ``experiments/single_layer.py``.

stable-nalu has one ``--regualizer`` for the whole network, applied to every layer that has a
sparsity regulariser: the NMU row (NAU -> NMU) runs λ̂ = 10 on *both* layers, 1e6 -> 2e6.
NAC, NALU and linear layers have none in the reference (``None`` here), so none is applied.

``run_config()`` turns a row into a :class:`RunConfig`; ``benchmarks/reproduce_madsen.py``
(``--full``) reads the rows from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nalu_core._config import (
    ClipMode,
    LayerConfig,
    ModelConfig,
    OptimizerName,
    RunConfig,
    TaskConfig,
    TrainConfig,
)
from nalu_core._errors import ConfigError
from nalu_core._registry import UNITS, RegularizerSchedule
from nalu_core._units import NMRU_SCHEDULE, REALNPU_BETA


@dataclass(frozen=True, kw_only=True)
class PublishedResult:
    """One published cell: success rate (%), median solved-at, mean sparsity error."""

    success: float
    solved_at: float | None = None
    sparsity_error: float | None = None


@dataclass(frozen=True, kw_only=True)
class PublishedRow:
    """One model of a paper's table, with the flags its batch job ran it with.

    ``regularizers[i]`` is layer i's schedule, ``None`` where the reference applies none; the
    unit's own published schedule is never consulted for a row. ``results`` maps an op to
    the published cell.
    """

    key: str
    paper: str
    label: str
    units: tuple[str, ...]
    regularizers: tuple[RegularizerSchedule | None, ...]
    reference_flags: str
    unit_options: tuple[Mapping[str, Any], ...] = ()
    lr: float = 1e-3
    optimizer: OptimizerName = "adam"
    clip: ClipMode = "none"
    clip_value: float = 1.0
    steps: int = 5_000_000
    seeds: int = 100
    batch_size: int = 128
    hidden_size: int = 2
    task_options: Mapping[str, Any] = field(default_factory=dict)
    results: Mapping[str, PublishedResult] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.regularizers) != len(self.units):
            raise ValueError(f"one schedule per layer: {self.units=} {self.regularizers=}")
        if self.unit_options and len(self.unit_options) != len(self.units):
            raise ValueError(f"one options mapping per layer: {self.unit_options=}")

    def schedule(self) -> RegularizerSchedule | None:
        """The network's one schedule (stable-nalu's single ``--regualizer``); None: none."""
        given = {s for s in self.regularizers if s is not None}
        if len(given) > 1:
            raise ValueError(f"{self.key}: layers with different schedules: {given}")
        return given.pop() if given else None

    def run_config(
        self,
        op: str,
        *,
        steps: int | None = None,
        seeds: int | None = None,
        device: str = "cpu",
        eval_every: int = 1000,
        eval_samples: int = 10_000,
        regularizer_start: int | None = None,
        regularizer_end: int | None = None,
    ) -> RunConfig:
        """This row's configuration for ``op``; ``regularizer_start``/``_end`` move the onset
        (a reduced budget), the strength stays the row's."""
        options = self.unit_options or tuple({} for _ in self.units)
        layers = tuple(
            LayerConfig(unit=unit, options=dict(opts))
            for unit, opts in zip(self.units, options, strict=True)
        )
        schedule = self.schedule()
        # the row's λ̂ for every layer, or 0: a unit's own published schedule must not apply
        reg: dict[str, Any] = {"regularizer_lambda": 0.0}
        own = all(UNITS[unit].regularizer == schedule for unit in self.units)
        if schedule is not None and own and regularizer_start is regularizer_end is None:
            # every layer's own schedule is the row's (e.g. the RealNPU's geometric β)
            reg = {}
        elif schedule is not None:
            reg = {
                "regularizer_lambda": schedule.lambda_,
                "regularizer_start": schedule.start
                if regularizer_start is None
                else regularizer_start,
                "regularizer_end": schedule.end if regularizer_end is None else regularizer_end,
            }
        return RunConfig(
            task=TaskConfig(name="static", op=op, options=dict(self.task_options)),
            model=ModelConfig(layers=layers, hidden_size=self.hidden_size),
            train=TrainConfig(
                seeds=seeds if seeds is not None else self.seeds,
                steps=steps if steps is not None else self.steps,
                batch_size=self.batch_size,
                optimizer=self.optimizer,
                lr=self.lr,
                clip=self.clip,
                clip_value=self.clip_value,
                eval_every=eval_every,
                eval_samples=eval_samples,
                device=device,
                **reg,
            ),
        )


_MADSEN_TASK = {
    "input_size": 100,
    "subset_ratio": 0.25,
    "overlap_ratio": 0.5,
    "range_preset": "madsen_1_2",
}
# stable-nalu's defaults: --regualizer 10, --regualizer-scaling-start/-end 1e6 / 2e6
_MADSEN_DEFAULT = RegularizerSchedule(lambda_=10.0, start=1_000_000, end=2_000_000)
_NAU_ROW = RegularizerSchedule(lambda_=0.01, start=5_000, end=50_000)
_SIMPLE = "experiments/simple_function_static.py --max-iterations 5000000"


def _madsen(key: str, label: str, units: tuple[str, str], **kwargs: Any) -> PublishedRow:
    return PublishedRow(
        key=f"madsen2020/{key}",
        paper="madsen2020",
        label=label,
        units=units,
        task_options=_MADSEN_TASK,
        **kwargs,
    )


def _r(success: float, solved_at: float | None = None, sparsity: float | None = None) -> Any:
    return PublishedResult(success=success, solved_at=solved_at, sparsity_error=sparsity)


# Madsen & Johansen (2020), paper/results/function_task_static_all.tex (100 seeds, 5e6 steps):
# success %, median solved-at, mean sparsity error over the solved seeds.
PUBLISHED_ROWS: dict[str, PublishedRow] = {
    row.key: row
    for row in (
        _madsen(
            "linear",
            "Linear",
            ("linear", "linear"),
            regularizers=(None, None),
            reference_flags=f"{_SIMPLE} --layer-type linear",
            results={"add": _r(100, 6.1e4, 0.25), "sub": _r(7, 3.3e6, 0.18), "mul": _r(0)},
        ),
        _madsen(
            "nac_add",
            "NAC₊",
            ("nac_add", "nac_add"),
            regularizers=(None, None),
            reference_flags=f"{_SIMPLE} --layer-type NAC",
            results={
                "add": _r(100, 2.5e5, 0.23),
                "sub": _r(100, 9.0e3, 0.23),
                "mul": _r(0),
                "div": _r(0),
            },
        ),
        _madsen(
            "nac_mul",
            "NAC•",
            ("nac_add", "nac_mul"),
            regularizers=(None, None),
            reference_flags=f"{_SIMPLE} --layer-type NAC --nac-mul normal",
            results={"add": _r(0), "sub": _r(0), "mul": _r(31, 2.8e6, 5.8e-4), "div": _r(0)},
        ),
        _madsen(
            "nalu",
            "NALU",
            ("nalu", "nalu"),
            regularizers=(None, None),
            reference_flags=f"{_SIMPLE} --layer-type NALU",
            results={
                "add": _r(14, 1.5e6, 0.17),
                "sub": _r(14, 1.9e6, 0.21),
                "mul": _r(0),
                "div": _r(0),
            },
        ),
        _madsen(
            "nau",
            "NAU",
            ("nau", "nau"),
            regularizers=(_NAU_ROW, _NAU_ROW),
            reference_flags=f"{_SIMPLE} --layer-type ReRegualizedLinearNAC --regualizer 0.01 "
            "--regualizer-scaling-start 5000 --regualizer-scaling-end 50000",
            results={
                "add": _r(100, 1.8e4, 3.2e-5),
                "sub": _r(100, 5.0e3, 6.6e-2),
                "mul": _r(0),
                "div": _r(0),
            },
        ),
        _madsen(
            "nmu",
            "NMU",
            ("nau", "nmu"),
            # one --regualizer (default 10, 1e6 -> 2e6) for both layers
            regularizers=(_MADSEN_DEFAULT, _MADSEN_DEFAULT),
            reference_flags=f"{_SIMPLE} --layer-type ReRegualizedLinearNAC --nac-mul mnac",
            results={
                "add": _r(0),
                "sub": _r(56, 1.0e6, 3.4e-4),
                "mul": _r(98, 1.4e6, 4.2e-7),
                "div": _r(0),
            },
        ),
        # Mistry et al.: the division baselines of the single-module task (2 inputs,
        # 9 range pairs, 50k steps; sltr-in2.sh). Success rates are over all 9 ranges.
        PublishedRow(
            key="mistry2022/realnpu",
            paper="mistry2022",
            label="Real NPU (baseline)",
            units=("realnpu",),
            regularizers=(REALNPU_BETA,),  # the unit's own schedule
            lr=5e-3,
            steps=50_000,
            seeds=25,
            task_options={"input_size": 2},
            reference_flags="experiments/single_layer.py --operation div --layer-type RealNPU "
            "--nac-mul real-npu --learning-rate 5e-3 --regualizer-beta-start 1e-9 "
            "--regualizer-beta-end 1e-7 --regualizer-l1 --regualizer-shape none "
            "--regualizer 0 --max-iterations 50000",
            results={},
        ),
        PublishedRow(
            key="mistry2022/nmru",
            paper="mistry2022",
            label="NMRU (sign retrieval)",
            units=("nmru",),
            regularizers=(NMRU_SCHEDULE,),  # the unit's own schedule
            unit_options=({"sign_retrieval": True},),
            lr=1e-2,
            clip="norm",
            clip_value=1.0,
            steps=50_000,
            seeds=25,
            task_options={"input_size": 2},
            reference_flags="experiments/single_layer.py --operation div --layer-type SignNMRU "
            "--regualizer-scaling-start 20000 --regualizer-scaling-end 35000 "
            "--clip-grad-norm 1 --learning-rate 1e-2 --max-iterations 50000",
            results={},
        ),
    )
}

# The five models of the 20-cell grid that benchmarks/reproduce_madsen.py runs, in order.
MADSEN_GRID = ("nac_add", "nac_mul", "nalu", "nau", "nmu")


def published_row(key: str) -> PublishedRow:
    """The row ``key`` (e.g. ``madsen2020/nmu``) or a :class:`ConfigError` listing them."""
    try:
        return PUBLISHED_ROWS[key]
    except KeyError:
        raise ConfigError(
            f"unknown published row {key!r}; known: {sorted(PUBLISHED_ROWS)}", field="row"
        ) from None
