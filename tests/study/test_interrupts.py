"""Interrupts and resume keep MLflow and Optuna in agreement; on real components.

A Ray cluster on loopback (this process is its head's first driver), the real PostgreSQL for
Optuna and a real ``mlflow server`` (PostgreSQL backend). Studies run through the real
command line in a separate process, which the tests interrupt with SIGINT (Ctrl-C) and
SIGKILL, then ``resume``; then the two stores are compared trial by trial.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from tests.study.conftest import PG_HOST, PG_PORT, MlflowServer, _admin_connection
from tests.study.test_faults import checkpointed, cli, optuna_trials, spec_for, trial_runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wait_until(driver: subprocess.Popen[str], until: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        if until():
            return
        time.sleep(0.3)
    out = driver.communicate()[0] if driver.poll() is not None else ""
    raise AssertionError(f"the condition never held; driver {driver.returncode}: {out[-3000:]}")


def compare_stores(client: MlflowClient, storage: str, study: str) -> list[FrozenTrial]:
    """Trial by trial: each run says its Optuna trial's final state, and they link."""
    trials = optuna_trials(storage, study)
    runs = trial_runs(client, study)
    by_trial: dict[int, list[Any]] = {}
    for run in runs:
        assert run.data.tags["nalu.optuna_study"] == f"{study}.static-add", run.data.tags
        by_trial.setdefault(int(run.data.tags["nalu.optuna_trial"]), []).append(run)
    for trial in trials:
        assert trial.state.is_finished(), (trial.number, trial.state)
        found = by_trial.get(trial.number, [])
        assert len(found) <= 1, f"trial {trial.number} has {len(found)} runs"
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            assert found, f"finished trial {trial.number} has no MLflow run"
        if not found:
            continue
        run = found[0]
        assert run.data.tags["nalu.state"] == trial.state.name, (trial.number, run.data.tags)
        want = "FINISHED" if trial.state != TrialState.FAIL else ("FAILED", "KILLED")
        assert run.info.status in want, (trial.number, trial.state, run.info.status)
        if "mlflow_run_id" in trial.user_attrs or trial.state == TrialState.COMPLETE:
            assert trial.user_attrs["mlflow_run_id"] == run.info.run_id, trial.number
    return trials


def test_sigint_sigkill_and_resume_keep_the_stores_in_agreement(
    cluster: Any, mlflow_server: MlflowServer, postgres_url: str, tmp_path: Path
) -> None:
    """Ctrl-C the driver mid-study, resume, SIGKILL it, resume to the end.

    Asserts: Ctrl-C exits 130 with the `nalu-study resume` advice (not Tune's
    Tuner.restore); after it, no trial is RUNNING and every interrupted one is FAIL in both
    stores; at the end the budget is met, the stores agree trial by trial (state, status,
    links), no finished trial repeats another's parameters (a reseeded sampler), the
    in-trial overhead is not negative, and a resume with nothing left is no launch.
    """
    name = "interrupts"
    spec = spec_for(name, tmp_path, steps=1200, num_samples=6, max_concurrent=2)
    spec["sampler"] = {"name": "random", "seed": 11}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    work = tmp_path / "work"
    where = ["--address", cluster.address, "--storage", postgres_url]
    where += ["--tracking-uri", mlflow_server.uri, "--workdir", str(work)]

    def running_with_checkpoints(n: int, *, complete: int = 0) -> Callable[[], bool]:
        def check() -> bool:
            trials = optuna_trials(postgres_url, name)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            return len(running) >= n and len(done) >= complete and all(map(checkpointed, running))

        return check

    # 1. Ctrl-C while two trials run and one has finished
    driver = cli("launch", str(tmp_path / "spec.yaml"), *where)
    wait_until(driver, running_with_checkpoints(2, complete=1), timeout=240)
    interrupted = {
        t.number for t in optuna_trials(postgres_url, name) if t.state.name == "RUNNING"
    }
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, out[-3000:]
    assert f"nalu-study resume {name}" in out and "Tuner.restore" not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    client = MlflowClient(mlflow_server.uri)
    trials = compare_stores(client, postgres_url, name)
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    assert failed and not [t for t in trials if t.state == TrialState.RUNNING], trials
    # a trial seen RUNNING just before the signal may have finished before it landed (the
    # Ctrl-C then hit the one started next): then it is COMPLETE with its whole budget
    for t in trials:
        if t.number in interrupted and t.number not in failed:
            assert t.state == TrialState.COMPLETE and t.user_attrs["step"] == 1200, t
    for run in trial_runs(client, name):
        if int(run.data.tags["nalu.optuna_trial"]) in failed:
            assert run.data.tags["nalu.state"] == "FAIL" and run.info.status != "FINISHED"

    # 2. resume, SIGKILL it while a trial runs, 3. resume to the end
    driver = cli("resume", name, "--workdir", str(work))
    wait_until(driver, running_with_checkpoints(1), timeout=240)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=60)
    driver = cli("resume", name, "--workdir", str(work))
    out, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, out[-3000:]
    overhead = re.search(r"in-trial overhead (-?[\d.]+)s/trial", out)
    assert overhead is not None and float(overhead.group(1)) >= 0, out[-2000:]

    trials = compare_stores(client, postgres_url, name)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len([t for t in finished if t.state == TrialState.COMPLETE]) == 6
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == len(params), f"a finished trial repeats another: {params}"
    runs = trial_runs(client, name)
    assert [r for r in runs if r.info.status == "RUNNING"] == []

    # 4. nothing left: no launch is counted, the status stays finished
    record = yaml.safe_load((work / name / "study.json").read_text())
    again = cli("resume", name, "--workdir", str(work))
    out, _ = again.communicate(timeout=300)
    assert again.returncode == 0 and "nothing to run" in out, out[-2000:]
    after = yaml.safe_load((work / name / "study.json").read_text())
    # launch (Ctrl-C), resume (SIGKILL: never ended), resume (to the end); not the no-op
    assert after["launches"] == record["launches"]
    assert [x.get("status") for x in after["launches"]] == ["interrupted", None, "finished"]
    assert after["status"] == "finished"


def test_two_launches_of_one_name_at_once(cluster: Any, postgres_url: str, tmp_path: Path) -> None:
    """Both start together; one runs the study, the other is refused with one line."""
    spec = spec_for("twice", tmp_path, steps=200, num_samples=1, max_concurrent=1)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    args = ["launch", str(tmp_path / "spec.yaml"), "--address", cluster.address]
    args += ["--storage", postgres_url, "--workdir", str(tmp_path / "work")]
    drivers = [cli(*args), cli(*args)]
    outs = [d.communicate(timeout=400)[0] for d in drivers]
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 1], outs
    loser = outs[[d.returncode for d in drivers].index(1)]
    assert re.search(r"error: name: study 'twice' (is being launched|already exists)", loser)
    assert "Traceback" not in loser
    record = yaml.safe_load((tmp_path / "work" / "twice" / "study.json").read_text())
    assert len(record["launches"]) == 1 and record["status"] == "finished"
    trials = optuna_trials(postgres_url, "twice")
    assert [t.state for t in trials] == [TrialState.COMPLETE]


@pytest.fixture
def role_without_create(postgres_url: str) -> Iterator[str]:
    """The database URL for a role that may connect but not create tables."""
    role = f"nalu_ro_{uuid.uuid4().hex[:8]}"
    database = postgres_url.rsplit("/", 1)[1]
    conn = _admin_connection()
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN')
            cur.execute(f'REVOKE CREATE ON SCHEMA public FROM PUBLIC, "{role}"')
        yield f"postgresql://{role}@{PG_HOST}:{PG_PORT}/{database}"
    finally:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (role,),
            )
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.close()


def test_a_launch_failing_to_open_its_stores_is_not_left_running(
    cluster: Any, role_without_create: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from study.cli import app

    spec = spec_for("no-tables", tmp_path, steps=200, num_samples=1, max_concurrent=1)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    args = ["launch", str(tmp_path / "spec.yaml"), "--address", cluster.address]
    args += ["--storage", role_without_create, "--workdir", str(tmp_path / "work")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "error: storage: cannot open the Optuna storage" in result.output
    record = yaml.safe_load((tmp_path / "work" / "no-tables" / "study.json").read_text())
    assert record["status"] == "failed", record
    assert record["launches"][-1]["status"] == "failed"
    import sqlalchemy

    engine = sqlalchemy.create_engine(role_without_create)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []  # and nothing half-made
    finally:
        engine.dispose()


def test_a_local_ray_instance_takes_no_one_without_its_token(tmp_path: Path) -> None:
    """Ray listens on every interface (it will not bind to loopback), so the instance that
    ``launch`` starts locally has token auth on: a process without the token cannot join."""
    script = f"""
import os, subprocess, sys
from study._launch import _ray
import ray
with _ray(None):
    address = ray.get_runtime_context().gcs_address
    assert os.environ["RAY_AUTH_MODE"] == "token"
    join = "import ray; ray.init(address=%r); print('JOINED')" % address
    bare = {{k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}}
    bare["HOME"] = {str(tmp_path)!r}  # no ~/.ray/auth_token either
    out = subprocess.run([sys.executable, "-c", join], env=bare, capture_output=True,
                         text=True, timeout=120)
    print("WITHOUT", out.returncode, "JOINED" in out.stdout)
    out = subprocess.run([sys.executable, "-c", join], capture_output=True, text=True,
                         timeout=120)
    print("WITH", out.returncode, "JOINED" in out.stdout)
print("AFTER", os.environ.get("RAY_AUTH_MODE"))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WITHOUT 1 False" in done.stdout, done.stdout
    assert "WITH 0 True" in done.stdout, done.stdout
    assert "AFTER None" in done.stdout  # the environment is given back
