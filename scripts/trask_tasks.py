"""Train one configuration of a Trask (2018) sequence task and print every split's metrics.

``nalu-study train`` reports the trainer's interpolation/extrapolation MSE; this script adds
what the sequence tasks define beyond it (MAE, counting accuracy, the 1000-digit split, the
number-translation train split), evaluated on each replica's best-interpolation parameters.

    python scripts/trask_tasks.py --task mnist-count --unit nac_add --steps 1500
    python scripts/trask_tasks.py --task number-translation --unit nalu --steps 3000
    python scripts/trask_tasks.py --task recurrent --unit lstm --hidden-size 16 --steps 3000
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch

from nalu_core import (
    ModelConfig,
    PopulationTrainer,
    RunConfig,
    TaskConfig,
    TrainConfig,
    evaluate_splits,
)


def _value(text: str) -> object:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--op", default="add")
    parser.add_argument("--unit", required=True, help="first layer (lstm, nac_add, nalu, ...)")
    parser.add_argument("--output-unit", default=None, help="last layer, when depth > 1")
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("--hidden-size", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--regularizer-lambda", type=float, default=None)
    parser.add_argument("--regularizer-start", type=int, default=None)
    parser.add_argument("--regularizer-end", type=int, default=None)
    parser.add_argument("--task-option", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)

    options = {k: _value(v) for k, _, v in (o.partition("=") for o in args.task_option)}
    config = RunConfig(
        task=TaskConfig(name=args.task, op=args.op, options=options),
        model=ModelConfig.stacked(
            args.unit, depth=args.depth, hidden_size=args.hidden_size, output_unit=args.output_unit
        ),
        train=TrainConfig(
            seeds=args.seeds,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            eval_every=args.eval_every,
            regularizer_lambda=args.regularizer_lambda,
            regularizer_start=args.regularizer_start,
            regularizer_end=args.regularizer_end,
            device="cpu",
        ),
    )
    start = time.perf_counter()
    trainer = PopulationTrainer(config)
    for _ in trainer.run():
        pass
    network = trainer.network
    baseline = trainer.task.build_model(config.model, population=trainer.population)
    baseline.reset_parameters([torch.Generator().manual_seed(s) for s in trainer.seeds])
    with torch.no_grad():
        for name, p in network.named_parameters():
            p.copy_(trainer.best_params[name])
    report = evaluate_splits(
        trainer.task,  # type: ignore[arg-type]
        network,
        trainer.eval_sets,
        population=trainer.population,
        baseline=baseline,
    )
    seconds = time.perf_counter() - start
    print(
        f"{args.task} {args.op} unit={args.unit} seeds={args.seeds} steps={args.steps} "
        f"({seconds:.0f} s)"
    )
    for split, metrics in report.items():
        parts = []
        for key, values in metrics.items():
            # a diverged replica (inf/NaN) counts as the worst, not as missing
            worst = [math.inf if math.isnan(v) else v for v in values]
            parts.append(f"{key}={statistics.median(worst):.4g}")
        print(f"  {split:20s} median over seeds: " + " ".join(parts))
        print(f"  {'':20s} mae per seed: " + " ".join(f"{v:.4g}" for v in metrics["mae"]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": config.to_dict(), "seconds": seconds, "splits": report}, fh)


if __name__ == "__main__":
    main()
