"""One evaluation of P replicas: the shared set passed once (one group) against expanded to
every replica (the evaluation before data streams), side by side in one process.

Madsen's evaluation: 2 sets x 10,000 samples, 100 inputs, P = 1024, one thread. The two
paths give the same MSEs up to float rounding (the largest relative difference is printed).

    python benchmarks/bench_evaluation.py --json benchmarks/results/bench_evaluation.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import torch

from nalu_core import LayerConfig, ModelConfig
from nalu_core._metrics import population_mse
from nalu_core._network import build_network

MODELS = {
    "nalu-nalu": ("nalu", "nalu"),
    "nau-nmu": ("nau", "nmu"),
    "nac-nac_mul": ("nac_add", "nac_mul"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--smoke-test", action="store_true")
    args = parser.parse_args(argv)
    if args.smoke_test:
        args.population, args.samples = 8, 200
    torch.set_num_threads(1)
    P = args.population
    rows = []
    for name, units in MODELS.items():
        model = ModelConfig(layers=tuple(LayerConfig(unit=u) for u in units), hidden_size=2)
        net = build_network(model, 100, 1, population=P)
        net.reset_parameters([torch.Generator().manual_seed(s) for s in range(P)])
        gen = torch.Generator().manual_seed(0)
        sets = []
        for lo, hi in ((1.0, 2.0), (2.0, 6.0)):
            x = torch.rand(args.samples, 100, generator=gen) * (hi - lo) + lo
            sets.append((x, x[:, :25].sum(-1, keepdim=True) * x[:, 12:37].sum(-1, keepdim=True)))

        def expanded(xs: torch.Tensor, net: torch.nn.Module = net) -> torch.Tensor:
            y: torch.Tensor = net(xs.expand(P, *xs.shape[1:]))
            return y

        timings: dict[str, float] = {}
        results: dict[str, list[torch.Tensor]] = {}
        for label, fn in (("expanded", expanded), ("grouped", net), ("expanded_2", expanded)):
            start = time.perf_counter()
            with torch.no_grad():
                results[label] = [population_mse(fn, x, t, population=P) for x, t in sets]
            timings[label] = time.perf_counter() - start
        before = (timings["expanded"] + timings["expanded_2"]) / 2
        diffs = torch.cat(
            [
                (a - b).abs() / b.abs().clamp_min(1e-30)
                for a, b in zip(results["expanded"], results["grouped"], strict=True)
            ]
        )  # (2P,): every replica on both sets
        rel = float(diffs.max())
        row = {
            "model": name,
            "population": P,
            "samples_per_set": args.samples,
            "expanded_seconds": before,
            "grouped_seconds": timings["grouped"],
            "speed_up": before / timings["grouped"],
            "max_relative_difference": rel,
            "median_relative_difference": float(diffs.median()),
            # a log-space layer after a hidden value near 0 amplifies layer 1's rounding
            "fraction_over_1e-4": float((diffs > 1e-4).double().mean()),
            "load_average": list(os.getloadavg()),
        }
        rows.append(row)
        print(
            f"{name}: expanded {before:.2f} s, grouped {timings['grouped']:.2f} s "
            f"({row['speed_up']:.1f}x), relative difference max {rel:.1e}, median "
            f"{row['median_relative_difference']:.1e}, > 1e-4 in "
            f"{100 * row['fraction_over_1e-4']:.1f}% of replica-sets",
            flush=True,
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "rows": rows,
        }
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
