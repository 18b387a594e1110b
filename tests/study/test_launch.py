"""The real CLI end to end on the embedded defaults: launch, kill -9 the driver, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from typer.testing import CliRunner

from study._studies import open_storage
from study.cli import app

SPACE = {
    "name": "small",
    "parameters": {
        "unit": ["nau", "nmu"],
        "lr": {"type": "float", "low": 1e-3, "high": 5e-2, "log": True},
    },
}
SPEC = {
    "name": "killed",
    "tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 2}}],
    "space": "small.yaml",
    # long enough per trial that the kill lands while two trials are mid-way
    "training": {"seeds": 4, "steps": 1500, "eval_every": 100, "checkpoint_every": 1},
    "budget": {"num_samples": 3, "max_concurrent": 2},
    "sampler": {"name": "tpe", "seed": 1},
    "pruner": {"name": "none"},
    "resources": {"cpus": 1},
}


def cli(*args: str, workdir: Path, **kwargs: object) -> subprocess.Popen[str]:
    env = dict(os.environ, NALU_STUDY_WORKDIR=str(workdir), RAY_USAGE_STATS_ENABLED="0")
    return subprocess.Popen(
        [sys.executable, "-m", "study", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )


def trial_states(storage: str) -> list[optuna.trial.FrozenTrial]:
    if not Path(storage.removeprefix("sqlite:///")).exists():
        return []
    try:
        # open_storage: the driver may be creating the tables at this very moment
        study = optuna.load_study(study_name="killed.static-add", storage=open_storage(storage))
    except KeyError:
        return []
    return study.get_trials()


def children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc), to check nothing outlives a killed driver."""
    found: set[int] = set()
    parents = {pid}
    for _ in range(6):
        new = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(") ", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) in parents:
                new.add(int(stat.parent.name))
        new -= found
        if not new:
            break
        found |= new
        parents = new
    return found


@pytest.mark.integration
@pytest.mark.slow
def test_resume_after_sigkill_finishes_the_budget_exactly(tmp_path: Path) -> None:
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SPACE))
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    workdir = tmp_path / "work"
    storage = f"sqlite:///{workdir / 'optuna.db'}"  # the workdir's one store

    driver = cli("launch", str(tmp_path / "spec.yaml"), workdir=workdir)
    running: list[optuna.trial.FrozenTrial] = []
    deadline = time.monotonic() + 150
    try:
        # kill once two trials are running and at least one of them has a checkpoint
        while time.monotonic() < deadline and driver.poll() is None:
            trials = trial_states(storage)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            saved = [
                t
                for t in running
                if Path(t.user_attrs.get("checkpoint_dir", "/nonexistent"), "trainer.pt").exists()
            ]
            if len(running) == 2 and saved:
                break
            time.sleep(0.5)
        assert driver.poll() is None, driver.communicate()[0][-3000:]
        assert running, "no trial started in time"
        descendants = children(driver.pid)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    # Ray's processes share the driver's fate; give them a moment, then clean up stragglers
    time.sleep(3)
    for pid in descendants:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    interrupted = {t.number for t in trial_states(storage) if t.state == TrialState.RUNNING}
    assert interrupted, "the kill should leave trials RUNNING in storage"
    status = CliRunner().invoke(app, ["status", "killed", "--json", "--workdir", str(workdir)])
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["status"] == "interrupted"

    resume = cli("resume", "killed", workdir=workdir)
    out, _ = resume.communicate(timeout=240)
    assert resume.returncode == 0, out[-3000:]
    assert "re-enqueued" in out

    trials = trial_states(storage)
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 3
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    failed = {t.number for t in trials if t.state == TrialState.FAIL}
    assert failed == interrupted
    requeued = [t for t in trials if "requeued_from" in t.user_attrs]
    # each interrupted trial ran again exactly once, with its parameters, from its checkpoint
    assert sorted(t.user_attrs["requeued_from"] for t in requeued) == sorted(interrupted)
    by_number = {t.number: t for t in trials}
    for trial in requeued:
        original = by_number[trial.user_attrs["requeued_from"]]
        assert trial.params == original.params
        assert trial.state == TrialState.COMPLETE
        ckpt = original.user_attrs["checkpoint_dir"]
        assert trial.user_attrs["checkpoint_dir"] == ckpt
    assert any(t.user_attrs["restored_step"] > 0 for t in requeued)

    listing = CliRunner().invoke(app, ["list", "--json", "--workdir", str(workdir)])
    rows = json.loads(listing.output)
    assert [(r["name"], r["status"], r["launches"]) for r in rows] == [("killed", "finished", 2)]


def test_reconcile_requeues_each_interrupted_trial_once(tmp_path: Path) -> None:
    from study._launch import quotas, reconcile_storage
    from study._spec import parse_spec

    (tmp_path / "small.yaml").write_text(yaml.safe_dump(SPACE))
    spec = parse_spec(SPEC, base_dir=tmp_path)
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    study = optuna.create_study(
        study_name="killed.static-add", storage=storage, direction="maximize"
    )
    done = study.ask()
    study.tell(done, 0.5)
    pruned = study.ask()
    pruned.report(0.1, step=100)
    study.tell(pruned, state=TrialState.PRUNED)
    left_running = study.ask({"lr": optuna.distributions.FloatDistribution(1e-3, 5e-2)})
    left_running.set_user_attr("checkpoint_dir", str(tmp_path / "ckpt"))

    assert reconcile_storage(storage, "killed", ["static-add"]) == {
        "failed_running": 1,
        "requeued": 1,
    }
    # a second resume (say, killed again before running anything) must not enqueue it again
    assert reconcile_storage(storage, "killed", ["static-add"]) == {
        "failed_running": 0,
        "requeued": 0,
    }
    trials = study.get_trials()
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert [t.state for t in trials[:3]] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.FAIL,
    ]
    assert len(waiting) == 1
    assert waiting[0].user_attrs == {
        "requeued_from": 2,
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    rerun = study.ask()  # the next trial asked is the re-enqueued one, with its parameters
    assert rerun.number == waiting[0].number
    assert rerun.suggest_float("lr", 1e-3, 5e-2) == trials[2].params["lr"]
    study.tell(rerun, state=TrialState.FAIL)
    # num_samples 3: COMPLETE + PRUNED count, FAIL does not
    assert quotas(storage, spec, num_samples=3) == {"static-add": 1}


def test_idle_after_last_start_counts_only_the_slots_left_without_work() -> None:
    from types import SimpleNamespace

    from study._launch import _Progress

    progress = _Progress(echo=lambda line: None, scheduler=None, heartbeat=lambda: None)
    for trial_id in ("a", "b"):
        progress.on_trial_start(0, [], SimpleNamespace(trial_id=trial_id))
    assert progress.last_start == 1 and [n for _, n in progress.occupancy] == [1, 2]
    # two slots: a ends at 10 s (a slot idles 1 s before c starts: scheduling, not the tail);
    # c, the last trial, starts at 11 s; b ends at 15 s and c at 30 s: one slot idle 15 s
    progress.occupancy = [(0.0, 1), (0.0, 2), (10.0, 1), (11.0, 2), (15.0, 1), (30.0, 0)]
    progress.last_start = 3
    assert progress.idle_after_last_start(2) == pytest.approx(15.0)
    assert progress.idle_after_last_start(0) == 0.0
    assert _Progress(echo=print, scheduler=None, heartbeat=print).idle_after_last_start(2) == 0.0


def test_overhead_line_reports_the_unused_tail_and_ray_start_apart() -> None:
    from study.cli._study import overhead_line

    stats = {
        "trials": 10.0,
        "study_wall_seconds": 100.0,
        "trial_wall_seconds": 170.0,
        "trial_train_seconds": 160.0,
        "slots": 2.0,
        "idle_after_last_start_seconds": 20.0,
        "ray_start_seconds": 5.0,
    }
    line = overhead_line(stats)
    # 2 x 100 s of slot-time, 170 s in trials, 20 s idle with nothing left: 10 s scheduling
    assert "in-trial overhead 1.00s/trial" in line
    assert "scheduling overhead 1.00s/trial (2 slots; 20.0 slot-s idle at the end" in line
    assert line.endswith("Ray start 5.0s")


def test_open_storage_survives_another_process_creating_the_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    # four processes open the same new file at once; each must get a working storage
    code = (
        "import sys, time; from study._studies import open_storage; "
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time())); open_storage(sys.argv[1])"
    )
    start = str(time.time() + 4.0)
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url, start], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
    optuna.create_study(study_name="x", storage=open_storage(url))
    assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["x"]


def test_progress_reads_done_x_of_n_with_an_eta() -> None:
    from study._launch import _Progress

    progress = _Progress(echo=print, scheduler=None, heartbeat=print, total=10)
    assert progress.line(12.0).startswith("[    12s] done 0 of 10 (pruned 0, failed 0)")
    assert "ETA -" in progress.line(12.0)  # nothing finished yet: no pace to go by
    progress.done, progress.pruned = 3, 1  # 4 finished in 40 s: 6 left take about 60 s
    assert "done 4 of 10 (pruned 1, failed 0) | running 0 | ETA 1m00s" in progress.line(40.0)
    limited = _Progress(echo=print, scheduler=None, heartbeat=print, total=10, time_left=50.0)
    limited.done = 4
    assert "ETA 10s" in limited.line(40.0)  # the time limit ends it first
