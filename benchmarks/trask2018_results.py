"""Trask (2018) sequence studies: the paper's metrics of every trial and the dashboard's ranking.

Reads a finished ``trask2018-*`` study: each trial's metrics from its MLflow store, and the
leaderboard of each task from a running dashboard's JSON API (``nalu-study dashboard``), so
the JSON records the ranking a researcher sees. Writes one JSON and prints a Markdown table.

    nalu-study dashboard --workdir runs --port 8061 &
    python benchmarks/trask2018_results.py --study trask2018-mnist-reduced --workdir runs \
        --dashboard http://127.0.0.1:8061 --json benchmarks/results/trask2018/mnist.json
"""

from __future__ import annotations

import argparse
import json
import math
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

# The figures each paper table reports, per task (docs/tasks.md, "Metrics").
_MNIST = [
    f"{split}_{metric}"
    for split in ("interpolation", "extrapolation", "extrapolation_1000")
    for metric in ("mae", "accuracy")
]
COLUMNS = {
    "mnist-count": _MNIST,
    "mnist-add": _MNIST,
    "number-translation": ["train_mae", "interpolation_mae", "extrapolation_mae"],
}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (loopback)
        return json.load(response)


def _finite(value: float | None) -> float | None:
    # MLflow stores inf as the largest double
    return value if value is not None and math.isfinite(value) and abs(value) < 1e300 else None


def _text(value: float | None) -> str:
    # None: not finite (a diverged seed counts as the worst) or not logged
    return "inf" if value is None else f"{value:.4g}"


def trials(uri: str, study: str) -> list[dict[str, Any]]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(study)
    if experiment is None:
        raise SystemExit(f"error: --study: no MLflow experiment {study!r} in {uri}")
    out = []
    for run in client.search_runs([experiment.experiment_id]):
        if run.data.tags.get("nalu.role") != "trial":
            continue
        params, metrics = run.data.params, run.data.metrics
        task = params["task"]
        figures = {}
        for column in COLUMNS.get(task, []):
            for kind in ("median", "best"):
                figures[f"{column}_{kind}"] = _finite(metrics.get(f"{column}_{kind}"))
        out.append(
            {
                "run_id": run.info.run_id,
                "state": run.data.tags.get("nalu.state"),
                "task": task,
                "head": params.get("unit"),
                "params": {
                    k: params[k]
                    for k in ("lr", "hidden_size", "task.lstm_size", "seeds", "steps")
                    if k in params
                },
                "figures": figures,
                "extrapolation_mse_median": _finite(metrics.get("extrapolation_mse_median")),
                "train_mse_late_share": _finite(metrics.get("train_mse_late_share")),
                "converged": run.data.tags.get("converged") == "true",
                "train_seconds": metrics.get("train_seconds"),
            }
        )
    return sorted(out, key=lambda t: (t["task"], t["head"]))


def leaderboards(dashboard: str, study: str, tasks: list[str]) -> dict[str, list[dict[str, str]]]:
    """The dashboard's best-per-head ranking of every task (its leaderboard API): per task,
    the heads in rank order, each with the run the leaderboard picked for it."""
    ranked = {}
    for task in tasks:
        query = urllib.parse.urlencode({"task": task})
        path = urllib.parse.quote(study, safe="")
        body = _get(f"{dashboard}/api/studies/{path}/leaderboard?{query}")
        ranked[task] = [
            {"unit": row["unit"], "run_id": row["run_id"]} for row in body["best_per_unit"]
        ]
    return ranked


def table(rows: list[dict[str, Any]], ranking: dict[str, list[dict[str, str]]]) -> str:
    """One Markdown table per task; a head with several trials gets its rank on the trial
    the leaderboard picked, "–" on the others."""
    lines = []
    for task in sorted({r["task"] for r in rows}):
        columns = COLUMNS[task]
        lines.append(f"\n{task} (median over seeds / best seed; dashboard rank)\n")
        lines.append("| rank | head | lr | " + " | ".join(columns) + " | converged (late share) |")
        lines.append("|---" * (len(columns) + 4) + "|")
        order = [entry["unit"] for entry in ranking.get(task, [])]
        picked = {entry["run_id"] for entry in ranking.get(task, [])}
        for row in sorted(
            (r for r in rows if r["task"] == task),
            key=lambda r: (
                order.index(r["head"]) if r["head"] in order else len(order),
                r["run_id"] not in picked,
            ),
        ):
            cells = [
                f"{_text(row['figures'][f'{c}_median'])} / {_text(row['figures'][f'{c}_best'])}"
                for c in columns
            ]
            rank = order.index(row["head"]) + 1 if row["run_id"] in picked else "–"
            converged = "yes" if row["converged"] else "**no**"
            share = row["train_mse_late_share"]
            if share is not None:
                converged += f" ({share:.2g})"
            lr = row["params"].get("lr", "–")
            lines.append(
                f"| {rank} | {row['head']} | {lr} | " + " | ".join(cells) + f" | {converged} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--dashboard", required=True, help="base URL of nalu-study dashboard")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    # the workdir's store; studies launched before it was shared kept one per study folder
    store = args.workdir / "mlflow.db"
    if not store.exists():
        store = args.workdir / args.study / "mlflow.db"
    uri = f"sqlite:///{store.resolve()}"
    rows = trials(uri, args.study)
    ranking = leaderboards(
        args.dashboard.rstrip("/"), args.study, sorted({r["task"] for r in rows})
    )
    print(table(rows, ranking))
    if args.json is not None:
        heads = {task: [entry["unit"] for entry in board] for task, board in ranking.items()}
        document = {
            "study": args.study,
            "leaderboard": heads,
            "leaderboard_runs": ranking,
            "trials": rows,
        }
        args.json.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
