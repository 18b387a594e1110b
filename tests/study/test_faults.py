"""Fault injection on real components: a Ray cluster on loopback, PostgreSQL, ``mlflow server``.

One Ray head (8 logical CPUs) serves the whole module and this process is its driver, as
``nalu-study launch`` would be; the worker-loss test adds and kills its own worker nodes, and
the driver-loss test runs the real CLI as a separate driver against the same cluster. Optuna
storage is a fresh PostgreSQL database per test; MLflow is one real server on a PostgreSQL
backend for the module. What each test asserts is in its docstring.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState
from typer.testing import CliRunner

from study._settings import Settings, resolve_settings
from study._spec import StudySpec, parse_spec
from tests.study.conftest import MlflowServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EVAL_METRICS = (
    "success_rate",
    "success_lower",
    "success_upper",
    "diverged",
    "extrapolation_mse_median",
    "interpolation_mse_median",
)
SPACE = {
    "name": "faults",
    "parameters": {"unit": "nau", "lr": {"type": "float", "low": 1e-2, "high": 5e-2, "log": True}},
}


def spec_for(
    name: str,
    tmp_path: Path,
    *,
    steps: int,
    num_samples: int,
    max_concurrent: int,
    space: dict[str, Any] = SPACE,
    **sections: Any,
) -> dict[str, Any]:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    return {
        "name": name,
        "tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 2}}],
        "space": "space.yaml",
        "training": {
            "seeds": 4,
            "steps": steps,
            "eval_every": 100,
            "checkpoint_every": 1,
            "max_failures": 2,
        },
        "budget": {"num_samples": num_samples, "max_concurrent": max_concurrent},
        "sampler": {"name": "random", "seed": 3},
        "pruner": {"name": "none"},
        "resources": {"cpus": 1},
        **sections,
    }


def settings_for(spec: StudySpec, cluster: Any, storage: str, uri: str, work: Path) -> Settings:
    cli = {"ray_address": cluster.address, "storage": storage, "tracking_uri": uri}
    return resolve_settings(spec.name, cli={**cli, "workdir": str(work)}, env={})


def _schema_ready(storage: str) -> bool:
    """Whether the driver has created Optuna's tables: a second creator would race it."""
    import psycopg2

    dsn = storage.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        # Optuna stamps alembic's version table last.
        cur.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        row = cur.fetchone()
        if not row or not row[0]:
            return False
        cur.execute("SELECT count(*) FROM alembic_version")
        row = cur.fetchone()
        return bool(row and row[0])


def optuna_trials(storage: str, study: str) -> list[FrozenTrial]:
    if not _schema_ready(storage):
        return []
    try:
        return optuna.load_study(study_name=f"{study}.static-add", storage=storage).get_trials()
    except KeyError:
        return []


def checkpointed(trial: FrozenTrial) -> bool:
    return Path(trial.user_attrs.get("checkpoint_dir", "/nonexistent"), "trainer.pt").exists()


def trial_runs(client: MlflowClient, study: str) -> list[Any]:
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None, f"no MLflow experiment {study!r}"
    return list(
        client.search_runs(
            [experiment.experiment_id],
            filter_string="tags.`nalu.role` = 'trial'",
            max_results=1000,
        )
    )


def assert_complete_history(client: MlflowClient, run: Any, steps: int, *, after: int = 0) -> None:
    """Every evaluation metric at every step after..steps (every 100), each exactly once."""
    want = list(range(after + 100, steps + 1, 100))
    for key in EVAL_METRICS:
        got = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert got == want, f"run {run.info.run_name} {key}: steps {got}"


def in_background(call: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Runs ``call`` (a driver) in a thread; the main thread stays free for Ray's node API."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = call()
        except BaseException as err:  # noqa: BLE001 - re-raised by the test
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def wait_for(until: Callable[[], bool], thread: threading.Thread, *, timeout: float) -> bool:
    """Polls ``until`` every 0.3 s while the driver thread lives; whether it came true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        if until():
            return True
        time.sleep(0.3)
    return False


def joined(thread: threading.Thread, out: dict[str, Any], *, timeout: float) -> Any:
    thread.join(timeout)
    assert not thread.is_alive(), f"the study did not end within {timeout:.0f}s"
    if "error" in out:
        raise out["error"]
    return out["result"]


# --- worker loss ----------------------------------------------------------------------------


def test_worker_loss_retries_from_checkpoint(
    cluster: Any, mlflow_server: MlflowServer, postgres_url: str, tmp_path: Path
) -> None:
    """Kill the node running two trials mid-way; a new node takes over.

    Asserts: each killed trial is retried on the new node from its checkpoint (restored step
    > 0), the study completes its budget, every Optuna trial is COMPLETE (none lost, none
    extra), and MLflow has one FINISHED run per trial with every evaluation exactly once.
    """
    from study._launch import launch

    # Only nodes with the "faulty" resource take these trials: the victim, then its successor.
    victim = cluster.add_node(num_cpus=2, resources={"faulty": 2})
    steps = 2000
    spec = parse_spec(
        spec_for(
            "worker-loss",
            tmp_path,
            steps=steps,
            num_samples=4,
            max_concurrent=2,
            resources={"cpus": 1, "custom": {"faulty": 1}},
        ),
        base_dir=tmp_path,
    )
    settings = settings_for(spec, cluster, postgres_url, mlflow_server.uri, tmp_path / "work")
    running: set[int] = set()

    def two_running_with_checkpoints() -> bool:
        trials = [t for t in optuna_trials(postgres_url, spec.name) if t.state.name == "RUNNING"]
        running.clear()
        running.update(t.number for t in trials)
        return len(trials) == 2 and all(checkpointed(t) for t in trials)

    thread, out = in_background(lambda: launch(spec, settings, echo=lambda line: None))
    successor: Any = None
    try:
        assert wait_for(two_running_with_checkpoints, thread, timeout=150), "no kill point"
        # Kill first, then add the successor: the killed trials wait for it, pending.
        cluster.remove_node(victim, allow_graceful=False)
        successor = cluster.add_node(num_cpus=2, resources={"faulty": 2})
        result = joined(thread, out, timeout=300)
    finally:
        thread.join(timeout=120)
        if successor is not None:
            cluster.remove_node(successor)

    trials = optuna_trials(postgres_url, spec.name)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert result.tasks[0].finished == 4
    for trial in trials:
        if trial.number in running:
            assert trial.user_attrs["restored_step"] > 0, trial.user_attrs
            assert trial.user_attrs["node_id"] == successor.node_id
        assert trial.user_attrs["step"] == steps

    client = MlflowClient(mlflow_server.uri)
    runs = trial_runs(client, spec.name)
    assert sorted(int(r.data.tags["nalu.optuna_trial"]) for r in runs) == [0, 1, 2, 3]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert_complete_history(client, run, steps)


# --- driver loss ----------------------------------------------------------------------------


def cli(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    return subprocess.Popen(
        [sys.executable, "-m", "study", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_driver_loss_then_resume(
    cluster: Any, mlflow_server: MlflowServer, postgres_url: str, tmp_path: Path
) -> None:
    """SIGKILL the ``nalu-study launch`` driver mid-study, then ``nalu-study resume``.

    Asserts: the budget is met exactly (4 COMPLETE, no duplicate: each interrupted trial is
    FAIL and re-run once with its parameters); nothing is RUNNING or WAITING in Optuna; no
    MLflow run is left RUNNING (the killed trials' runs and the first launch are closed); one
    FINISHED MLflow run per COMPLETE trial, with every evaluation after its restored step.
    """
    steps = 2000
    spec = spec_for("driver-loss", tmp_path, steps=steps, num_samples=4, max_concurrent=2)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    where = [
        "--address",
        cluster.address,
        "--storage",
        postgres_url,
        "--tracking-uri",
        mlflow_server.uri,
        "--workdir",
        str(tmp_path / "work"),
    ]
    driver = cli("launch", str(tmp_path / "spec.yaml"), *where)
    interrupted: set[int] = set()
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and driver.poll() is None:
            trials = optuna_trials(postgres_url, "driver-loss")
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if len(running) == 2 and all(checkpointed(t) for t in running):
                break
            time.sleep(0.3)
        assert driver.poll() is None, (driver.communicate()[0] or "")[-3000:]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    interrupted = {
        t.number for t in optuna_trials(postgres_url, "driver-loss") if t.state.name == "RUNNING"
    }
    assert interrupted, "the kill should leave trials RUNNING in Optuna"

    resume = cli("resume", "driver-loss", "--workdir", str(tmp_path / "work"))
    out, _ = resume.communicate(timeout=300)
    assert resume.returncode == 0, out[-3000:]

    trials = optuna_trials(postgres_url, "driver-loss")
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert len(by_state[TrialState.COMPLETE]) == 4
    assert not by_state[TrialState.RUNNING] and not by_state[TrialState.WAITING]
    assert {t.number for t in by_state[TrialState.FAIL]} == interrupted
    requeued = [t for t in trials if "requeued_from" in t.user_attrs]
    assert sorted(t.user_attrs["requeued_from"] for t in requeued) == sorted(interrupted)

    client = MlflowClient(mlflow_server.uri)
    runs = trial_runs(client, "driver-loss")
    assert [r for r in runs if r.info.status == "RUNNING"] == []
    finished = [r for r in runs if r.info.status == "FINISHED"]
    complete = {t.number: t for t in by_state[TrialState.COMPLETE]}
    assert sorted(int(r.data.tags["nalu.optuna_trial"]) for r in finished) == sorted(complete)
    for run in finished:
        # A re-run trial is a new Ray trial, so a new run; it logs the evaluations restored
        # from the checkpoint again, so that it holds the whole history on its own.
        assert_complete_history(client, run, steps)
    assert any(t.user_attrs["restored_step"] > 0 for t in requeued), "no re-run restored"
    experiment = client.get_experiment_by_name("driver-loss")
    assert experiment is not None
    launches = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`nalu.role` = 'launch'"
    )
    assert sorted(r.info.status for r in launches) == ["FINISHED", "KILLED"]


# --- tracking outage ------------------------------------------------------------------------


def test_tracking_outage_loses_no_metric(
    cluster: Any, mlflow_server: MlflowServer, postgres_url: str, tmp_path: Path
) -> None:
    """Stop the MLflow server for 20 s while trials train; bring it back on the same port.

    Asserts: the study completes (4 COMPLETE), and every run is FINISHED with every
    evaluation metric at every step, including evaluations made while the server was down.
    """
    from study._launch import launch

    steps = 2000
    spec = parse_spec(
        spec_for("outage", tmp_path, steps=steps, num_samples=4, max_concurrent=2),
        base_dir=tmp_path,
    )
    settings = settings_for(spec, cluster, postgres_url, mlflow_server.uri, tmp_path / "work")

    def training() -> bool:
        trials = optuna_trials(postgres_url, spec.name)
        return any(t.state == TrialState.RUNNING and t.intermediate_values for t in trials)

    thread, out = in_background(lambda: launch(spec, settings, echo=lambda line: None))
    try:
        assert wait_for(training, thread, timeout=150), "no trial trained"
        mlflow_server.stop()
        outage = {"down": time.time()}
        time.sleep(20)
        outage["up"] = time.time()
        assert thread.is_alive(), "the study ended before the outage did"
    finally:
        if mlflow_server.proc is None:
            mlflow_server.start()
    joined(thread, out, timeout=300)

    trials = optuna_trials(postgres_url, spec.name)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    client = MlflowClient(mlflow_server.uri)
    runs = trial_runs(client, spec.name)
    assert len(runs) == 4
    logged_during_outage = 0
    for run in runs:
        assert run.info.status == "FINISHED"
        assert_complete_history(client, run, steps)
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "seeds.parquet", "best_replica.safetensors"} <= names
        for metric in client.get_metric_history(run.info.run_id, "success_rate"):
            logged_during_outage += outage["down"] <= metric.timestamp / 1000 <= outage["up"]
    assert logged_during_outage > 0, "no evaluation happened during the outage"


# --- divergence -----------------------------------------------------------------------------


def test_diverging_configuration_is_recorded_and_the_study_goes_on(
    cluster: Any, mlflow_server: MlflowServer, postgres_url: str, tmp_path: Path
) -> None:
    """lr=1e30 with SGD overflows every replica to Inf/NaN; lr=0.01 trains normally.

    Asserts: every trial COMPLETE (the study goes on past the diverged ones); each lr=1e30
    trial is recorded in MLflow with ``diverged`` = 4 (all seeds) and a success rate of 0,
    each lr=0.01 trial with 0 diverged; both kinds occurred.
    """
    from study._launch import launch

    lrs = [0.01, 1e30]
    space = {"name": "blowup", "parameters": {"unit": "linear", "optimizer": "sgd", "lr": lrs}}
    # Random, not grid: the seed below draws both values within the first three trials.
    spec = parse_spec(
        spec_for(
            "diverge",
            tmp_path,
            steps=300,
            num_samples=3,
            max_concurrent=3,
            space=space,
            sampler={"name": "random", "seed": 0},
        ),
        base_dir=tmp_path,
    )
    settings = settings_for(spec, cluster, postgres_url, mlflow_server.uri, tmp_path / "work")
    launch(spec, settings, echo=lambda line: None)

    trials = optuna_trials(postgres_url, spec.name)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert {t.params["lr"] for t in trials} == set(lrs)
    client = MlflowClient(mlflow_server.uri)
    runs = trial_runs(client, spec.name)
    assert len(runs) == 3
    for run in runs:
        blown = float(run.data.params["lr"]) == 1e30
        assert run.data.metrics["diverged"] == (4.0 if blown else 0.0), run.data.params
        if blown:
            assert run.data.metrics["success_rate"] == 0.0


# --- bad input ------------------------------------------------------------------------------


def test_bad_input_exits_2_naming_the_field_and_writes_nothing(
    cluster: Any, mlflow_server: MlflowServer, postgres_url: str, tmp_path: Path
) -> None:
    """A malformed spec, search space or setting: exit code 2, the field in the message.

    Asserts also that nothing was launched or written: no study folder, no table in the
    Optuna database, no MLflow experiment.
    """
    import psycopg2

    from study.cli import app

    good = spec_for("bad-input", tmp_path, steps=300, num_samples=1, max_concurrent=1)
    (tmp_path / "inverted.yaml").write_text(
        yaml.safe_dump(
            {"name": "inv", "parameters": {"lr": {"type": "float", "low": 1, "high": 0.1}}}
        )
    )
    work = tmp_path / "work"
    options = {
        "--address": cluster.address,
        "--storage": postgres_url,
        "--tracking-uri": mlflow_server.uri,
        "--workdir": str(work),
    }
    # (spec, options replaced or dropped (None), environment, the field the error must name)
    cases: list[tuple[dict[str, Any], dict[str, str | None], dict[str, str], str]] = [
        ({**good, "training": {**good["training"], "seeds": 0}}, {}, {}, "training.seeds"),
        ({**good, "space": "inverted.yaml"}, {}, {}, "'lr'"),
        (good, {"--storage": "optuna.db"}, {}, "storage"),
        (good, {"--address": None}, {"NALU_STUDY_RAY_ADDRESS": "nohost"}, "ray_address"),
        (
            {**good, "settings": {"tracking_uri": "no-scheme"}},
            {"--tracking-uri": None},
            {},
            "tracking_uri",
        ),
        # valid as written: these reach launch(), which refuses them before writing anything
        ({**good, "resources": {"cpus": 100}}, {}, {}, "resources.cpus"),  # the nodes have 8
        ({**good, "resources": {"cpus": 1, "custom": {"tpu": 1}}}, {}, {}, "resources.custom.tpu"),
        (good, {"--storage": "postgresql://u:pw-secret@127.0.0.1:1/x"}, {}, "storage"),
        (good, {"--tracking-uri": "http://127.0.0.1:1"}, {}, "tracking_uri"),
    ]
    for i, (spec, changes, env, field) in enumerate(cases):
        path = tmp_path / f"bad-{i}.yaml"
        path.write_text(yaml.safe_dump(spec))
        args = ["launch", str(path)]
        for option, value in {**options, **changes}.items():
            args += [] if value is None else [option, value]
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 2, (field, result.output)
        assert f"error: {field}" in result.output or field in result.output, (field, result.output)
        assert "Traceback" not in result.output and "pw-secret" not in result.output

    # the same refusals from the Python API, past the command line's own checks
    from study._errors import StudyError
    from study._launch import launch

    spec = parse_spec({**good, "resources": {"cpus": 100}}, base_dir=tmp_path)
    settings = settings_for(spec, cluster, postgres_url, mlflow_server.uri, work)
    with pytest.raises(StudyError, match="resources.cpus"):
        launch(spec, settings, echo=lambda line: None)

    assert not work.exists()
    dsn = postgres_url.replace("postgresql+psycopg2://", "postgresql://")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema='public'")
        assert cur.fetchone() == (0,)
    assert MlflowClient(mlflow_server.uri).get_experiment_by_name("bad-input") is None


# --- concurrency ----------------------------------------------------------------------------


def test_eight_concurrent_trials_lose_and_duplicate_nothing(
    cluster: Any, mlflow_server: MlflowServer, postgres_url: str, tmp_path: Path
) -> None:
    """8 trials at once, all writing to PostgreSQL-backed Optuna and to the MLflow server.

    Asserts: 8 COMPLETE Optuna trials numbered 0..7 with their intermediate values at every
    step; 8 MLflow runs, one per Optuna trial, FINISHED, with the trial's parameters and every
    evaluation exactly once; and that the trials really overlapped: all 8 runs open at once
    (a barrier holds each trial at its first evaluation, its run open, until all 8 are
    there; without it, on a busy 2-core box, the first actors could finish their short
    trials before the last ones started).
    """
    from study._launch import launch

    steps = 600
    spec = parse_spec(
        spec_for("concurrent", tmp_path, steps=steps, num_samples=8, max_concurrent=8),
        base_dir=tmp_path,
    )
    settings = settings_for(spec, cluster, postgres_url, mlflow_server.uri, tmp_path / "work")
    barrier = {"dir": str(tmp_path / "barrier"), "parties": 8, "timeout": 120.0}
    launch(spec, settings, echo=lambda line: None, extra_config={"barrier": barrier})

    trials = optuna_trials(postgres_url, spec.name)
    assert sorted(t.number for t in trials) == list(range(8))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for trial in trials:
        assert sorted(trial.intermediate_values) == list(range(100, steps + 1, 100))

    client = MlflowClient(mlflow_server.uri)
    runs = trial_runs(client, spec.name)
    # MLflow runs open inside the trial actors, so their spans are the trials' real ones.
    spans = [(r.info.start_time, r.info.end_time) for r in runs]
    overlap = max(sum(s <= start < e for s, e in spans) for start, _ in spans)
    assert overlap == 8, f"only {overlap} trials ran at once"
    assert sorted(int(r.data.tags["nalu.optuna_trial"]) for r in runs) == list(range(8))
    by_number = {t.number: t for t in trials}
    for run in runs:
        trial = by_number[int(run.data.tags["nalu.optuna_trial"])]
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        assert_complete_history(client, run, steps)
