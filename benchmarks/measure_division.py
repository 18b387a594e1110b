"""Measure an exported division configuration over Mistry et al.'s 9 range pairs.

Runs ``nalu-study train --config CONFIG --range-preset R --json OUT/R.json`` for each range
(the ranges come from the command line, the rest from the exported RunConfig), then writes
``OUT/table.md``: success per range and over all of them with Wilson intervals, next to
Mistry et al.'s published NMRU (91.6%) and modified Real NPU (85.3%) over 225 training sets.

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/measure_division.py \\
        --config benchmarks/results/division/best.yaml --out benchmarks/results/division
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from nalu_core import wilson_interval

MISTRY_RANGES = (
    "mistry_neg20_neg10",
    "mistry_neg2_neg1",
    "mistry_neg1.2_neg1.1",
    "mistry_neg0.2_neg0.1",
    "mistry_neg2_2",
    "mistry_0.1_0.2",
    "mistry_1_2",
    "mistry_1.1_1.2",
    "mistry_10_20",
)
# Mistry et al. (abstract): success over 225 training sets (9 ranges x 25 seeds)
PUBLISHED = {"NMRU": 91.6, "modified Real NPU": 85.3}


def measure(
    config: Path, out: Path, *, seeds: int | None, steps: int | None, ranges: tuple[str, ...]
) -> None:
    exe = shutil.which("nalu-study") or "nalu-study"
    out.mkdir(parents=True, exist_ok=True)
    for preset in ranges:
        command = [exe, "train", "--config", str(config), "--range-preset", preset]
        command += ["--json", str(out / f"{preset}.json")]
        if seeds is not None:
            command += ["--seeds", str(seeds)]
        if steps is not None:
            command += ["--steps", str(steps)]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def table(out: Path, ranges: tuple[str, ...] = MISTRY_RANGES) -> str:
    lines = [
        "| range (interpolation → extrapolation) | solved | success | Wilson 95% "
        "| solved at (median) |",
        "|---|---|---|---|---|",
    ]
    total = solved = 0
    for preset in ranges:
        data = json.loads((out / f"{preset}.json").read_text())
        seeds = data["seeds"]
        n = sum(bool(s["success"]) for s in seeds)
        lo, hi = wilson_interval(n, len(seeds))
        median = data["metrics"].get("solved_at_median")
        lines.append(
            f"| {preset} | {n}/{len(seeds)} | {100 * n / len(seeds):.0f}% "
            f"| {100 * lo:.0f}–{100 * hi:.0f}% | {'—' if median is None else f'{median:,.0f}'} |"
        )
        total += len(seeds)
        solved += n
    lo, hi = wilson_interval(solved, total)
    lines.append(
        f"| **all {len(ranges)} ranges** | **{solved}/{total}** | **{100 * solved / total:.1f}%** "
        f"| {100 * lo:.1f}–{100 * hi:.1f}% | |"
    )
    published = ", ".join(f"{k} {v}%" for k, v in PUBLISHED.items())
    return "\n".join(lines) + f"\n\nPublished (Mistry et al., 225 training sets): {published}.\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/division"))
    parser.add_argument("--seeds", type=int, default=None, help="default: the config's")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument("--smoke-test", action="store_true", help="2 ranges, 2 seeds, 200 steps")
    args = parser.parse_args(argv)
    ranges = MISTRY_RANGES
    if args.smoke_test:
        ranges, args.seeds, args.steps = MISTRY_RANGES[-3:-1], 2, 200
    if not args.table_only:
        measure(args.config, args.out, seeds=args.seeds, steps=args.steps, ranges=ranges)
    text = table(args.out, ranges)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
