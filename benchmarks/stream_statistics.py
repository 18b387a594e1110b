"""Do shared data streams change the success rate? G groups against independent seeds.

For each cell (model x op of Madsen's 100-input static task, the reduced CPU protocol of
``reproduce_madsen.py``) this trains the same seeds twice: with one data stream per seed
(G = P) and with ``--streams`` shared streams (groups of P/G seeds train on one batch per
step). It reports both success rates with the plain and the design-effect-adjusted Wilson
intervals, the intra-group correlation observed with shared streams, and a two-proportion
z-test of the difference whose variance counts the shared-stream side's design effect.

    python benchmarks/stream_statistics.py --json benchmarks/results/stream_statistics.json
    python benchmarks/stream_statistics.py --smoke-test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reproduce_madsen import REDUCED_STEPS, Variant, run_config  # noqa: E402

from nalu_core import PopulationTrainer  # noqa: E402
from nalu_core._metrics import clustered_wilson_interval, wilson_interval  # noqa: E402

CELLS = (("nau", "add"), ("nau", "sub"), ("nac_add", "sub"))


def two_proportion_test(
    k1: int, n1: int, deff1: float, k2: int, n2: int, deff2: float
) -> tuple[float, float]:
    """z and two-sided p of H0: p1 = p2, pooled rate, each side's variance times its design
    effect (the shared-stream side's seeds are clustered). p = 1 where both are 0% or 100%."""
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1 - pooled) * (deff1 / n1 + deff2 / n2)
    if var <= 0:
        return 0.0, 1.0
    z = (k1 / n1 - k2 / n2) / math.sqrt(var)
    return z, math.erfc(abs(z) / math.sqrt(2))


def train(model: str, op: str, variant: Variant, streams: int | None) -> dict[str, Any]:
    config = run_config(model, op, variant, device="cpu")
    train_config = dataclasses.replace(config.train, data_streams=streams)
    config = dataclasses.replace(config, train=train_config)
    trainer = PopulationTrainer(config)
    start = time.perf_counter()
    for _ in trainer.run():
        pass
    wall = time.perf_counter() - start
    result = trainer.result()
    success = [s.success for s in result.seeds]
    groups = streams or len(success)
    adjusted, rho, effect = clustered_wilson_interval(success, groups)
    k = sum(success)
    return {
        "data_streams": groups,
        "seeds": len(success),
        "successes": k,
        "success_rate": k / len(success),
        "wilson": list(wilson_interval(k, len(success))),
        "adjusted": list(adjusted),
        "intra_group_correlation": None if math.isnan(rho) else rho,
        "design_effect": effect,
        "success": success,
        "train_seconds": result.train_seconds,
        "wall_seconds": wall,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--steps", type=int, default=REDUCED_STEPS)
    parser.add_argument("--cells", nargs="+", default=[f"{m}:{o}" for m, o in CELLS])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.seeds, args.streams, args.steps, args.cells = 4, 2, 20, ["nau:add"]
    torch.set_num_threads(1)
    variant = Variant(
        name="reduced",
        steps=args.steps,
        seeds=args.seeds,
        eval_every=min(500, args.steps),
        eval_samples=10_000 if not args.smoke_test else 200,
        published_schedule=False,
    )
    rows = []
    for cell in args.cells:
        model, op = cell.split(":")
        independent = train(model, op, variant, None)
        shared = train(model, op, variant, args.streams)
        z, p = two_proportion_test(
            shared["successes"],
            shared["seeds"],
            shared["design_effect"],
            independent["successes"],
            independent["seeds"],
            1.0,
        )
        row = {"model": model, "op": op, "independent": independent, "shared": shared}
        row |= {"z": z, "p_value": p}
        rows.append(row)
        print(
            f"{model} {op}: G=P {independent['successes']}/{independent['seeds']} "
            f"({independent['train_seconds']:.0f} s)  G={args.streams} "
            f"{shared['successes']}/{shared['seeds']} ({shared['train_seconds']:.0f} s)  "
            f"rho {shared['intra_group_correlation']}  z {z:.2f}  p {p:.3f}",
            flush=True,
        )
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            report = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                "steps": args.steps,
                "rows": rows,
            }
            args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
