"""One cell of Madsen's table at the published budget, within a wall-clock limit.

The published protocol (``reproduce_madsen.py --full``: 5e6 steps, 100 seeds, the published
regulariser schedules) with ``stop_when_solved``: a replica freezes once it succeeds and
the run ends when every replica has succeeded or diverged, or at ``--time-limit``
(``request_stop``). It reports steps/s, the success rate so far and when each seed solved.

    python benchmarks/full_cell.py --model nmu --op mul --device cuda --time-limit 240 \
        --json benchmarks/results/full_cell_nmu_mul_cuda.json
    python benchmarks/full_cell.py --smoke-test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce_madsen import FULL_SEEDS, FULL_STEPS, Variant, run_config  # noqa: E402

from nalu_core import PopulationTrainer  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nmu")
    parser.add_argument("--op", default="mul")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", type=int, default=FULL_SEEDS)
    parser.add_argument("--steps", type=int, default=FULL_STEPS)
    parser.add_argument("--data-streams", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=240.0, help="seconds")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke_test:
        args.seeds, args.steps, args.time_limit = 4, 200, 20.0
    variant = Variant(
        name="full",
        steps=args.steps,
        seeds=args.seeds,
        eval_every=min(1000, args.steps),
        eval_samples=10_000,
        published_schedule=True,
    )
    config = run_config(args.model, args.op, variant, device=args.device)
    train = dataclasses.replace(
        config.train, stop_when_solved=True, data_streams=args.data_streams
    )
    config = dataclasses.replace(config, train=train)
    trainer = PopulationTrainer(config)
    timer = threading.Timer(args.time_limit, trainer.request_stop)
    timer.start()
    start = time.perf_counter()
    last = None
    try:
        for report in trainer.run():
            last = report
            done = sum(s or d for s, d in zip(report.success, report.diverged, strict=True))
            if report.step % 100_000 == 0:
                print(f"step {report.step}: {sum(report.success)}/{args.seeds} solved", flush=True)
            if done == args.seeds:
                break  # every replica froze: nothing left to train
    finally:
        timer.cancel()
    wall = time.perf_counter() - start
    result = trainer.result()
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": str(trainer.device)
        if trainer.device.type != "cuda"
        else torch.cuda.get_device_name(trainer.device),
        "model": args.model,
        "op": args.op,
        "seeds": args.seeds,
        "steps_planned": args.steps,
        "steps_done": trainer.step,
        "wall_seconds": wall,
        "train_seconds": result.train_seconds,
        "steps_per_s": trainer.step / max(result.train_seconds, 1e-9),
        "successes": sum(s.success for s in result.seeds),
        "success_ci": list(result.success_ci),
        "solved_at": sorted(s.solved_at for s in result.seeds if s.solved_at is not None),
        "finished": last is not None and trainer.step >= args.steps,
    }
    print(json.dumps({k: v for k, v in out.items() if k != "solved_at"}))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
