"""Collect a ``madsen2020`` study's finished cells into committed result files.

Each COMPLETE trial of the study left ``cell.json`` next to its checkpoint (its configuration,
final metrics, per-seed results and seed 0's evaluation history). This copies them to
``<out>/cells/<row>-<op>.json`` with the study's launch commands, and writes ``<out>/table.md``:
success with its Wilson interval and the solved-at median (over solved seeds, R's median)
next to Madsen & Johansen's published figures.

    python benchmarks/collect_cells.py --study madsen-full-nmu --workdir studies \\
        --out benchmarks/results/madsen-study
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from nalu_core import PUBLISHED_ROWS, wilson_interval

_OPS = {"add": "+", "sub": "−", "mul": "×", "div": "÷"}


def collect(
    study: str, workdir: Path, out: Path, *, partial: bool = False
) -> list[dict[str, Any]]:
    folder = workdir / study
    record = json.loads((folder / "study.json").read_text())
    commands = [" ".join(["nalu-study", *launch["argv"]]) for launch in record["launches"]]
    # one Optuna storage per workdir (study/_stores.py); a study folder of an older layout
    # kept its own
    db = workdir / "optuna.db" if (workdir / "optuna.db").exists() else folder / "optuna.db"
    storage = f"sqlite:///{db}"
    cells = []
    for key in record["tasks"]:
        try:
            ot = optuna.load_study(study_name=f"{study}.{key}", storage=storage)
        except KeyError:
            continue
        states = (TrialState.COMPLETE, TrialState.RUNNING) if partial else (TrialState.COMPLETE,)
        for trial in ot.get_trials(states=states):
            if "checkpoint_dir" not in trial.user_attrs:
                continue
            folder = Path(trial.user_attrs["checkpoint_dir"])
            if trial.state == TrialState.COMPLETE:
                if not (folder / "cell.json").exists():
                    continue
                cell = json.loads((folder / "cell.json").read_text())
            else:
                cell = _partial_cell(folder / "trainer.pt")
                if cell is None:
                    continue
            row = str(trial.params["published_row"])
            op = cell["configuration"]["task"]["op"]
            cell |= {"study": study, "row": row, "op": op, "commands": commands}
            target = out / "cells" / f"{row.split('/')[-1]}-{op}.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(cell, indent=1) + "\n")
            cells.append(cell)
    return cells


def _partial_cell(checkpoint: Path) -> dict[str, Any] | None:
    """A running trial's cell as of its last checkpoint: the trainer restored from it, and
    its result at that step (``partial`` true; a later collect replaces it)."""
    import torch

    from nalu_core import PopulationTrainer, RunConfig
    from study._trainable import cell_record

    if not checkpoint.exists():
        return None
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")  # tensors only
    trainer = PopulationTrainer(RunConfig.from_dict(state["config"]))
    trainer.load_state_dict(state)
    record = cell_record(trainer.result(), state.get("seed_history", []))
    return {**record, "partial": True}


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def table(out: Path) -> str:
    lines = [
        "| model | op | seeds | steps (max) | success | Wilson 95% | solved at (median) "
        "| published success | published solved at |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted((out / "cells").glob("*.json")):
        cell = json.loads(path.read_text())
        row = PUBLISHED_ROWS[cell["row"]]
        seeds = cell["seeds"]
        n = sum(bool(s["success"]) for s in seeds)
        lo, hi = wilson_interval(n, len(seeds))
        published = row.results.get(cell["op"])
        cap = cell["configuration"]["train"]["steps"]
        lines.append(
            f"| {row.label} | {_OPS.get(cell['op'], cell['op'])} | {len(seeds)} "
            f"| {cell['steps']:,} ({cap:,}){' running' if cell.get('partial') else ''} "
            f"| {n}/{len(seeds)} ({100 * n / len(seeds):.0f}%) "
            f"| {100 * lo:.0f}–{100 * hi:.0f}% | {_fmt(cell['metrics'].get('solved_at_median'))} "
            f"| {'—' if published is None else f'{published.success:.0f}%'} "
            f"| {_fmt(None if published is None else published.solved_at)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", action="append", default=[], help="repeatable")
    parser.add_argument("--workdir", type=Path, default=Path("studies"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/madsen-study"))
    parser.add_argument(
        "--partial",
        action="store_true",
        help="also running trials, as of their last checkpoint (marked 'running')",
    )
    parser.add_argument(
        "--smoke-test", action="store_true", help="only print the table of the committed cells"
    )
    args = parser.parse_args(argv)
    if args.smoke_test:
        print(table(Path(__file__).resolve().parent / "results" / "madsen-study"))
        return 0
    for study in args.study:
        cells = collect(study, args.workdir, args.out, partial=args.partial)
        print(f"{study}: {len(cells)} cell(s) -> {args.out / 'cells'}")
    text = table(args.out)
    (args.out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
