"""``nalu-study export`` on a small real study (SQLite default), read back with pyarrow."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from nalu_core import RunConfig
from study._export import BEST_SCHEMA, TRIAL_SCHEMA
from study._tracking import StudyTracker
from study.cli import app
from tests.study.test_tracking import run_trial, small_config

pytestmark = pytest.mark.slow

SPACE = {
    "name": "typed",
    "parameters": {
        "unit": ["nau", "nmu"],
        "lr": {"type": "float", "low": 1e-3, "high": 0.2, "log": True},
        "regularizer_lambda": {
            "type": "float",
            "low": 0.0,
            "high": 0.1,
            "condition": {"unit": ["nmu"]},
        },
    },
}
SPEC = {
    "name": "exp",
    "tasks": [{"name": "static", "ops": ["add", "sub"], "options": {"input_size": 2}}],
    "training": {"seeds": 4, "steps": 300, "eval_every": 100},
    "budget": {"num_samples": 2},
    "pruner": {"name": "none"},
}


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, sqlite_tracking_uri: Callable[[Path], str]
) -> dict[str, Any]:
    """Study ``exp`` in ``<workdir>``'s store: add x {good, bad lr}, sub x {good}, one pruned.

    Its folder holds the spec as launched (whose space types the ``param.*`` columns) and the
    workdir's Optuna storage holds the objective values told for it.
    """
    workdir = tmp_path_factory.mktemp("workdir")
    uri = sqlite_tracking_uri(workdir)
    (workdir / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (workdir / "exp").mkdir()
    spec = {**SPEC, "space": str(workdir / "space.yaml")}
    (workdir / "exp" / "spec.yaml").write_text(yaml.safe_dump(spec))
    (workdir / "exp" / "study.json").write_text(json.dumps({"name": "exp", "tasks": []}))
    storage = optuna.storages.RDBStorage(f"sqlite:///{workdir / 'optuna.db'}")
    for key, values in {
        "static-add": [0.25, 0.5, None, None],
        "static-sub": [None, None, 0.75],
    }.items():
        ot = optuna.create_study(study_name=f"exp.{key}", storage=storage, direction="maximize")
        for value in values:
            ot.tell(ot.ask(), value, state=TrialState.FAIL if value is None else None)
    study = StudyTracker(uri, study_name="exp")
    experiment = study.prepare()
    parent = study.start_launch()
    runs = {}
    for number, (op, lr) in enumerate([("add", 0.001), ("add", 0.1), ("sub", 0.1)]):
        config = small_config(op, lr=lr)
        tracker, result, _ = run_trial(
            uri, experiment, parent, config, ray_id=f"t{number}", optuna_trial=number
        )
        runs[number] = {"run_id": tracker.run_id, "config": config, "result": result}
    pruned, _, _ = run_trial(
        uri, experiment, parent, small_config("add"), ray_id="t3", optuna_trial=3, stop_after=1
    )
    pruned.finish("PRUNED")
    study.end_launch()
    return {"workdir": workdir, "uri": uri, "runs": runs, "pruned": pruned.run_id}


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def export_all(trained: dict[str, Any], out: Path, *extra: str) -> Any:
    """``export exp --all`` from the study's workdir, read back as an Arrow table."""
    workdir = str(trained["workdir"])
    res = invoke("export", "exp", "--all", "--format", "parquet", "--workdir", workdir, *extra,
                 "--out", str(out))  # fmt: skip
    assert res.exit_code == 0, res.output
    return pq.read_table(out)


def test_default_yaml_is_the_best_per_task_and_op(trained: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "best"
    res = invoke("export", "exp", "--workdir", str(trained["workdir"]), "--out", str(out))
    assert res.exit_code == 0, res.output
    files = sorted(p.name for p in out.iterdir())
    assert files == ["static_add.yaml", "static_sub.yaml"]
    runs = trained["runs"]
    add = (out / "static_add.yaml").read_text()
    assert RunConfig.from_dict(yaml.safe_load(add)) == runs[1]["config"]  # lr 0.1 beats 0.001
    assert runs[1]["run_id"] in add and "Optuna trial 1" in add
    sub = RunConfig.from_dict(yaml.safe_load((out / "static_sub.yaml").read_text()))
    assert sub == runs[2]["config"]


def test_json_and_parquet_carry_the_evidence(trained: dict[str, Any], tmp_path: Path) -> None:
    uri, runs = trained["uri"], trained["runs"]
    res = invoke(
        "export",
        "exp",
        "--format",
        "json",
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path / "b.json"),
    )
    assert res.exit_code == 0, res.output
    best = {(b["task"], b["op"]): b for b in json.loads((tmp_path / "b.json").read_text())["best"]}
    add = best[("static", "add")]
    result = runs[1]["result"]
    assert add["run_id"] == runs[1]["run_id"] and add["optuna_trial"] == 1
    assert add["success_rate"] == result.success_rate and add["seeds"] == 4
    assert (add["success_lower"], add["success_upper"]) == result.success_ci
    assert add["steps"] == 300 and add["config"] == runs[1]["config"].to_dict()

    res = invoke(
        "export",
        "exp",
        "--format",
        "parquet",
        "--tracking-uri",
        uri,
        "--out",
        str(tmp_path / "b.parquet"),
    )
    assert res.exit_code == 0, res.output
    table = pq.read_table(tmp_path / "b.parquet")
    assert table.schema.equals(BEST_SCHEMA) and table.num_rows == 2
    assert set(table.column("run_id").to_pylist()) == {runs[1]["run_id"], runs[2]["run_id"]}


def test_all_trials_parquet_schema(trained: dict[str, Any], tmp_path: Path) -> None:
    table = export_all(trained, tmp_path / "all.parquet", "--tracking-uri", trained["uri"])
    assert table.num_rows == 4
    assert table.schema.names[: len(TRIAL_SCHEMA)] == TRIAL_SCHEMA.names
    for field in TRIAL_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    rows = {r["run_id"]: r for r in table.to_pylist()}
    pruned = rows[trained["pruned"]]
    assert pruned["state"] == "PRUNED" and pruned["status"] == "FINISHED"
    assert pruned["trial_name"].endswith(" (pruned)")  # told apart in MLflow's runs list
    good = rows[trained["runs"][1]["run_id"]]
    assert good["state"] == "COMPLETE" and good["param.lr"] == 0.1 and good["optuna_trial"] == 1
    assert good["metric.success_rate"] == trained["runs"][1]["result"].success_rate
    assert good["duration_s"] > 0 and good["node"] and good["robust"] is True
    # the objective told to Optuna, and the Optuna study it belongs to
    assert good["objective"] == 0.5 and good["optuna_study"] == "exp.static-add"
    assert rows[trained["runs"][2]["run_id"]]["objective"] == 0.75
    assert pruned["objective"] is None

    # native types from the search space, the rest from the logged values
    schema = table.schema
    assert schema.field("param.lr").type == pa.float64()
    assert schema.field("param.unit").type == pa.string()
    assert schema.field("param.depth").type == pa.int64()
    assert schema.field("param.reinit_stalled").type == pa.bool_()
    # inactive conditional (nau has no regularizer here): a real null, typed as the space says
    assert schema.field("param.regularizer_lambda").type == pa.float64()
    assert table.column("param.regularizer_lambda").null_count == table.num_rows
    assert good["param.unit"] == "nau" and good["param.depth"] == 1


def test_trials_dataframe_is_the_same_table(trained: dict[str, Any], tmp_path: Path) -> None:
    from study import trials_dataframe

    table = export_all(trained, tmp_path / "all.parquet")
    frame = trials_dataframe("exp", workdir=trained["workdir"])
    assert list(frame.columns) == table.schema.names and len(frame) == table.num_rows
    assert str(frame["param.lr"].dtype) == "float64"
    assert (
        str(frame["param.depth"].dtype) == "Int64" and str(frame["optuna_trial"].dtype) == "Int64"
    )
    assert frame["param.regularizer_lambda"].isna().all()
    assert sorted(frame["objective"].dropna()) == [0.25, 0.5, 0.75]


def test_bad_requests_exit_2_naming_the_problem(trained: dict[str, Any]) -> None:
    res = invoke("export", "nope", "--tracking-uri", trained["uri"])
    assert res.exit_code == 2 and "nope" in res.output
    res = invoke("export", "exp", "--all", "--tracking-uri", trained["uri"])
    assert res.exit_code == 2 and "--format parquet" in res.output
    res = invoke("export", "exp", "--format", "csv", "--tracking-uri", trained["uri"])
    assert res.exit_code == 2 and "error: format: must be one of" in res.output
    res = invoke("export", "exp", "--tracking-uri", trained["uri"], "--out", "one.yaml")
    assert res.exit_code == 2 and "give a folder" in res.output


def test_exported_yaml_reproduces_its_success_rate(
    trained: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "best"
    assert (
        invoke("export", "exp", "--tracking-uri", trained["uri"], "--out", str(out)).exit_code == 0
    )
    evidence = trained["runs"][1]["result"]
    res = invoke(
        "train",
        "--config",
        str(out / "static_add.yaml"),
        "--json",
        str(tmp_path / "r.json"),
        "--quiet",
    )
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "r.json").read_text())
    low, high = evidence.success_ci
    assert low <= again["success_rate"] <= high
