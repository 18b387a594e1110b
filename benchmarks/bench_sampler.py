"""The counter-based sampler: the fused compiled pass against the plain chunked torch path,
side by side (alternating), P = 1024 replicas x 128 x 100 inputs, one thread.

    python benchmarks/bench_sampler.py --json benchmarks/results/bench_sampler.json
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

from nalu_core._tasks import counter_uniform


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--population", type=int, default=1024)
    parser.add_argument("--numbers", type=int, default=128 * 100, help="per replica")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = torch.arange(args.population, dtype=torch.int64) + 0x5EED_0000_0000
    out = torch.empty(args.population, args.numbers)
    times: dict[bool, list[float]] = {True: [], False: []}
    equal = True
    for r in range(args.rounds):
        for fused in (True, False):
            counter_uniform(seeds, r, args.numbers, dtype=torch.float32, out=out, fused=fused)
            start = time.perf_counter()
            for step in range(5):
                counter_uniform(
                    seeds,
                    step,
                    args.numbers,
                    dtype=torch.float32,
                    interval=(1.0, 2.0),
                    out=out,
                    fused=fused,
                )
            times[fused].append((time.perf_counter() - start) / 5)
        a = counter_uniform(
            seeds, r, args.numbers, dtype=torch.float32, fused=True, out=torch.empty_like(out)
        )
        b = counter_uniform(seeds, r, args.numbers, dtype=torch.float32, fused=False)
        equal &= bool(torch.equal(a, b))
    fused_ms, plain_ms = (1e3 * min(times[f]) for f in (True, False))
    row = {
        "population": args.population,
        "numbers_per_replica": args.numbers,
        "threads": args.threads,
        "fused_ms_best": fused_ms,
        "plain_ms_best": plain_ms,
        "fused_ms_all": [1e3 * t for t in times[True]],
        "plain_ms_all": [1e3 * t for t in times[False]],
        "speed_up": plain_ms / fused_ms,
        "bit_identical": equal,
        "load_average": list(os.getloadavg()),
    }
    print(
        f"P={args.population} x {args.numbers}: fused {fused_ms:.1f} ms, plain {plain_ms:.1f} ms "
        f"({row['speed_up']:.1f}x), bit-identical {equal}, load {row['load_average'][0]:.1f}"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "rows": [row],
        }
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
