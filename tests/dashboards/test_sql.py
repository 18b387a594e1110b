"""The direct SQL reader returns exactly what MlflowClient returns, and the snapshot cache."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from dashboards import Dashboard, MlflowSource, NotFoundError, StoreUnavailableError
from dashboards._data import TRIAL_FILTER, record_of_run, store_stamp
from dashboards._snapshot import Snapshots
from dashboards._sql import SqlReader
from tests.dashboards._study_data import TrialSpec, sqlite_uri, write_study
from tests.dashboards.conftest import StudyStore, _no_fsync_under

ROLE = {"role_key": "nalu.role", "role": "trial"}
CURVES = ["success_rate", "extrapolation_mse_median", "never_logged"]


def norm(value: Any) -> Any:
    """Comparable form: dicts by sorted items, NaN equal to NaN, dataclasses by fields."""
    if hasattr(value, "__dataclass_fields__"):
        return norm({k: getattr(value, k) for k in value.__dataclass_fields__})
    if isinstance(value, dict):
        return tuple(sorted((k, norm(v)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return [norm(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def experiment_id(uri: str, name: str) -> str:
    exp = MlflowClient(uri).get_experiment_by_name(name)
    assert exp is not None
    return str(exp.experiment_id)


def client_runs(client: MlflowClient, exp_id: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:  # small pages: the reader must match across page boundaries too
        page = client.search_runs([exp_id], TRIAL_FILTER, max_results=3, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def assert_same_as_client(uri: str) -> None:
    client, reader = MlflowClient(uri), SqlReader(uri)
    exps = client.search_experiments()
    assert reader.experiments() == [(e.name, e.experiment_id) for e in exps]
    for exp in exps:
        expected = [record_of_run(r) for r in client_runs(client, exp.experiment_id)]
        got = reader.runs(exp.experiment_id, **ROLE)
        assert [r.run_id for r in got] == [r.run_id for r in expected]  # same runs, same order
        assert norm(got) == norm(expected)
        for run in expected:
            assert norm(reader.run(run.run_id)) == norm(record_of_run(client.get_run(run.run_id)))
            want = {
                k: sorted((m.step, m.value) for m in client.get_metric_history(run.run_id, k))
                for k in CURVES
            }
            assert norm(reader.history(run.run_id, CURVES)) == norm(want)
    assert reader.experiment_name(exps[0].experiment_id) == exps[0].name


def test_reader_matches_client_on_the_study(store: StudyStore) -> None:
    assert_same_as_client(store.uri)


def _edge_study(uri: str, root: Path) -> dict[str, str]:
    """Runs search_runs must include or leave out: deleted, non-trial, NaN/inf, no data, ties."""
    spec = TrialSpec(unit="nau", op="add", params={"lr": 0.1}, metrics={"success_rate": 0.5})
    ids = write_study(uri, "edges", [spec, spec], artifact_root=root / "a")
    write_study(uri, "other", [spec], artifact_root=root / "b")
    client = MlflowClient(uri)
    exp = experiment_id(uri, "edges")
    trial = {"nalu.role": "trial"}
    tie_a = client.create_run(exp, start_time=1_000, tags=trial).info.run_id
    tie_b = client.create_run(exp, start_time=1_000, tags=trial).info.run_id
    odd = client.create_run(exp, tags={**trial, "nalu.state": "pruned"}).info.run_id
    client.log_batch(
        odd,
        metrics=[
            Metric("success_rate", math.nan, 0, 1),
            Metric("inf", math.inf, 0, 0),
            Metric("ninf", -math.inf, 0, 0),
            Metric("curve", 2.0, 5, 2),
            Metric("curve", 1.0, 6, 1),
            Metric("curve", math.nan, 7, 3),
        ],
        params=[Param("empty", ""), Param("unicode", "µ ÷ ∞")],
        tags=[RunTag("note", "a 'quoted' value")],
    )
    deleted = client.create_run(exp, tags=trial).info.run_id
    client.delete_run(deleted)
    client.create_run(exp, tags={"nalu.role": "launch"})
    client.create_run(exp, tags={"nalu.role": "trial-ish"})
    return {"trial": ids[0], "tie_a": tie_a, "tie_b": tie_b, "odd": odd, "deleted": deleted}


@dataclass(frozen=True)
class Edges:
    db: Path
    ids: dict[str, str]

    def copy(self, folder: Path) -> str:
        """A private copy of the store (artifacts stay shared: their URIs are absolute)."""
        shutil.copy(self.db, folder / "copy.db")
        return sqlite_uri(folder / "copy.db")


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> Edges:
    root = tmp_path_factory.mktemp("edges").resolve()
    _no_fsync_under(root)
    ids = _edge_study(sqlite_uri(root / "mlflow.db"), root)
    return Edges(db=root / "mlflow.db", ids=ids)


def test_reader_matches_client_on_edge_cases(edges: Edges) -> None:
    uri, ids = sqlite_uri(edges.db), edges.ids
    assert_same_as_client(uri)
    reader = SqlReader(uri)
    exp = experiment_id(uri, "edges")
    got = [r.run_id for r in reader.runs(exp, **ROLE)]
    assert ids["deleted"] not in got and len(got) == 5
    assert got[-2:] == sorted([ids["tie_a"], ids["tie_b"]])  # oldest last; ties by run id
    # a deleted run is still readable by id, as get_run allows
    assert reader.run(ids["deleted"]).run_id == ids["deleted"]
    odd = reader.run(ids["odd"])
    assert math.isnan(odd.metrics["success_rate"])
    assert odd.metrics["ninf"] == -odd.metrics["inf"] < -1e300  # MLflow stores ±inf as ±max
    assert norm(reader.history(ids["odd"], ["curve"])) == norm(
        {"curve": [(1, 1.0), (2, 2.0), (3, math.nan)]}
    )
    with pytest.raises(NotFoundError):
        reader.run("0" * 32)
    # through MlflowSource: the SQL path and the MlflowClient path give the same trials
    fast, slow = MlflowSource(uri), MlflowSource(uri, read_sql=False)
    assert fast.sql is not None and slow.sql is None
    assert norm(fast.trials("edges")) == norm(slow.trials("edges"))
    assert norm(fast.trial(ids["odd"])) == norm(slow.trial(ids["odd"]))
    assert fast.history(ids["trial"], CURVES) == slow.history(ids["trial"], CURVES)
    assert fast.artifact_names(ids["trial"]) == slow.artifact_names(ids["trial"])
    assert fast.artifact_names(ids["trial"]) == ["config.yaml"]
    with pytest.raises(NotFoundError):
        fast.trials("no such study")


def test_reader_never_writes(tmp_path: Path, edges: Edges) -> None:
    missing = tmp_path / "missing.db"
    source = MlflowSource(sqlite_uri(missing))
    with pytest.raises(StoreUnavailableError):
        source.trials("x")
    import sqlalchemy.exc

    # read-only mode refuses a missing file instead of creating it
    with pytest.raises(sqlalchemy.exc.OperationalError, match="unable to open database file"):
        SqlReader(sqlite_uri(missing)).experiments()
    assert not missing.exists()
    uri = sqlite_uri(edges.db)
    before = store_stamp(uri)
    MlflowSource(uri).trials("edges")
    assert store_stamp(uri) == before


def test_snapshot_is_served_then_refreshed(tmp_path: Path, edges: Edges) -> None:
    uri, ids = edges.copy(tmp_path), edges.ids
    snaps = tmp_path / "snapshots"
    first = Dashboard(uri, ttl=300.0, snapshot_dir=snaps)
    trials = first.trials("edges")
    assert first.source.last_save is not None
    first.source.last_save.join()
    loaded = Snapshots(snaps, uri).load(trials[0].experiment_id)
    assert loaded is not None and loaded[1] is True  # unchanged store: current
    assert norm(loaded[0]) == norm(trials)
    # a restart with an unchanged store serves the snapshot as current, without reading
    again = Dashboard(uri, ttl=300.0, snapshot_dir=snaps)
    assert norm(again.trials("edges")) == norm(trials)
    assert again.source.last_save is None
    # after a write, the snapshot is served at once and refreshed behind it
    MlflowClient(uri).set_tag(ids["trial"], "nalu.state", "FAIL")
    loaded = Snapshots(snaps, uri).load(trials[0].experiment_id)
    assert loaded is not None and loaded[1] is False
    restarted = Dashboard(uri, ttl=300.0, snapshot_dir=snaps)
    stale = restarted.trials("edges")
    assert norm(stale) == norm(trials)
    for _ in range(200):  # the refresh runs on a thread
        fresh = restarted.trials("edges")
        if fresh is not stale:
            break
        time.sleep(0.05)
    states = {t.run_id: t.state for t in fresh}
    assert states[ids["trial"]] == "FAIL"


def test_broken_snapshot_is_ignored(tmp_path: Path, edges: Edges) -> None:
    uri = sqlite_uri(edges.db)
    snaps = Snapshots(tmp_path / "s", uri)
    exp = experiment_id(uri, "edges")
    snaps.path(exp).parent.mkdir(parents=True)
    snaps.path(exp).write_text('{"version": 1, "uri": "')
    assert snaps.load(exp) is None
    dash = Dashboard(uri, snapshot_dir=tmp_path / "s")
    assert len(dash.trials("edges")) == 5


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc", sql],
        check=True,
        capture_output=True,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )


@pytest.mark.integration
def test_reader_matches_client_on_postgresql(tmp_path: Path) -> None:
    name = f"nalu_dash_{uuid.uuid4().hex[:12]}"
    try:
        _psql(f"CREATE DATABASE {name}")
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {err}")
    uri = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"
    try:
        _edge_study(uri, tmp_path)
        assert_same_as_client(uri)
        reader = SqlReader(uri)
        with reader.engine.connect() as conn, pytest.raises(Exception, match="read-only"):
            conn.exec_driver_sql("DELETE FROM runs")
        reader.engine.dispose()
    finally:  # FORCE: MLflow's pooled connections would block the drop
        _psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
