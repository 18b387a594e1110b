"""Exporting a study from MLflow: the best configuration per task x op, or every trial.

Everything is read back through ``MlflowClient``, so an export works on any tracking URI the
study logged to (the embedded SQLite file, or an MLflow server).

Ranking (the study's default objective): among trials that ended ``nalu.state=COMPLETE``,
the highest Wilson lower bound of the success rate wins; ties go to the lower median
extrapolation MSE, then to the earlier Optuna trial.

``--all`` writes one Parquet table, one row per trial run, with the schema :data:`TRIAL_SCHEMA`
followed by one ``param.<name>`` column per parameter and one ``metric.<name>`` float64 column
(the last logged value) per metric seen in the study. A ``param.*`` column has the native type
of its search-space parameter (float -> float64, int -> int64, categorical -> the type its
choices share, else string); a parameter the space does not name takes the type its logged
values share. A parameter a trial did not have (an inactive conditional) is a real null.
:func:`trials_dataframe` returns the same table as a pandas DataFrame.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import yaml

from nalu_core import RunConfig
from search_spaces._yaml import load_yaml
from study._errors import StudyError
from study._stores import sqlite_file
from study._tracking import (
    NODE_TAG,
    OPTUNA_TRIAL_TAG,
    PARENT_TAG,
    RAY_TRIAL_TAG,
    ROBUST_TAG,
    ROLE_TAG,
    STATE_TAG,
)

if TYPE_CHECKING:
    from mlflow import MlflowClient

ExportFormat = Literal["yaml", "json", "parquet"]

TRIAL_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("parent_run_id", pa.string()),
        pa.field("study", pa.string(), nullable=False),
        pa.field("trial_name", pa.string()),
        pa.field("task", pa.string()),
        pa.field("op", pa.string()),
        pa.field("unit", pa.string()),
        pa.field("optuna_trial", pa.int64()),
        pa.field("optuna_study", pa.string()),  # <study>.<task>-<op>
        pa.field("objective", pa.float64()),  # the value told to Optuna (COMPLETE trials)
        pa.field("ray_trial_id", pa.string()),
        pa.field("node", pa.string()),
        pa.field("state", pa.string()),  # nalu.state: COMPLETE | PRUNED | FAIL, null if unknown
        pa.field("status", pa.string(), nullable=False),  # MLflow: FINISHED | FAILED | ...
        pa.field("robust", pa.bool_()),
        pa.field("start_time", pa.timestamp("ms", tz="UTC")),
        pa.field("end_time", pa.timestamp("ms", tz="UTC")),
        pa.field("duration_s", pa.float64()),
    ]
)
"""The fixed leading columns of ``export --all``; ``param.*`` and ``metric.*`` follow."""

BEST_SCHEMA = pa.schema(
    [
        pa.field("task", pa.string(), nullable=False),
        pa.field("op", pa.string(), nullable=False),
        pa.field("unit", pa.string()),
        pa.field("success_rate", pa.float64()),
        pa.field("success_lower", pa.float64()),
        pa.field("success_upper", pa.float64()),
        pa.field("extrapolation_mse_median", pa.float64()),
        pa.field("seeds", pa.int64()),
        pa.field("steps", pa.int64()),
        pa.field("robust", pa.bool_()),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("optuna_trial", pa.int64()),
        pa.field("config", pa.string(), nullable=False),  # the RunConfig as JSON
    ]
)
"""The columns of the default Parquet export: one row per task x op."""


class ExportError(StudyError, ValueError):
    """The study cannot be exported (unknown study, no finished trial, missing artifact)."""


@dataclass(frozen=True, kw_only=True)
class BestConfig:
    """The best trial of one task x op with its evidence."""

    task: str
    op: str
    unit: str | None
    success_rate: float
    success_lower: float
    success_upper: float
    extrapolation_mse_median: float
    seeds: int | None
    steps: int | None
    robust: bool | None
    run_id: str
    optuna_trial: int | None
    config: dict[str, Any]

    def evidence(self) -> dict[str, Any]:
        out = asdict(self)
        del out["config"]
        return out


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(json.loads(value)) if value not in (None, "", "null") else None
    except (TypeError, ValueError):
        return None


def _bool_or_none(value: str | None) -> bool | None:
    return None if value is None else value.lower() == "true"


def _client(tracking_uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client: MlflowClient, study_name: str) -> str:
    experiment = client.get_experiment_by_name(study_name)
    if experiment is None:
        raise ExportError(
            f"no MLflow experiment named {study_name!r} at {client.tracking_uri}", field="name"
        )
    return str(experiment.experiment_id)


def _trial_runs(client: MlflowClient, experiment_id: str) -> list[Any]:
    runs: list[Any] = []
    token: str | None = None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{ROLE_TAG}` = 'trial'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _ms(value: int | None) -> int | None:
    return int(value) if value else None


def _json_value(text: str | None) -> Any:
    """A logged param back to its value: JSON text for non-strings, strings bare."""
    if text is None or text == "null":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _shared_type(values: list[Any]) -> pa.DataType:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return pa.bool_()
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return pa.int64()
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return pa.float64()
    return pa.string()


def space_types(space: Any) -> dict[str, pa.DataType]:
    """The Arrow type of each parameter of a :class:`search_spaces.SearchSpace`."""
    from search_spaces import (
        CategoricalParameter,
        FixedParameter,
        FloatParameter,
        IntParameter,
    )

    out: dict[str, pa.DataType] = {}
    for name in space.names:
        param = space[name]
        if isinstance(param, FloatParameter):
            out[name] = pa.float64()
        elif isinstance(param, IntParameter):
            out[name] = pa.int64()
        elif isinstance(param, CategoricalParameter):
            out[name] = _shared_type(list(param.choices))
        elif isinstance(param, FixedParameter):
            out[name] = _shared_type([param.value])
    return out


def _typed(texts: list[str | None], kind: pa.DataType | None) -> pa.Array:
    values = [_json_value(t) for t in texts]
    kind = kind or _shared_type(values)
    # strings as logged (a JSON list stays its text); only the logged null is a null
    text = pa.array([None if t in (None, "null") else t for t in texts], pa.string())
    if kind == pa.string():
        return text
    try:
        if kind == pa.float64():
            values = [None if v is None else float(v) for v in values]
        return pa.array(values, kind)
    except (TypeError, ValueError, pa.ArrowException):
        return text  # a value outside the space's type (an older space): keep the text


def _optuna_trials(storage: str | None, study_name: str, keys: set[str]) -> dict[Any, Any]:
    """``(task key, number) -> FrozenTrial`` from the Optuna storage, if there is one."""
    if not storage:
        return {}
    import optuna

    from study._studies import open_storage, optuna_study_name

    opened = open_storage(storage)
    out: dict[Any, Any] = {}
    for key in sorted(keys):
        try:
            study = optuna.load_study(
                study_name=optuna_study_name(study_name, key), storage=opened
            )
        except KeyError:
            continue
        for trial in study.get_trials(deepcopy=False):
            out[(key, trial.number)] = trial
    return out


def trials_table(
    tracking_uri: str,
    study_name: str,
    *,
    space: Any = None,
    storage: str | None = None,
) -> pa.Table:
    """Every trial run of the study as one table (see the module doc for its schema).

    ``space`` (a :class:`search_spaces.SearchSpace`) types the ``param.*`` columns;
    ``storage`` (the study's Optuna storage URL) adds each trial's objective value.
    """
    client = _client(tracking_uri)
    runs = _trial_runs(client, _experiment_id(client, study_name))
    param_names = sorted({k for run in runs for k in run.data.params})
    metric_names = sorted({k for run in runs for k in run.data.metrics})
    keys = {f"{r.data.params.get('task')}-{r.data.params.get('op')}" for r in runs}
    frozen = _optuna_trials(storage, study_name, keys)
    columns: dict[str, list[Any]] = {f.name: [] for f in TRIAL_SCHEMA}
    for run in runs:
        tags, info = run.data.tags, run.info
        start, end = _ms(info.start_time), _ms(info.end_time)
        key = f"{run.data.params.get('task')}-{run.data.params.get('op')}"
        number = _int_or_none(tags.get(OPTUNA_TRIAL_TAG))
        trial = frozen.get((key, number))
        row = {
            "run_id": info.run_id,
            "parent_run_id": tags.get(PARENT_TAG),
            "study": study_name,
            "trial_name": info.run_name,
            "task": run.data.params.get("task", tags.get("nalu.task")),
            "op": run.data.params.get("op", tags.get("nalu.op")),
            "unit": run.data.params.get("unit", tags.get("nalu.unit")),
            "optuna_trial": number,
            "optuna_study": f"{study_name}.{key}",
            "objective": None if trial is None else trial.value,
            "ray_trial_id": tags.get(RAY_TRIAL_TAG),
            "node": tags.get(NODE_TAG),
            "state": tags.get(STATE_TAG) or (None if trial is None else trial.state.name),
            "status": info.status,
            "robust": _bool_or_none(tags.get(ROBUST_TAG)),
            "start_time": start,
            "end_time": end,
            "duration_s": (end - start) / 1000 if start and end else None,
        }
        for name, value in row.items():
            columns[name].append(value)
    fields = list(TRIAL_SCHEMA)
    arrays = [pa.array(columns[f.name], f.type) for f in TRIAL_SCHEMA]
    types = space_types(space) if space is not None else {}
    for name in param_names:
        array = _typed([run.data.params.get(name) for run in runs], types.get(name))
        fields.append(pa.field(f"param.{name}", array.type))
        arrays.append(array)
    for name in metric_names:
        fields.append(pa.field(f"metric.{name}", pa.float64()))
        arrays.append(pa.array([run.data.metrics.get(name) for run in runs], pa.float64()))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _rank_key(run: Any) -> tuple[float, float, int]:
    metrics = run.data.metrics
    lower = metrics.get("success_lower", -math.inf)
    mse = metrics.get("extrapolation_mse_median", math.inf)
    mse = mse if math.isfinite(mse) else math.inf
    trial = _int_or_none(run.data.tags.get(OPTUNA_TRIAL_TAG))
    return (-lower, mse, trial if trial is not None else 1 << 62)


def _download_config(client: MlflowClient, run_id: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="nalu-export-") as tmp:
        try:
            path = client.download_artifacts(run_id, "config.yaml", tmp)
        except Exception as err:
            raise ExportError(
                f"run {run_id} has no config.yaml artifact (not delivered yet?): {err}",
                field="run_id",
            ) from err
        data = load_yaml(Path(path).read_text())
    RunConfig.from_dict(data)  # an export must be trainable: fail here, not in the user's hands
    return dict(data)


def best_configs(tracking_uri: str, study_name: str) -> list[BestConfig]:
    """The best COMPLETE trial per task x op, ranked as the module doc says."""
    client = _client(tracking_uri)
    runs = [
        run
        for run in _trial_runs(client, _experiment_id(client, study_name))
        if run.data.tags.get(STATE_TAG) == "COMPLETE" and "success_lower" in run.data.metrics
    ]
    if not runs:
        raise ExportError(f"study {study_name!r} has no completed trial yet", field="name")
    groups: dict[tuple[str, str], list[Any]] = {}
    for run in runs:
        key = (run.data.params.get("task", "?"), run.data.params.get("op", "?"))
        groups.setdefault(key, []).append(run)
    best = []
    for (task, op), group in sorted(groups.items()):
        run = min(group, key=_rank_key)
        metrics, params = run.data.metrics, run.data.params
        best.append(
            BestConfig(
                task=task,
                op=op,
                unit=params.get("unit"),
                success_rate=metrics.get("success_rate", math.nan),
                success_lower=metrics["success_lower"],
                success_upper=metrics.get("success_upper", math.nan),
                extrapolation_mse_median=metrics.get("extrapolation_mse_median", math.nan),
                seeds=_int_or_none(params.get("seeds")),
                steps=_int_or_none(params.get("steps")),
                robust=_bool_or_none(run.data.tags.get(ROBUST_TAG)),
                run_id=run.info.run_id,
                optuna_trial=_int_or_none(run.data.tags.get(OPTUNA_TRIAL_TAG)),
                config=_download_config(client, run.info.run_id),
            )
        )
    return best


def _yaml_text(best: BestConfig, study_name: str) -> str:
    # The evidence goes in comments: `nalu-study train --config` reads only task/model/train.
    e = best.evidence()
    header = [
        f"# nalu-study export of study {study_name!r}: best {best.task} x {best.op}",
        f"# success rate {e['success_rate']:.3f}, Wilson 95% CI "
        f"[{e['success_lower']:.3f}, {e['success_upper']:.3f}] over {e['seeds']} seeds, "
        f"{e['steps']} steps; robust={e['robust']}",
        f"# median extrapolation MSE {e['extrapolation_mse_median']:.3g}",
        f"# MLflow run {e['run_id']}, Optuna trial {e['optuna_trial']}",
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(best.config, sort_keys=False)


def _nan_to_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def trials_dataframe(
    study_name: str,
    *,
    workdir: str | Path | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
) -> Any:
    """Every trial of a study as a pandas DataFrame, like Optuna's ``trials_dataframe``.

    The same columns and types as ``nalu-study export --all`` (see the module doc). The
    stores resolve as on the command line: the arguments, then ``NALU_STUDY_*``, then the
    study's ``study.json``, then the workdir's defaults.
    """
    settings, space = study_context(
        study_name, workdir=workdir, tracking_uri=tracking_uri, storage=storage
    )
    table = trials_table(
        str(settings["tracking_uri"]), study_name, space=space, storage=settings["storage"]
    )
    return table.to_pandas(types_mapper=_pandas_type)


def _pandas_type(kind: pa.DataType) -> Any:
    import pandas as pd

    # nullable dtypes: an int column with an inactive (null) value stays int64
    mapping = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    return mapping.get(kind)


def study_context(
    study_name: str,
    *,
    workdir: str | Path | None = None,
    tracking_uri: str | None = None,
    storage: str | None = None,
) -> tuple[dict[str, str | None], Any]:
    """The study's stores (CLI > env > study.json > default) and its search space, if known."""
    from study._settings import resolve_settings
    from study._studies import SPEC, read_record

    folder = None if workdir is None else str(workdir)
    where = resolve_settings(study_name, cli={"workdir": folder})
    study_dir = where.study_dir(study_name)
    try:
        recorded = read_record(study_dir).get("settings", {})
    except StudyError:
        recorded = {}
    file = {
        k: recorded.get(k)
        for k in ("tracking_uri", "storage")
        if isinstance(recorded, dict) and isinstance(recorded.get(k), str)
    }
    settings = resolve_settings(
        study_name,
        cli={
            "tracking_uri": tracking_uri,
            "storage": storage,
            "workdir": folder,
        },
        file=file,
    )
    space = None
    if (study_dir / SPEC).exists():
        from study._spec import load_space, load_spec

        try:
            space = load_space(load_spec(study_dir / SPEC).space)
        except Exception:  # noqa: BLE001 - the types then come from the logged values
            space = None
    optuna_file = sqlite_file(settings.storage)
    has_storage = optuna_file is None or optuna_file.exists()
    return {
        "tracking_uri": settings.tracking_uri,
        "storage": settings.storage if has_storage else None,
    }, space


def write_export(
    tracking_uri: str,
    study_name: str,
    *,
    fmt: ExportFormat,
    out: Path,
    all_trials: bool = False,
    space: Any = None,
    storage: str | None = None,
) -> list[Path]:
    """Writes the export; returns the files written.

    YAML writes one ``RunConfig`` file per task x op: to ``out`` itself when the study has a
    single one and ``out`` ends in ``.yaml``/``.yml``, else ``out/<task>_<op>.yaml``.
    """
    if all_trials:
        if fmt != "parquet":
            raise ExportError(f"--all writes Parquet only, got {fmt=}", field="format")
        import pyarrow.parquet as pq

        out.parent.mkdir(parents=True, exist_ok=True)
        table = trials_table(tracking_uri, study_name, space=space, storage=storage)
        pq.write_table(table, out)
        return [out]
    best = best_configs(tracking_uri, study_name)
    if fmt == "yaml":
        if out.suffix in (".yaml", ".yml"):
            if len(best) > 1:
                keys = ", ".join(f"{b.task}_{b.op}" for b in best)
                raise ExportError(
                    f"--out {out} names one file but the study has {len(best)} task x op "
                    f"({keys}): give a folder",
                    field="out",
                )
            targets = [out]
        else:
            targets = [out / safe_filename(f"{b.task}_{b.op}", ".yaml") for b in best]
        for path, b in zip(targets, best, strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_yaml_text(b, study_name))
        return targets
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        records = [
            {**{k: _nan_to_none(v) for k, v in b.evidence().items()}, "config": b.config}
            for b in best
        ]
        out.write_text(json.dumps({"study": study_name, "best": records}, indent=2))
        return [out]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows: dict[str, list[Any]] = {f.name: [] for f in BEST_SCHEMA}
        for b in best:
            record = {**b.evidence(), "config": json.dumps(b.config)}
            for name in rows:
                rows[name].append(record[name])
        pq.write_table(pa.table(rows, schema=BEST_SCHEMA), out)
        return [out]
    raise ExportError(f"format must be yaml, json or parquet, got {fmt!r}", field="format")


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_filename(stem: str, suffix: str) -> str:
    """A file name made from MLflow params (a task, an op) that stays in its folder.

    Separators, ``..`` and anything but letters, digits, ``_``, ``.`` and ``-`` become ``_``:
    a crafted task name such as ``../../x`` cannot write outside ``--out``.
    """
    name = _UNSAFE.sub("_", stem).replace("..", "_").lstrip(".") or "_"
    return name[:120] + suffix


def default_out(study_dir: Path, *, fmt: ExportFormat, all_trials: bool) -> Path:
    """Where an export goes without ``--out``: ``<study folder>/export/``."""
    folder = study_dir / "export"
    if all_trials:
        return folder / "trials.parquet"
    return folder if fmt == "yaml" else folder / f"best.{fmt}"


__all__ = [
    "BEST_SCHEMA",
    "TRIAL_SCHEMA",
    "BestConfig",
    "ExportError",
    "best_configs",
    "default_out",
    "safe_filename",
    "space_types",
    "study_context",
    "trials_dataframe",
    "trials_table",
    "write_export",
]
