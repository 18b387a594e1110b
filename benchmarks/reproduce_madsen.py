"""Madsen & Johansen (2020), static arithmetic task: our success rates next to theirs.

Protocol (their appendix "simple function task"): x in R^100, subset ratio 0.25, overlap
0.5 (25-input subsets sharing 12, at an offset drawn per seed), interpolation U[1,2] ->
extrapolation U[2,6], Adam (lr 1e-3), batch 128 drawn fresh at every step, two-layer networks
with 2 hidden units, the paper's success criterion (first layer ε-perturbed, ε = 1e-5, the op
exact) at the step with the lowest interpolation error, Wilson 95% intervals over seeds;
solved-at is the median over the solved seeds.

Every model's configuration comes from the published-row table (nalu_core/_published.py):
NAC₊ -> NAC₊, NAC₊ -> NAC•, NALU -> NALU (no regulariser, as the reference), NAU -> NAU
(λ̂ = 0.01 on both layers, 5e3 -> 5e4) and NAU -> NMU (λ̂ = 10 on both layers, 1e6 -> 2e6:
stable-nalu has one --regualizer for the network). ``--flags-table`` prints each row's
reference batch-job flags beside ours.

Variants:
  --full           5e6 steps, 100 seeds, each row's published schedule (a GPU job).
  (default)        the reduced CPU variant: 25k steps, 8 seeds; each row keeps its λ̂,
                   ramped in from 60% to 80% of the run (the published onsets, 5e3 and 1e6
                   steps, follow convergence as this does).
  --smoke-test     a few steps of every cell, to keep this script from rotting.

Each cell (model x op) is written to ``OUT/cells/<model>-<op>.json`` as soon as it finishes,
so runs resume and can be split over processes (``--models``/``--ops``); the comparison table
is rewritten to ``OUT/table.md`` after every cell.

    python benchmarks/reproduce_madsen.py --out runs/madsen-cpu
    python benchmarks/reproduce_madsen.py --full --device cuda --out runs/madsen-full
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from nalu_core import MADSEN_GRID, PUBLISHED_ROWS, PopulationTrainer, PublishedRow, RunConfig
from nalu_core._metrics import wilson_interval

FULL_STEPS = 5_000_000
FULL_SEEDS = 100
REDUCED_STEPS = 25_000
REDUCED_SEEDS = 8
# The published onsets (NAU 5e3, NMU 1e6) come after the unregularised fit has converged;
# in a 100-d pilot at lr 1e-3 that fit takes about 10k steps, so the reduced run ramps the
# regulariser in over the same late stretch of every run: 60% -> 80% of the steps.
REG_START_FRACTION = 0.6
REG_END_FRACTION = 0.8

OPS = ("add", "sub", "mul", "div")
# cells in the order they run: the ones the paper says succeed first, so that a run cut
# short still answers the main questions
PRIORITY = (
    ("nau", "add"),
    ("nmu", "mul"),
    ("nac_add", "add"),
    ("nac_mul", "mul"),
    ("nalu", "add"),
    ("nau", "sub"),
    ("nmu", "sub"),
    ("nac_add", "sub"),
    ("nalu", "sub"),
    ("nalu", "mul"),
    ("nau", "mul"),
    ("nmu", "add"),
    ("nac_add", "mul"),
    ("nac_mul", "add"),
    ("nac_mul", "sub"),
    ("nau", "div"),
    ("nmu", "div"),
    ("nac_add", "div"),
    ("nac_mul", "div"),
    ("nalu", "div"),
)
OP_SYMBOL = {"add": "+", "sub": "−", "mul": "×", "div": "÷"}

# every row's configuration (stack, per-layer λ̂ and onsets, lr, clipping, steps) and its
# published cells come from the one table in nalu_core/_published.py
ROWS: dict[str, PublishedRow] = {m: PUBLISHED_ROWS[f"madsen2020/{m}"] for m in MADSEN_GRID}
# model name -> its stack, e.g. nmu -> (nau, nmu)
MODELS: dict[str, tuple[str, ...]] = {m: row.units for m, row in ROWS.items()}
MODEL_LABEL = {m: row.label for m, row in ROWS.items()}
# Madsen & Johansen (2020), Table 1, U[1,2] -> U[2,6], 100 seeds: success rate in %.
PUBLISHED: dict[str, dict[str, float]] = {
    m: {op: row.results[op].success for op in OPS} for m, row in ROWS.items()
}
PUBLISHED_SEEDS = 100


@dataclass(frozen=True, kw_only=True)
class Variant:
    name: str
    steps: int
    seeds: int
    eval_every: int
    eval_samples: int
    published_schedule: bool
    # one regulariser strength for every layer (stable-nalu's single --regualizer);
    # None: each layer's published strength
    regularizer_lambda: float | None = None


def run_config(model: str, op: str, variant: Variant, *, device: str) -> RunConfig:
    row = ROWS[model]
    onset: dict[str, int] = {}
    if not variant.published_schedule:
        # the published onsets (up to 1e6 steps) would never be reached in a short run
        onset = {
            "regularizer_start": int(variant.steps * REG_START_FRACTION),
            "regularizer_end": int(variant.steps * REG_END_FRACTION),
        }
    config = row.run_config(
        op,
        steps=variant.steps,
        seeds=variant.seeds,
        device=device,
        eval_every=variant.eval_every,
        eval_samples=variant.eval_samples,
        **onset,
    )
    if variant.regularizer_lambda is not None:
        train = dataclasses.replace(
            config.train,
            regularizer_lambda=variant.regularizer_lambda,
            regularizer_start=onset.get("regularizer_start", config.train.regularizer_start),
            regularizer_end=onset.get("regularizer_end", config.train.regularizer_end),
        )
        config = dataclasses.replace(config, train=train)
    return config


def flags_table() -> str:
    """Each row's reference batch-job flags beside the configuration we run (markdown)."""
    lines = [
        "| row | reference flags | ours: stack, λ̂ (onset → end), lr, clip, steps |",
        "|---|---|---|",
    ]
    for row in PUBLISHED_ROWS.values():
        schedule = row.schedule()
        if schedule is None:
            reg = "no regulariser"
        elif schedule.kind == "geometric":
            reg = (
                f"β = {schedule.initial:g} ×{schedule.growth:g} every {schedule.every:g} "
                f"steps to {schedule.lambda_:g}"
            )
        else:
            reg = (
                f"λ̂ = {schedule.lambda_:g} on every layer ({schedule.start:g} → {schedule.end:g})"
            )
        options = [dict(o) for o in row.unit_options if o]
        stack = " → ".join(row.units) + (f" {options}" if options else "")
        clip = "no clip" if row.clip == "none" else f"clip {row.clip} {row.clip_value:g}"
        ours = f"{stack}; {reg}; {row.optimizer} {row.lr:g}; {clip}; {row.steps:g} steps"
        lines.append(f"| `{row.key}` | `{row.reference_flags}` | {ours} |")
    return "\n".join(lines) + "\n"


def run_cell(model: str, op: str, variant: Variant, *, device: str) -> dict[str, Any]:
    config = run_config(model, op, variant, device=device)
    trainer = PopulationTrainer(config)
    start = time.perf_counter()
    for _ in trainer.run():
        pass
    wall = time.perf_counter() - start
    result = trainer.result()
    n_success = sum(s.success for s in result.seeds)
    # solved-at as the reference's R summary: the solved seeds only
    solved = sorted(s.solved_at for s in result.seeds if s.success and s.solved_at is not None)
    metrics = result.metrics()
    extrap = sorted(s.extrapolation_mse for s in result.seeds)
    return {
        "model": model,
        "op": op,
        "variant": variant.name,
        "seeds": len(result.seeds),
        "steps": result.steps,
        "successes": n_success,
        "success_rate": result.success_rate,
        "success_ci": list(result.success_ci),
        "solved_at": solved,
        "diverged": sum(s.diverged for s in result.seeds),
        "extrapolation_mse_median": extrap[len(extrap) // 2],
        "threshold": result.threshold,
        "threshold_rule": result.threshold_rule,
        "solved_at_median": metrics["solved_at_median"],
        "sparsity_error_mean": metrics["sparsity_error_mean"],
        "wall_seconds": wall,
        "replica_steps_per_second": len(result.seeds) * result.steps / wall,
        "config": config.to_dict(),
        # the learning curve: success rate and MSE quantiles at every evaluation
        "history": [
            {
                k: v
                for k, v in h.items()
                if k.startswith(("step", "success_rate", "extrap", "interp"))
            }
            for h in result.history
        ],
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def verdict(ours: tuple[int, int], published: float) -> str:
    """'agrees' when the two Wilson intervals overlap, else which side is higher."""
    lo, hi = wilson_interval(*ours)
    p_lo, p_hi = wilson_interval(round(published * PUBLISHED_SEEDS / 100), PUBLISHED_SEEDS)
    if hi < p_lo:
        return "lower"
    if lo > p_hi:
        return "higher"
    return "agrees"


def table(cells: Sequence[dict[str, Any]]) -> str:
    """The markdown comparison table of every finished cell."""
    by_key = {(c["model"], c["op"]): c for c in cells}
    lines = [
        "| model | op | ours: success (Wilson 95%) | seeds | steps | median solved at "
        "| Madsen 2020 (Wilson 95%, 100 seeds) | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        for op in OPS:
            cell = by_key.get((model, op))
            pub = PUBLISHED[model][op]
            p_lo, p_hi = wilson_interval(round(pub * PUBLISHED_SEEDS / 100), PUBLISHED_SEEDS)
            theirs = f"{pub:g}% ({_pct(p_lo)}–{_pct(p_hi)})"
            label = f"{MODEL_LABEL[model]} ({'→'.join(MODELS[model])})"
            if cell is None:
                lines.append(f"| {label} | {OP_SYMBOL[op]} | not run | | | | {theirs} | |")
                continue
            lo, hi = cell["success_ci"]
            median = cell.get("solved_at_median")
            median_solved = f"{median:g}" if median is not None and math.isfinite(median) else "–"
            ours = f"{cell['successes']}/{cell['seeds']} = {_pct(cell['success_rate'])} "
            ours += f"({_pct(lo)}–{_pct(hi)})"
            v = verdict((cell["successes"], cell["seeds"]), pub)
            lines.append(
                f"| {label} | {OP_SYMBOL[op]} | {ours} | {cell['seeds']} | {cell['steps']} "
                f"| {median_solved} | {theirs} | {v} |"
            )
    return "\n".join(lines) + "\n"


def load_cells(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def write_table(out: Path, variant: Variant) -> Path:
    cells = [c for c in load_cells(out) if c["variant"] == variant.name]
    wall = sum(c["wall_seconds"] for c in cells)
    header = (
        f"# Madsen & Johansen (2020) static task, variant `{variant.name}`\n\n"
        f"{len(cells)} of {len(MODELS) * len(OPS)} cells; {wall:.0f} s of training in total; "
        f"{platform.node()}, torch {torch.__version__}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.\n\n"
    )
    path = out / "table.md"
    path.write_text(header + table(cells))
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="5e6 steps x 100 seeds (GPU)")
    parser.add_argument("--smoke-test", action="store_true", help="a few steps of every cell")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--ops", nargs="+", choices=list(OPS), default=list(OPS))
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=Path("runs/madsen"))
    parser.add_argument("--table-only", action="store_true", help="rewrite OUT/table.md")
    parser.add_argument(
        "--flags-table", action="store_true", help="print each row's reference flags and ours"
    )
    parser.add_argument("--rerun", action="store_true", help="ignore finished cells")
    parser.add_argument(
        "--regularizer-lambda",
        type=float,
        default=None,
        help="one sparsity-regulariser strength for every layer (default: each unit's own)",
    )
    parser.add_argument(
        "--shard", default="0/1", help="i/n: run every n-th cell from the i-th (parallel runs)"
    )
    return parser.parse_args(argv)


def choose_variant(args: argparse.Namespace) -> Variant:
    if args.smoke_test:
        base = Variant(
            name="smoke",
            steps=20,
            seeds=2,
            eval_every=10,
            eval_samples=200,
            published_schedule=False,
        )
    elif args.full:
        base = Variant(
            name="full",
            steps=FULL_STEPS,
            seeds=FULL_SEEDS,
            eval_every=1000,
            eval_samples=10_000,
            published_schedule=True,
        )
    else:
        base = Variant(
            name="reduced",
            steps=REDUCED_STEPS,
            seeds=REDUCED_SEEDS,
            eval_every=500,
            eval_samples=10_000,
            published_schedule=False,
        )
    steps = args.steps or base.steps
    seeds = args.seeds or base.seeds
    name = base.name
    if (steps, seeds) != (base.steps, base.seeds):
        name = f"{base.name}-{steps}x{seeds}"
    if args.regularizer_lambda is not None:
        name = f"{name}-lambda{args.regularizer_lambda:g}"
    return Variant(
        name=name,
        steps=steps,
        seeds=seeds,
        eval_every=min(base.eval_every, steps),
        eval_samples=base.eval_samples,
        published_schedule=base.published_schedule,
        regularizer_lambda=args.regularizer_lambda,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.flags_table:
        print(flags_table(), end="")
        return 0
    torch.set_num_threads(args.threads)
    variant = choose_variant(args)
    out: Path = args.out
    (out / "cells").mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        index, count = (int(v) for v in args.shard.split("/"))
        todo = [(m, o) for m, o in PRIORITY if m in args.models and o in args.ops]
        for model, op in todo[index::count]:
            path = out / "cells" / f"{model}-{op}.json"
            if path.exists() and not args.rerun:
                if json.loads(path.read_text())["variant"] == variant.name:
                    continue
            cell = run_cell(model, op, variant, device=args.device)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cell, indent=1))
            os.replace(tmp, path)
            lo, hi = cell["success_ci"]
            print(
                f"{model:8s} {op:4s} {cell['successes']:3d}/{cell['seeds']} "
                f"CI [{lo:.2f}, {hi:.2f}]  {cell['wall_seconds']:.0f}s "
                f"({cell['replica_steps_per_second']:.0f} replica-steps/s)",
                flush=True,
            )
            write_table(out, variant)
    path = write_table(out, variant)
    print(path.read_text())
    if args.smoke_test:
        cells = [c for c in load_cells(out) if c["variant"] == variant.name]
        expected = len(args.models) * len(args.ops)
        if len(cells) < expected or any(
            not math.isfinite(c["threshold"] or math.nan) for c in cells
        ):
            print("smoke test: missing cells or undefined thresholds", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
