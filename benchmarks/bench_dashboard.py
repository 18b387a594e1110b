"""Page times of the dashboard for a study of 10,000 trials (``--smoke-test``: 200 trials).

Writes a synthetic study in the MLflow layout of docs/CONTRACTS.md through MlflowClient (the
SQLite file is kept and reused: writing 10,000 runs takes minutes), serves the real app with
uvicorn on loopback as ``nalu-study dashboard`` does (``warm_up()`` at start), and times every
page and API call over HTTP, twice:

- ``first start``: no snapshot; the first request is sent the moment the server listens, so
  it waits for the read of the trials that warm-up began;
- ``restart``: a new server with the snapshot the first one wrote (the usual case);

and per page: ``cold``, its first view (the view is computed), ``warm``, the median of
``--repeat`` views within the cache TTL; ``stale``: a view after the TTL ran out (served from
cache while one refresh runs). ``--compare-client`` also times one read of the trials through
``MlflowClient.search_runs`` (the path for ``http://`` servers) against the SQL reader.

    python benchmarks/bench_dashboard.py              # 10,000 trials
    python benchmarks/bench_dashboard.py --smoke-test # 200 trials, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDY = "bench-10k"
UNITS = ("nac", "nalu", "nau", "nmu", "inalu", "npu", "nmru")
OPS = ("add", "sub", "mul", "div")
SEEDS = 32


def _fast_sqlite() -> None:
    """Only for writing the data set: no fsync per commit. Reading is MLflow's own path."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        if type(conn).__module__.startswith("sqlite3"):
            conn.execute("PRAGMA synchronous=OFF")


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def _trials(n: int, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        unit, op = rng.choice(UNITS), rng.choice(OPS)
        lr = 10 ** rng.uniform(-4, -1)
        skill = {"add": 0.8, "sub": 0.7, "mul": 0.5, "div": 0.1}[op]
        k = sum(rng.random() < skill * min(1.0, lr / 0.01) for _ in range(SEEDS))
        lo, hi = _wilson(k, SEEDS)
        extra = 10 ** (-6 + 8 * (1 - k / SEEDS) + rng.uniform(-1, 1))
        out.append(
            {
                "unit": unit,
                "op": op,
                "params": {
                    "lr": f"{lr:.6g}",
                    "optimizer": rng.choice(["adam", "rmsprop", "sgd"]),
                    "batch_size": rng.choice(["64", "128", "256"]),
                    "depth": rng.choice(["1", "2"]),
                    "clip": rng.choice(["none", "norm"]),
                    "epsilon": f"{10 ** rng.uniform(-8, -4):.3g}",
                },
                "metrics": {
                    "success_rate": k / SEEDS,
                    "success_lower": lo,
                    "success_upper": hi,
                    "extrapolation_mse_median": extra,
                    "interpolation_mse_median": extra / 10 ** rng.uniform(0, 4),
                    "diverged": float(rng.random() < 0.05),
                },
                "state": rng.choices(["COMPLETE", "PRUNED", "FAIL"], [0.8, 0.15, 0.05])[0],
                "index": i,
            }
        )
    return out


def _probe(scale: float) -> dict[str, Any]:
    edges = [1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0]
    bins = [
        {"lo": lo, "hi": hi, "mse_median": scale / (lo * hi), "mse": [scale / (lo * hi)] * 4}
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    return {"denominator": "|b|", "samples_per_bin": 2000, "bins": bins}


def write_study(uri: str, n: int, artifact_root: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    _fast_sqlite()
    client = MlflowClient(uri)
    exp = client.create_experiment(STUDY, artifact_location=artifact_root.resolve().as_uri())
    parent = client.create_run(exp, tags={"nalu.role": "launch", "nalu.study": STUDY}).info.run_id
    rows = _trials(n, random.Random(0))
    # the best div trial of each unit (what the division panel reads) and a few more get
    # artifacts; the others only carry params, metrics and tags
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["op"] == "div" and row["state"] == "COMPLETE":
            key = (-row["metrics"]["success_rate"], -row["metrics"]["success_lower"])
            if row["unit"] not in best or key < best[row["unit"]]["key"]:
                best[row["unit"]] = {"key": key, "index": row["index"]}
    with_artifacts = {b["index"] for b in best.values()} | set(range(0, n, max(1, n // 20)))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            tags = {
                "nalu.role": "trial",
                "mlflow.parentRunId": parent,
                "nalu.study": STUDY,
                "nalu.task": "static",
                "nalu.op": row["op"],
                "nalu.unit": row["unit"],
                "nalu.state": row["state"],
                "nalu.optuna_trial": str(row["index"]),
                "robust": str(row["metrics"]["success_lower"] >= 0.5).lower(),
            }
            run_id = client.create_run(exp, tags=tags).info.run_id
            params = {
                "unit": row["unit"],
                "task": "static",
                "op": row["op"],
                "seeds": str(SEEDS),
                **row["params"],
            }
            client.log_batch(
                run_id,
                metrics=[Metric(k, v, 0, 1000) for k, v in row["metrics"].items()],
                params=[Param(k, v) for k, v in params.items()],
            )
            if row["index"] in with_artifacts:
                seeds = [
                    {"seed": s, "extrapolation_mse": 1e-3 * (s + 1), "success": s % 2 == 0}
                    for s in range(SEEDS)
                ]
                pq.write_table(pa.Table.from_pylist(seeds), Path(tmp) / "seeds.parquet")
                client.log_artifact(run_id, str(Path(tmp) / "seeds.parquet"))
                if row["op"] == "div":
                    path = Path(tmp) / "division_probe.json"
                    scale = 1e-3 if row["unit"] in ("nmru", "npu") else 1.0
                    path.write_text(json.dumps(_probe(scale)))
                    client.log_artifact(run_id, str(path))
            if row["index"] % 1000 == 999:
                rate = (row["index"] + 1) / (time.perf_counter() - started)
                print(f"  wrote {row['index'] + 1}/{n} runs ({rate:.0f}/s)", flush=True)
    client.set_terminated(parent)


def _get(url: str) -> tuple[float, int, int]:
    import urllib.request

    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as resp:
        body = resp.read()
        status = resp.status
    return time.perf_counter() - start, status, len(body)


def _pages(uri: str) -> list[tuple[str, str]]:
    from mlflow.tracking import MlflowClient

    exp = MlflowClient(uri).get_experiment_by_name(STUDY)
    assert exp is not None, f"no study {STUDY!r} in {uri}"
    some_run = (
        MlflowClient(uri)
        .search_runs([exp.experiment_id], "tags.`nalu.role` = 'trial'", max_results=1)[0]
        .info.run_id
    )
    s = quote(STUDY)
    return [
        ("studies list", "/"),
        ("leaderboard static/add", f"/studies/{s}/leaderboard?task=static&op=add"),
        ("Madsen table", f"/studies/{s}/table"),
        ("division panel", f"/studies/{s}/division"),
        ("importance (ped_anova)", f"/studies/{s}/importance"),
        ("parallel + scatter", f"/studies/{s}/plots"),
        ("trial page", f"/trials/{some_run}"),
        ("API studies", "/api/studies"),
        ("API leaderboard", f"/api/studies/{s}/leaderboard?op=div"),
        ("API table", f"/api/studies/{s}/table"),
        ("API division", f"/api/studies/{s}/division"),
        ("API importance (ped_anova)", f"/api/studies/{s}/importance"),
        ("API scatter", f"/api/studies/{s}/scatter"),
    ]


def measure(
    uri: str, pages: list[tuple[str, str]], *, repeat: int, ttl: float, snapshot_dir: Path
) -> tuple[float, list[dict[str, Any]]]:
    """(start to first answer, page rows) of one server start, as ``nalu-study dashboard``."""
    import uvicorn

    from dashboards import Dashboard, create_app

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    started = time.perf_counter()
    dash = Dashboard(uri, ttl=ttl, snapshot_dir=snapshot_dir)
    dash.warm_up()
    server = uvicorn.Server(
        uvicorn.Config(create_app(dash), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    base = f"http://127.0.0.1:{port}"
    results = []
    try:
        _get(base + pages[0][1])
        first_answer = time.perf_counter() - started
        for name, path in pages:
            cold, status, size = _get(base + path)
            warm = [_get(base + path)[0] for _ in range(repeat)]
            results.append(
                {
                    "page": name,
                    "status": status,
                    "kB": round(size / 1000),
                    "cold_s": round(cold, 3),
                    "warm_median_s": round(statistics.median(warm), 3),
                    "warm_max_s": round(max(warm), 3),
                }
            )
        # after the TTL: the old trials are served while one background read refreshes them
        dash.source.cache.clock = lambda: time.monotonic() + 10 * ttl
        stale, _, _ = _get(base + pages[1][1])
        results.append({"page": "leaderboard after TTL (stale)", "cold_s": round(stale, 3)})
        if dash.source.last_save is not None:
            dash.source.last_save.join()  # the next start reads this snapshot
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return first_answer, results


def compare_reads(uri: str) -> dict[str, float]:
    """One read of the trials through MlflowClient.search_runs and through the SQL reader."""
    from dashboards import MlflowSource

    out = {}
    for name, read_sql in (("search_runs", False), ("sql", True)):
        source = MlflowSource(uri, read_sql=read_sql)
        exp = source.experiment(STUDY)
        wall, cpu = time.perf_counter(), time.process_time()
        source.trials(exp.name)
        out[f"{name}_s"] = round(time.perf_counter() - wall, 3)
        out[f"{name}_cpu_s"] = round(time.process_time() - cpu, 3)
    return out


def _print(title: str, first: float, results: list[dict[str, Any]]) -> None:
    print(f"\n{title}: server start to first answer {first:.3f} s")
    print(f"{'page':32} {'cold':>7} {'warm med':>9} {'warm max':>9} {'kB':>6}")
    for r in results:
        print(
            f"{r['page']:32} {r['cold_s']:7.3f} {r.get('warm_median_s', float('nan')):9.3f} "
            f"{r.get('warm_max_s', float('nan')):9.3f} {r.get('kB', 0):6}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--smoke-test", action="store_true", help="200 trials, 2 repeats")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--ttl", type=float, default=300.0)
    parser.add_argument(
        "--data", type=Path, default=ROOT / "test-output" / "bench_dashboard", help="kept data"
    )
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument(
        "--compare-client", action="store_true", help="also time a search_runs read (~12 s)"
    )
    args = parser.parse_args()
    if args.smoke_test:
        args.trials, args.repeat = 200, 2
        args.data = Path(tempfile.mkdtemp(prefix="bench-dash-"))
    folder = args.data / f"{args.trials}"
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    if not (folder / "complete").exists():
        print(f"writing a study of {args.trials} trials to {folder} (kept for reruns)")
        start = time.perf_counter()
        write_study(uri, args.trials, folder / "artifacts")
        (folder / "complete").write_text(f"{time.perf_counter() - start:.0f} s\n")
    pages = _pages(uri)
    print(f"{args.trials} trials, {args.repeat} warm views each (seconds, over HTTP)")
    report: dict[str, Any] = {"trials": args.trials}
    with tempfile.TemporaryDirectory(prefix="bench-dash-snap-") as snaps:
        for key, title in (("first_start", "first start, no snapshot"), ("restart", "restart")):
            first, results = measure(
                uri, pages, repeat=args.repeat, ttl=args.ttl, snapshot_dir=Path(snaps)
            )
            _print(title, first, results)
            report[key] = {"first_answer_s": round(first, 3), "pages": results}
    if args.compare_client:
        report["read"] = compare_reads(uri)
        print(f"\none read of the trials: {report['read']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    slow = [
        f"{key}: {r['page']}"
        for key in ("first_start", "restart")
        for r in report[key]["pages"]
        if max(r["cold_s"], r.get("warm_median_s", 0)) > 1.0
    ]
    print("\nevery page under 1 s, first views included" if not slow else f"\nover 1 s: {slow}")


if __name__ == "__main__":
    main()
