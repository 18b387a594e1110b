"""Replays a committed ``madsen2020`` cell: seed 0's first 20,000 steps, trained again alone.

The cell file (``benchmarks/results/madsen-full/cells/*.json``, written by
``benchmarks/collect_cells.py`` from the study's ``cell.json``) records the configuration the
study ran and seed 0's interpolation and extrapolation MSE at every evaluation. Replica ``i``
of a population is seeded with ``seed + i`` (initialisation, data stream and subset offset), so
seed 0 trained as a population of one must retrace the recorded history.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nalu_core import PopulationTrainer, RunConfig

CELLS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "madsen-full" / "cells"
REPLAY_STEPS = 20_000


def _cells() -> list[Path]:
    return sorted(CELLS.glob("*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("path", _cells()[:1], ids=lambda p: p.stem)
def test_seed0_replays_the_recorded_history(path: Path) -> None:
    """Asserts: every recorded evaluation of seed 0 up to 20k steps is reproduced (relative
    1e-4: the population of one runs the same per-replica arithmetic in smaller batches)."""
    cell = json.loads(path.read_text())
    config = RunConfig.from_dict(cell["configuration"])
    recorded = [r for r in cell["seed0_history"] if r["step"] <= REPLAY_STEPS]
    assert recorded, f"{path.name} records no evaluation up to {REPLAY_STEPS} steps"
    train = dataclasses.replace(
        config.train, seeds=1, seed=0, steps=min(config.train.steps, REPLAY_STEPS)
    )
    trainer = PopulationTrainer(dataclasses.replace(config, train=train))
    replayed = {r.step: (r.interpolation_mse[0], r.extrapolation_mse[0]) for r in trainer.run()}
    for row in recorded:
        step = int(row["step"])
        if step not in replayed:
            # seed 0 solved: with stop_when_solved the population of one ends there, while the
            # recorded population went on with seed 0 frozen at those weights
            assert config.train.stop_when_solved and step > max(replayed)
            step = max(replayed)
        interp, extrap = replayed[step]
        assert interp == pytest.approx(row["interpolation_mse"], rel=1e-4), step
        assert extrap == pytest.approx(row["extrapolation_mse"], rel=1e-4), step


def test_a_cell_is_committed() -> None:
    assert _cells(), f"no committed cell in {CELLS}"
