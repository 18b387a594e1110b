"""Long trials on a real local Ray: checkpoints, a driver SIGKILL, ``resume``, early stops.

The driver is the real CLI (``python -m study launch``) with no ``--address``, so it starts its
own local Ray instance, as ``nalu-study launch`` does on a workstation; Optuna and MLflow are
SQLite files in the study folder. What each test asserts is in its docstring.
"""

from __future__ import annotations

import json
import os
import re
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
from optuna.trial import FrozenTrial, TrialState

from nalu_core import PopulationTrainer, RunConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Long enough that an idle CI machine is still mid-trial when the poll below sees two
# checkpoints (at 12,000 steps the whole trial once ended before the first poll saw one).
STEPS = 30_000
EVAL_EVERY = 100
CHECKPOINT_EVERY = 10  # evaluations: one checkpoint per 1,000 steps
INTERVAL = EVAL_EVERY * CHECKPOINT_EVERY
SPACE = {"name": "long", "parameters": {"unit": "nau", "lr": 0.01}}
_PROGRESS = re.compile(r"static-add #(\d+): ([\d,]+)/([\d,]+) steps \((\d+)%\), ETA (\S+)")


def _spec(tmp_path: Path, *, steps: int, options: dict[str, Any]) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    spec = {
        "name": "long",
        "tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 2}}],
        "space": "space.yaml",
        "training": {
            "seeds": 3,
            "steps": steps,
            "eval_every": EVAL_EVERY,
            "checkpoint_every": CHECKPOINT_EVERY,
            "max_failures": 0,
            "options": options,
        },
        "budget": {"num_samples": 1, "max_concurrent": 1},
        "sampler": {"name": "random", "seed": 0},
        "pruner": "none",
        "resources": {"cpus": 1},
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _cli(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "study", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the kill below hits the driver alone, as a crash would
    )


def _trials(work: Path) -> list[FrozenTrial]:
    db = work / "optuna.db"  # the workdir's one Optuna storage
    if not db.exists():
        return []
    try:
        study = optuna.load_study(study_name="long.static-add", storage=f"sqlite:///{db}")
    except Exception:  # the schema is being created
        return []
    return study.get_trials()


def _last_reported_step(work: Path, trials: list[FrozenTrial]) -> int:
    """The last step the driver received, from ``trials`` (:func:`_trials`) and result.json.

    The scheduler reports each result to Optuna at its trainer step, committed on arrival;
    Tune's result.json is also read, but it is a buffered file that lags by thousands of
    steps (a poll on it alone once missed every window on a loaded CI machine).
    """
    steps = [0]
    for trial in trials:
        steps.extend(int(step) for step in trial.intermediate_values)
    for path in (work / "long" / "ray").glob("launch-*/*/result.json"):
        for line in path.read_text().splitlines():
            if line.strip():
                steps.append(int(json.loads(line)["step"]))
    return max(steps)


def _checkpoint_step(trial: FrozenTrial) -> int | None:
    import torch

    path = Path(trial.user_attrs.get("checkpoint_dir", "/nonexistent"), "trainer.pt")
    if not path.exists():
        return None
    try:
        return int(torch.load(path, weights_only=True, map_location="cpu")["step"])
    except Exception:  # being replaced
        return None


class _Output:
    """The driver's output as it comes, read by a thread: a poll can look at what it printed."""

    def __init__(self, driver: subprocess.Popen[str]) -> None:
        assert driver.stdout is not None
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self.lines.extend, args=(driver.stdout,))
        self._thread.start()

    def text(self, timeout: float = 60) -> str:
        self._thread.join(timeout)  # the pipe closes when the driver is gone
        return "".join(self.lines)


def _wait(predicate: Callable[[], bool], driver: subprocess.Popen[str], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and driver.poll() is None:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_driver_sigkill_then_resume_loses_at_most_one_checkpoint_interval(
    tmp_path: Path, sqlite_tracking_uri: Callable[[Path], str]
) -> None:
    """SIGKILL the launch driver (its own local Ray) mid-trial, then ``resume``.

    Asserts: the re-run restores from the trial's last checkpoint, at most one checkpoint
    interval (1,000 steps) behind the last step the driver had received; the progress lines
    showed the trial's steps done out of its total with an ETA; and the resumed trial ends
    with exactly the result of an uninterrupted run of the same configuration (the checkpoint
    carries everything, so nothing is trained twice differently).
    """
    spec = _spec(tmp_path, steps=STEPS, options={})
    work = tmp_path / "work"
    (work / "long").mkdir(parents=True)
    where = ["--workdir", str(work), "--tracking-uri", sqlite_tracking_uri(work / "long")]
    driver = _cli("launch", str(spec), *where)
    output = _Output(driver)
    try:

        def two_checkpoints_in() -> bool:
            # and a per-trial progress line printed (every 5 s), which the asserts below read
            if not any(_PROGRESS.search(line) for line in list(output.lines)):
                return False
            trials = _trials(work)
            running = [t for t in trials if t.state == TrialState.RUNNING]
            step = _checkpoint_step(running[0]) if running else None
            if step is None or step < 2 * INTERVAL:
                return False
            return _last_reported_step(work, trials) > step

        reached = _wait(two_checkpoints_in, driver, timeout=240)
        if not reached:
            driver.wait(timeout=30)
        assert reached, output.text()[-3000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=60)
        out = output.text()
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    after_kill = _trials(work)
    reported = _last_reported_step(work, after_kill)
    killed = [t for t in after_kill if t.state == TrialState.RUNNING]
    assert len(killed) == 1, [t.state for t in after_kill]
    lines = [m for m in _PROGRESS.finditer(out)]
    assert lines, f"no per-trial progress line in:\n{out[-2000:]}"
    last = lines[-1]
    assert int(last[3].replace(",", "")) == STEPS and last[5] != "?"
    assert 0 < int(last[2].replace(",", "")) <= STEPS
    # The driver had received at least what it printed: result.json can lag the progress
    # line by its unflushed tail when the SIGKILL lands.
    reported = max(reported, int(last[2].replace(",", "")))

    resume = _cli("resume", "long", "--workdir", str(work))
    out, _ = resume.communicate(timeout=400)
    assert resume.returncode == 0, out[-3000:]

    trials = _trials(work)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 1 and complete[0].user_attrs["requeued_from"] == killed[0].number
    restored = int(complete[0].user_attrs["restored_step"])
    assert restored % INTERVAL == 0 and restored >= 2 * INTERVAL
    assert reported - restored <= INTERVAL, (reported, restored)
    assert int(complete[0].user_attrs["step"]) == STEPS

    config = RunConfig.from_dict(complete[0].user_attrs["run_config"])
    trainer = PopulationTrainer(config)
    seed0 = [(r.step, r.interpolation_mse[0], r.extrapolation_mse[0]) for r in trainer.run()]
    expected = trainer.result().metrics()
    cell = json.loads(Path(complete[0].user_attrs["checkpoint_dir"], "cell.json").read_text())
    for key in ("success_rate", "extrapolation_mse_median", "interpolation_mse_median"):
        assert cell["metrics"][key] == pytest.approx(expected[key], rel=1e-9, abs=0.0), key
    # seed 0's evaluations survived the kill through the checkpoint: one row per evaluation
    got = [
        (int(row["step"]), row["interpolation_mse"], row["extrapolation_mse"])
        for row in cell["seed0_history"]
    ]
    assert [g[0] for g in got] == list(range(EVAL_EVERY, STEPS + 1, EVAL_EVERY))
    assert got == seed0


def test_a_trial_that_solves_every_seed_ends_early_and_frees_its_slot(
    tmp_path: Path, sqlite_tracking_uri: Callable[[Path], str]
) -> None:
    """With ``stop_when_solved``, a trial whose seeds are all solved stops before its budget.

    Asserts: both trials of a one-slot study COMPLETE, each at a step below ``steps`` where
    every seed is solved, so the second trial ran in the slot the first one freed.
    """
    spec = _spec(tmp_path, steps=200_000, options={"stop_when_solved": True})
    data = yaml.safe_load(spec.read_text())
    data["budget"]["num_samples"] = 2
    spec.write_text(yaml.safe_dump(data))
    work = tmp_path / "work"
    (work / "long").mkdir(parents=True)
    launch = _cli(
        "launch",
        str(spec),
        "--workdir",
        str(work),
        "--tracking-uri",
        sqlite_tracking_uri(work / "long"),
    )
    out, _ = launch.communicate(timeout=400)
    assert launch.returncode == 0, out[-3000:]
    complete = [t for t in _trials(work) if t.state == TrialState.COMPLETE]
    assert len(complete) == 2
    for trial in complete:
        assert trial.user_attrs["success_rate"] == 1.0
        assert trial.user_attrs["step"] < 200_000
