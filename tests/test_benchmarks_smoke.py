"""Every benchmark's ``--smoke-test`` runs in a subprocess, so that none can rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke-test", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_bench_trainer_smoke(tmp_path: Path) -> None:
    out = tmp_path / "trainer.json"
    proc = _run("bench_trainer.py", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert {(r["dim"], r["population"]) for r in rows} == {(100, 1), (100, 8), (2, 1), (2, 8)}
    for row in rows:
        assert row["replica_steps_per_s"] > 0
        assert row["per_seed_steps_per_s"] > 0
    # persistent state: NAU -> NAU with hidden 2 on 100 inputs is 202 weights, each kept
    # as value, gradient, Adam's two moments and the best-so-far copy (float32)
    by_dim = {r["dim"]: r for r in rows}
    assert by_dim[100]["persistent_bytes"] == 202 * 5 * 4
    assert by_dim[2]["persistent_bytes"] == 6 * 5 * 4
    assert {"data", "forward", "backward", "optimizer"} <= set(report["profiles"][0]["seconds"])


def test_reproduce_madsen_smoke(tmp_path: Path) -> None:
    proc = _run("reproduce_madsen.py", "--ops", "mul", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = [json.loads(p.read_text()) for p in (tmp_path / "cells").glob("*.json")]
    assert sorted(c["model"] for c in cells) == ["nac_add", "nac_mul", "nalu", "nau", "nmu"]
    table = (tmp_path / "table.md").read_text()
    # the published figure sits next to ours, and cells not run are marked as such
    assert "| NMU (nau→nmu) | × | 0/2 = 0%" in table
    assert "98% (93%–99%)" in table
    assert "| NAU (nau→nau) | + | not run |" in table


@pytest.mark.integration
def test_bench_study_smoke(tmp_path: Path) -> None:
    out = tmp_path / "study.json"
    proc = _run("bench_study.py", "--json", str(out), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["trials"] == 1
    split = report["slot_seconds"]
    assert split["training"] > 0
    # a fresh local instance: its start is measured, and the parts add up to the slot-time
    assert split["ray_start"] > 0
    slot_time = report["slots"] * report["launch_wall_seconds"]
    parts = sum(split.values()) + report["unused_slot_seconds"]
    assert parts == pytest.approx(slot_time, rel=1e-6)
    assert 0 < report["overhead_fraction"] < 1
    assert report["not_training_fraction"] == pytest.approx(
        report["overhead_fraction"] + report["unused_fraction"]
    )


@pytest.mark.skipif(
    not (BENCHMARKS / "bench_dashboard.py").exists(), reason="bench_dashboard.py not written yet"
)
def test_bench_dashboard_smoke() -> None:
    proc = _run("bench_dashboard.py", timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "script", ["stream_statistics.py", "bench_evaluation.py", "full_cell.py", "bench_sampler.py"]
)
def test_issue15_benchmarks_smoke(script: str) -> None:
    extra = ("--device", "cpu") if script == "full_cell.py" else ()
    proc = _run(script, *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_measure_division_smoke(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "task: {name: static, op: div, options: {input_size: 2}}\n"
        "model: {layers: [{unit: nmru}]}\n"
        "train: {lr: 0.01, clip: norm, eval_every: 100}\n"
    )
    proc = _run("measure_division.py", "--config", str(config), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (tmp_path / "table.md").read_text()
    assert "| mistry_1_2 |" in table and "| mistry_1.1_1.2 |" in table
    assert "**2 of 2 ranges**" in table and "NMRU 91.6%" in table
    for preset in ("mistry_1_2", "mistry_1.1_1.2"):
        data = json.loads((tmp_path / f"{preset}.json").read_text())
        assert data["configuration"]["task"]["options"]["range_preset"] == preset
        assert len(data["seeds"]) == 2 and data["steps"] == 200


def test_collect_cells_smoke() -> None:
    proc = _run("collect_cells.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| model | op | seeds |" in proc.stdout


def test_gpu_check_parses_and_its_step_limits_fit_ten_minutes(tmp_path: Path) -> None:
    """gpu_check.sh runs only on a lent GPU: check here that bash can read it and that the
    timeouts of its steps add up to at most the 10 minutes one device command may run."""
    script = BENCHMARKS / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    full_cell = int(re.search(r"FULL_CELL_SECONDS:-(\d+)", text)[1])  # type: ignore[index]
    limits = [
        full_cell + int(m[1]) if m[0].startswith("$((") else int(m[0])
        for m in re.findall(
            r"^\s*step \w+ (\$\(\(FULL_CELL_SECONDS \+ (\d+)\)\)|\d+) ", text, re.M
        )
    ]
    assert len(limits) == 5, limits
    assert sum(limits) <= 600, limits
    # without CUDA it stops at once and says why, with a non-zero status
    proc = subprocess.run(
        ["bash", str(script), str(tmp_path / "gpu")],
        cwd=ROOT,
        env=dict(os.environ, PYTHON=sys.executable, CUDA_VISIBLE_DEVICES=""),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1 and "no CUDA device visible" in proc.stderr, proc.stderr
