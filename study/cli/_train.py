"""``nalu-study train``: train many seeds of one configuration and report its robustness."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from nalu_core import (
    UNITS,
    ConfigError,
    LayerConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    get_unit,
)
from search_spaces._yaml import load_yaml
from study._errors import StudyError
from study.cli._output import check_output, fail, fail_with

# where a ConfigError's field comes from on the command line
_FIELD_FLAGS: dict[str, str] = {
    "task.name": "--task",
    "task.op": "--op",
    "task.options.input_size": "--input-size",
    "task.options.interpolation": "--interpolation",
    "task.options.extrapolation": "--extrapolation",
    "task.options.range_preset": "--range-preset",
    "task.options.mnist_dir": "--mnist-dir",
    "model.layers": "--depth",
    "depth": "--depth",
    "hidden_size": "--hidden-size",
    "model.hidden_size": "--hidden-size",
}
_TRAIN_FLAGS = {
    "seeds",
    "seed",
    "steps",
    "lr",
    "optimizer",
    "batch_size",
    "clip",
    "clip_value",
    "eval_every",
    "device",
    "data_streams",
}


_UNIT_HELP = (
    "One unit for every layer (with --depth), or a comma-separated per-layer stack such as "
    "nau,nmu (depth = number of units). Units: "
    + ", ".join(sorted(name for name, spec in UNITS.items() if spec.kind == "layer"))
    + "; recurrent cells for the sequence tasks: "
    + ", ".join(sorted(name for name, spec in UNITS.items() if spec.kind == "recurrent"))
    + ". See `nalu-study units`."
)


def _flag_for(field: str | None) -> str:
    if not field:
        return "--config"
    name = field.removeprefix("train.")
    if name in _TRAIN_FLAGS:
        return "--" + name.replace("_", "-")
    if field in _FIELD_FLAGS:
        return _FIELD_FLAGS[field]
    if field.startswith("task.options."):
        return f"--task-option {field.removeprefix('task.options.')}"
    match = re.fullmatch(r"model\.layers\[\d+\]\.(unit|options\.(.+))", field)
    if match:
        return "--unit" if match.group(1) == "unit" else f"--option {match.group(2)}"
    return "--config"


def _usage_error(err: ConfigError) -> typer.Exit:
    """``error: --flag: message`` and exit code 2 (the one error format)."""
    return _bad(_flag_for(err.field), str(err))


def _bad(flag: str, message: str) -> typer.Exit:
    return fail_with([(flag, message)])


def _parse_value(text: str) -> Any:
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _parse_pairs(pairs: list[str], flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise _bad(flag, f"expected key=value, got {pair!r}")
        out[key.strip()] = _parse_value(value)
    return out


def _load_config(path: Path | None) -> RunConfig:
    if path is None:
        return RunConfig(task=TaskConfig(name="static", op="add"))
    try:
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        detail = " ".join(str(err).replace('in "<unicode string>",', "").split())
        raise _bad("--config", f"{path}: cannot read it: {detail}") from None
    if not isinstance(data, dict | None):
        raise _bad("--config", f"{path}: must hold a mapping (a RunConfig)")
    try:
        return RunConfig.from_dict(data or {})
    except ConfigError as err:
        raise _bad("--config", f"{path}: {err}") from None


def build_run_config(base: RunConfig, **flags: Any) -> RunConfig:
    """Applies the command-line ``flags`` (None = not given) on top of ``base``."""
    task_options: dict[str, Any] = dict(flags.pop("task_options"))
    unit_options: dict[str, Any] = dict(flags.pop("unit_options"))
    name = flags["task"] or base.task.name
    options = dict(base.task.options) if name == base.task.name else {}
    for key in ("input_size", "interpolation", "extrapolation", "range_preset", "mnist_dir"):
        if flags.get(key) is not None:
            options[key] = flags[key]
    if flags["range_preset"] is not None:
        options.pop("interpolation", None)
        options.pop("extrapolation", None)
    options |= task_options
    task = TaskConfig(name=name, op=flags["op"] or base.task.op, options=options)

    model = _build_model(base.model, flags["unit"], flags["depth"], unit_options)
    if flags["hidden_size"] is not None:
        model = ModelConfig(layers=model.layers, hidden_size=flags["hidden_size"])

    train_changes = {k: flags[k] for k in _TRAIN_FLAGS if flags.get(k) is not None}
    train: TrainConfig = dataclasses.replace(base.train, **train_changes)
    return RunConfig(task=task, model=model, train=train)


def _parse_units(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",")]
    if not all(names):
        raise ConfigError(
            f"expected one unit name or a comma-separated stack such as nau,nmu, got {text!r}",
            field="model.layers[0].unit",
        )
    for i, name in enumerate(names):
        get_unit(name, field=f"model.layers[{i}].unit")
    return names


def _build_model(
    model: ModelConfig, unit: str | None, depth: int | None, unit_options: dict[str, Any]
) -> ModelConfig:
    """``--unit a`` keeps today's meaning (``depth`` layers of one unit); ``--unit a,b`` is a
    per-layer stack whose depth is the number of names. ``--option key=value`` goes to every
    layer whose unit declares ``key`` (an error when none does)."""
    if unit is None and depth is None and not unit_options:
        return model
    names = _parse_units(unit) if unit is not None else None
    if names is not None and len(names) > 1:
        if depth is not None and depth != len(names):
            raise ConfigError(
                f"--depth {depth} disagrees with the {len(names)} units of --unit {unit}; "
                "the stack's depth is the number of units",
                field="depth",
            )
        layers = [
            LayerConfig(unit=name, options=_kept_options(model, i, name))
            for i, name in enumerate(names)
        ]
    elif (
        names is not None
        or (depth is not None and depth != model.depth)
        or len({layer.unit for layer in model.layers}) == 1
    ):
        single = names[0] if names is not None else model.layers[0].unit
        stacked = ModelConfig.stacked(
            single,
            depth=depth if depth is not None else model.depth,
            hidden_size=model.hidden_size,
            options=_kept_options(model, 0, single),
        )
        layers = list(stacked.layers)
    else:
        # only --option on a mixed stack from --config: keep its units
        layers = list(model.layers)
    if unit_options:
        layers = _apply_options(layers, unit_options)
    return ModelConfig(layers=tuple(layers), hidden_size=model.hidden_size)


def _kept_options(model: ModelConfig, i: int, unit: str) -> dict[str, Any]:
    # a layer keeps the config file's options only when its unit is unchanged
    if i < model.depth and model.layers[i].unit == unit:
        return dict(model.layers[i].options)
    return {}


def _apply_options(layers: list[LayerConfig], options: dict[str, Any]) -> list[LayerConfig]:
    out = [dict(layer.options) for layer in layers]
    for key, value in options.items():
        takers = [i for i, layer in enumerate(layers) if key in get_unit(layer.unit).options]
        if not takers:
            # let the registry name the field and list the first layer's allowed options
            takers = [0]
        for i in takers:
            out[i][key] = value
    return [
        LayerConfig(unit=layer.unit, options=opts) for layer, opts in zip(layers, out, strict=True)
    ]


def _validate(config: RunConfig) -> None:
    from nalu_core import build_task, resolve_device
    from nalu_core._network import validate_model_config

    build_task(config.task)
    validate_model_config(config.model)
    resolve_device(config.train.device)


def _check_size(config: RunConfig) -> None:
    """Sizes whose tensors this machine could never hold stop here, before any allocation."""
    import psutil

    from study._errors import SpecError
    from study._spec import check_trial_size

    size = config.task.options.get("input_size", 2)
    width = max(size if isinstance(size, int) else 2, config.model.hidden_size or 0)
    try:
        check_trial_size(
            seeds=config.train.seeds,
            batch=config.train.batch_size,
            eval_samples=config.train.eval_samples,
            width=width,
            dtype=config.train.dtype,
            where="--input-size" if width == size else "--hidden-size",
            limit=int(psutil.virtual_memory().total),
        )
    except SpecError as err:
        raise fail(err) from None


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3g}"


def _pct(value: float) -> str:
    """A share as a percentage: below 10% with one decimal, so that the upper end of 0/1024's
    interval reads 0.4% and not a degenerate [0%, 0%]."""
    return f"{value:.1%}" if 0 < value < 0.1 else f"{value:.0%}"


def _summary(console: Console, result: Any) -> None:
    m = result.metrics()
    lo, hi = result.success_ci
    n = len(result.seeds)
    successes = sum(s.success for s in result.seeds)
    table = Table(title="nalu-study train: summary")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(
        "success rate (Wilson 95% CI)",
        f"{successes}/{n} = {_pct(m['success_rate'])} [{_pct(lo)}, {_pct(hi)}]",
    )
    if result.config.train.data_streams not in (None, n):
        lo_adj, hi_adj = result.success_ci_adjusted
        table.add_row(
            f"  adjusted for {result.config.train.data_streams} shared streams",
            f"[{_pct(lo_adj)}, {_pct(hi_adj)}], intra-group correlation "
            f"{_fmt(result.intra_group_correlation)}",
        )
    table.add_row("threshold (extrapolation MSE)", _fmt(result.threshold))
    table.add_row("median extrapolation MSE", _fmt(m["extrapolation_mse_median"]))
    table.add_row("median interpolation MSE", _fmt(m["interpolation_mse_median"]))
    table.add_row("median solved-at step", _fmt(m["solved_at_median"]))
    table.add_row("median sparsity error", _fmt(m["sparsity_error_median"]))
    table.add_row("diverged", f"{int(m['diverged'])}/{n}")
    table.add_row("train seconds", f"{result.train_seconds:.1f}")
    console.print(table)
    if result.division_probe:
        probe = Table(title="division probe (best interpolation step, non-diverged replicas)")
        probe.add_column("|denominator|")
        probe.add_column("median relative error", justify="right")
        probe.add_column("median MSE", justify="right")
        for b in result.division_probe["bins"]:
            probe.add_row(
                f"{b['lo']:g}..{b['hi']:g}",
                _fmt(b["relative_error_median"]),
                _fmt(b["mse_median"]),
            )
        console.print(probe)


def describe(config: Any, *, defaults: bool = False) -> str:
    """One line: what is about to be trained (unit, task, seeds x steps, lr, device)."""
    layers = config.model.layers
    units = (
        layers[0].unit
        if len({layer.unit for layer in layers}) == 1
        else "/".join(layer.unit for layer in layers)
    )
    options = ", ".join(f"{k}={v}" for k, v in config.task.options.items())
    train = config.train
    line = (
        f"training {units} (depth {config.model.depth}, hidden {config.model.hidden_size}) on "
        f"{config.task.name} {config.task.op}{f' ({options})' if options else ''}: "
        f"{train.seeds} seeds x {train.steps:,} steps, lr {train.lr:g}, {train.optimizer}, "
        f"device {train.device}"
    )
    return line + ("  [defaults; see --help to choose]" if defaults else "")


def train(
    unit: Annotated[str | None, typer.Option(help=_UNIT_HELP)] = None,
    task: Annotated[
        str | None, typer.Option(help="Registered task name (default static).")
    ] = None,
    op: Annotated[
        str | None, typer.Option(help="Operation: add, sub, mul, div, square, sqrt.")
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(help="Replicas trained at once (seeds seed..seed+N-1).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="First seed.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
    input_size: Annotated[
        int | None, typer.Option(help="Inputs of the static task (2: single module).")
    ] = None,
    interpolation: Annotated[
        str | None, typer.Option(help="Training range, e.g. 1,2 or -6,-2;2,6.")
    ] = None,
    extrapolation: Annotated[
        str | None, typer.Option(help="Extrapolation range, e.g. 2,6.")
    ] = None,
    range_preset: Annotated[
        str | None, typer.Option(help="Named range pair, e.g. madsen_1_2.")
    ] = None,
    depth: Annotated[int | None, typer.Option(help="Number of layers (1..4).")] = None,
    hidden_size: Annotated[int | None, typer.Option(help="Width of the hidden layers.")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam, rmsprop or sgd.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Batch size per replica and step.")
    ] = None,
    clip: Annotated[
        str | None, typer.Option(help="Gradient clipping: none, value or norm.")
    ] = None,
    clip_value: Annotated[float | None, typer.Option(help="Clipping bound.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Steps between evaluations.")] = None,
    data_streams: Annotated[
        int | None,
        typer.Option(
            help="G groups of seeds/G replicas sharing one batch per step (default: one "
            "stream per seed); the result adds a design-effect-adjusted interval."
        ),
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto.")] = None,
    config: Annotated[Path | None, typer.Option(help="RunConfig YAML; flags override it.")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the result here (JSON).")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="Unit option key=value (repeatable).")
    ] = None,
    task_option: Annotated[
        list[str] | None, typer.Option(help="Task option key=value (repeatable).")
    ] = None,
    mnist_dir: Annotated[
        Path | None,
        typer.Option(help="MNIST IDX files (raw or .gz) for mnist-count/mnist-add."),
    ] = None,
    threads: Annotated[
        int, typer.Option(min=1, help="torch intra-op threads; 1 is fastest for small units.")
    ] = 1,
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train SEEDS replicas of one configuration; print success rate and summary."""
    import torch

    from nalu_core import PopulationTrainer

    # replicas are batched already; more intra-op threads mostly spin and wait
    torch.set_num_threads(threads)
    if json_path is not None:
        try:
            check_output(json_path, field="--json")  # before training, not after
        except StudyError as err:
            raise fail(err) from None
    base = _load_config(config)
    try:
        run_config = build_run_config(
            base,
            unit=unit,
            task=task,
            op=op,
            seeds=seeds,
            seed=seed,
            steps=steps,
            input_size=input_size,
            interpolation=interpolation,
            extrapolation=extrapolation,
            range_preset=range_preset,
            depth=depth,
            hidden_size=hidden_size,
            lr=lr,
            optimizer=optimizer,
            batch_size=batch_size,
            clip=clip,
            clip_value=clip_value,
            eval_every=eval_every,
            data_streams=data_streams,
            device=device,
            unit_options=_parse_pairs(option or [], "--option"),
            task_options=_parse_pairs(task_option or [], "--task-option"),
            mnist_dir=str(mnist_dir) if mnist_dir is not None else None,
        )
        _validate(run_config)
        _check_size(run_config)
        trainer = PopulationTrainer(run_config)
    except ConfigError as err:
        raise _usage_error(err) from err

    console = Console(stderr=True)
    if not quiet:
        chosen = (config, unit, task, op, seeds, steps)
        defaults = all(v is None for v in chosen)
        console.print(describe(run_config, defaults=defaults), highlight=False, soft_wrap=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
        transient=False,
    ) as progress:
        bar = progress.add_task("training", total=run_config.train.steps)
        for report in trainer.run():
            m = report.metrics()
            progress.update(
                bar,
                completed=report.step,
                description=f"success {m['success_rate']:.0%}, "
                f"extrap MSE {_fmt(m['extrapolation_mse_median'])}",
            )
    result = trainer.result()
    _summary(Console(), result)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(_json_safe(result.to_dict()), indent=2, allow_nan=False))


def register(app: typer.Typer) -> None:
    """Adds this module's commands to ``app``."""
    app.command("train")(train)
