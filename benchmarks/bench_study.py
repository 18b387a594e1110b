"""Study overhead: where the wall time of a real study goes.

Runs a shipped study spec (the ``quick`` demo by default) through ``study._launch.launch``
exactly as ``nalu-study launch`` does (Ray Tune, Optuna, MLflow, checkpoints; SQLite stores
in a fresh work directory), then splits its wall time into:

- training: the trainers' own ``train_seconds`` (steps and evaluations), summed over trials;
- in-trial overhead: each trial's wall time minus its training: building the trainer (task
  threshold, evaluation sets), MLflow logging and artifacts, checkpoints. Trainer set-up and
  checkpoint writes are timed separately here on the same configuration, MLflow is the rest;
- scheduling overhead: the idle slot-time of the Tune run (``slots x wall - trial wall``):
  actor start, Optuna's ask/tell and pruning decisions, result processing, idle slots;
- Ray start: starting the local Ray instance (MLflow's set-up runs meanwhile, on a thread);
- outside Tune: the rest of the launch's wall time (study record, Optuna storage and
  studies, whatever of MLflow's set-up outlasts Ray's start, Ray shutdown);
- imports: importing ray, optuna and mlflow (paid once per CLI call).

The slot-time is ``slots x launch wall``. Its overhead fraction is the share spent neither
training nor idle for want of work: once the last trial has started, a slot that frees up has
nothing left to run ("unused", reported apart). ``not_training_fraction`` is both together,
``1 - training / slot-time``.

    python benchmarks/bench_study.py                     # the demo study, as shipped
    python benchmarks/bench_study.py --json out.json
    python benchmarks/bench_study.py --ray-address 127.0.0.1:6390   # a running cluster
    python benchmarks/bench_study.py --smoke-test        # one tiny trial
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch


def _timed_imports() -> float:
    start = time.perf_counter()
    import mlflow  # noqa: F401
    import optuna  # noqa: F401
    import ray  # noqa: F401
    from ray import tune  # noqa: F401

    return time.perf_counter() - start


def component_costs(spec: Any) -> dict[str, float]:
    """Trainer set-up and one checkpoint write, timed on the spec's first task.

    The first trainer a process builds also pays torch's lazy imports (the first
    ``torch.optim.Adam`` imports ``torch._dynamo``): once per Ray actor, as actors are reused.
    """
    from nalu_core import ModelConfig, PopulationTrainer, RunConfig, TrainConfig
    from study._trainable import _save_state

    task = spec.tasks[0]
    train = TrainConfig(**spec.training.train_overrides())
    config = RunConfig(task=task, model=ModelConfig.stacked("nau"), train=train)
    start = time.perf_counter()
    PopulationTrainer(config)
    first = time.perf_counter() - start
    start = time.perf_counter()
    trainer = PopulationTrainer(config)
    setup = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for _ in range(5):
            _save_state(Path(tmp) / "state.pt", trainer.state_dict())
        checkpoint = (time.perf_counter() - start) / 5
    return {
        "first_trainer_extra_seconds": max(0.0, first - setup),
        "trainer_setup_seconds": setup,
        "checkpoint_seconds": checkpoint,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    # ray.init() without an address joins any cluster that `ray start` left on this machine
    # (/tmp/ray/ray_current_cluster); a benchmark must own its Ray instance
    os.environ.setdefault("RAY_ADDRESS", "local")
    imports = _timed_imports()
    from study._launch import launch
    from study._settings import resolve_settings
    from study._spec import load_spec

    overrides: dict[str, Any] = {"name": f"bench-{args.spec}-{os.getpid()}"}
    if args.steps is not None:
        overrides["training.steps"] = args.steps
    if args.num_samples is not None:
        overrides["budget.num_samples"] = args.num_samples
    if args.smoke_test:
        overrides |= {
            "tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 2}}],
            "training.steps": 40,
            "training.eval_every": 20,
            "budget.num_samples": 1,
            "budget.max_concurrent": 1,
        }
    spec = load_spec(args.spec, overrides=overrides)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench-study-"))
    cli = {"workdir": str(workdir)}
    if args.ray_address:
        cli["ray_address"] = args.ray_address
    settings = resolve_settings(spec.name, cli=cli, env={})
    lines: list[str] = []
    try:
        start = time.perf_counter()
        result = launch(spec, settings, echo=lines.append)
        launch_wall = time.perf_counter() - start
        stats = dict(result.stats)
        costs = component_costs(spec)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    trials = stats.get("trials", 0.0)
    slots = stats.get("slots") or 1.0
    train = stats.get("trial_train_seconds", 0.0)
    in_trial = stats.get("trial_wall_seconds", 0.0) - train
    setup = costs["trainer_setup_seconds"] * trials
    setup += costs["first_trainer_extra_seconds"] * min(slots, trials)
    evaluations = spec.training.steps // spec.training.eval_every
    checkpoints = (evaluations // spec.training.checkpoint_every + 1) * trials
    checkpoint = costs["checkpoint_seconds"] * checkpoints
    tune_wall = stats.get("study_wall_seconds", 0.0)
    ray_start = stats.get("ray_start_seconds", 0.0)
    # slots idle after the last trial started: the budget had nothing left to run in them
    unused = stats.get("idle_after_last_start_seconds", 0.0)
    split = {
        "training": train,
        "trainer_setup": setup,
        "checkpoints": checkpoint,
        # can come out slightly negative: set-up is timed here, not inside the trials
        "mlflow_and_rest_of_trial": in_trial - setup - checkpoint,
        "scheduling": slots * tune_wall - stats.get("trial_wall_seconds", 0.0) - unused,
        "ray_start": slots * ray_start,
        "outside_tune": slots * (launch_wall - tune_wall - ray_start),
    }
    slot_time = slots * launch_wall
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "node": platform.node(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "load_average": list(os.getloadavg()),
        },
        "spec": args.spec,
        "ray_address": args.ray_address or "local (started by the launch)",
        "trials": trials,
        "slots": slots,
        "launch_wall_seconds": launch_wall,
        "import_seconds": imports,
        "stats": stats,
        "components": costs,
        "slot_seconds": split,
        "unused_slot_seconds": unused,
        "overhead_fraction": (slot_time - train - unused) / slot_time,
        "unused_fraction": unused / slot_time,
        "not_training_fraction": 1.0 - train / slot_time,
        "tasks": [{"key": t.key, "counts": dict(t.counts)} for t in result.tasks]
        if all(hasattr(t, "key") and hasattr(t, "counts") for t in result.tasks)
        else [],
    }
    print(
        f"{int(trials)} trial(s), {int(slots)} slot(s), launch wall {launch_wall:.1f}s "
        f"(+{imports:.1f}s imports); load {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
    )
    for name, seconds in [*split.items(), ("unused (after last start)", unused)]:
        print(f"  {name:26s} {seconds:8.1f} slot-s  {100 * seconds / slot_time:5.1f}%")
    print(
        f"overhead: {100 * report['overhead_fraction']:.1f}% of the slot-time "
        f"(+{100 * report['unused_fraction']:.1f}% unused: "
        f"{100 * report['not_training_fraction']:.1f}% not training)"
    )
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default="quick", help="a shipped spec name or a spec file")
    parser.add_argument("--workdir", default=None, help="keep the study here (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--steps", type=int, default=None, help="override training.steps")
    parser.add_argument(
        "--num-samples", type=int, default=None, help="override budget.num_samples"
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="a running Ray cluster (HOST:PORT) instead of a fresh local instance",
    )
    parser.add_argument("--smoke-test", action="store_true", help="one tiny trial")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str))
    if args.smoke_test:
        return 0 if report["trials"] >= 1 and report["slot_seconds"]["training"] > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
