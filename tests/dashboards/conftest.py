from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dashboards import Dashboard, create_app
from nalu_core import wilson_interval
from tests.dashboards._study_data import TrialSpec, probe, sqlite_uri, write_study

STUDY = "demo study/1"  # a space and a slash: names must survive URLs and HTML
SEEDS = 16
# (unit, op) -> successes out of SEEDS for the two configurations (lr 0.01, lr 0.1)
SUCCESSES = {
    ("nau", "add"): (16, 12),
    ("nau", "mul"): (0, 0),
    ("nmu", "add"): (2, 0),
    ("nmu", "mul"): (15, 9),
    ("nalu", "add"): (3, 5),
    ("nalu", "div"): (0, 1),
    ("nmru", "div"): (14, 11),
}
PROBES = {
    "nalu": [1e9, 3e6, 2e4, 80.0, 0.9, 0.2],
    "nmru": [0.05, 0.02, 0.01, 0.01, 0.005, 0.004],
}


def spec(unit: str, op: str, lr: float, successes: int) -> TrialSpec:
    lo, hi = wilson_interval(successes, SEEDS)
    rate = successes / SEEDS
    extra = 10 ** (-6 + 5 * (1 - rate))
    seeds = [
        {
            "seed": i,
            "interpolation_mse": extra / 100,
            "extrapolation_mse": extra * (1 + i / 10),
            "success": i < successes,
            "solved_at": 1000 * (i + 1) if i < successes else None,
            "sparsity_error": 0.01,
            "diverged": False,
        }
        for i in range(SEEDS)
    ]
    history = [
        (
            step,
            {"success_rate": rate * step / 3000, "extrapolation_mse_median": extra * 3000 / step},
        )
        for step in (1000, 2000)
    ]
    return TrialSpec(
        unit=unit,
        op=op,
        params={"lr": lr, "optimizer": "adam", "seeds": SEEDS, "steps": 3000, "depth": 1},
        metrics={
            "success_rate": rate,
            "success_lower": lo,
            "success_upper": hi,
            "extrapolation_mse_median": extra,
            "interpolation_mse_median": extra / 100,
            "diverged": 0.0,
        },
        history=history,
        seeds=seeds,
        probe=probe([e * (1 + lr) for e in PROBES[unit]]) if op == "div" else None,
    )


@dataclass(frozen=True)
class StudyStore:
    uri: str
    study: str
    run_ids: dict[tuple[str, str, float], str]
    pruned: str
    failed: str


def _no_fsync_under(root: Path) -> None:
    """Test stores only: SQLite without fsync per commit (MLflow's ~100 migration commits and
    one commit per logged item otherwise dominate the fixtures on a shared disk)."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(conn: Any, _record: Any) -> None:
        if type(conn).__module__.startswith("sqlite3"):
            path = conn.execute("PRAGMA database_list").fetchone()[2]
            if path and path.startswith(str(root)):
                conn.execute("PRAGMA synchronous=OFF")


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> StudyStore:
    root = tmp_path_factory.mktemp("mlflow")
    _no_fsync_under(root.resolve())
    uri = sqlite_uri(root / "mlflow.db")
    keys = [(u, o, lr) for (u, o) in SUCCESSES for lr in (0.01, 0.1)]
    specs = [spec(u, o, lr, SUCCESSES[(u, o)][i % 2]) for i, (u, o, lr) in enumerate(keys)]
    pruned = spec("nau", "add", 0.3, 16)
    pruned.state = "PRUNED"
    failed = spec("nmu", "mul", 0.3, 16)
    failed.state = "FAIL"
    ids = write_study(uri, STUDY, [*specs, pruned, failed], artifact_root=root / "artifacts")
    return StudyStore(
        uri=uri,
        study=STUDY,
        run_ids=dict(zip(keys, ids, strict=False)),
        pruned=ids[-2],
        failed=ids[-1],
    )


@pytest.fixture(scope="session")
def dashboard(store: StudyStore) -> Dashboard:
    return Dashboard(store.uri, ttl=300.0, ui_url="http://mlflow.example:5000")


@pytest.fixture(scope="session")
def client(dashboard: Dashboard) -> TestClient:
    return TestClient(create_app(dashboard), raise_server_exceptions=False)


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Screenshots and reports of the test run: <repo>/test-output/dashboards (gitignored)."""
    path = Path(__file__).resolve().parents[2] / "test-output" / "dashboards"
    path.mkdir(parents=True, exist_ok=True)
    return path


REAL_STUDY = "real-small"
# (unit, op, lr): a small real study, trained by nalu_core and logged by study/_tracking.py
REAL_TRIALS = [
    ("nau", "add", 0.05),
    ("nmu", "mul", 0.05),
    ("nalu", "div", 0.05),
    ("nmru", "div", 0.05),
]


@dataclass(frozen=True)
class RealStudy:
    uri: str
    study: str
    results: dict[tuple[str, str], Any]  # (unit, op) -> nalu_core.TrainResult
    run_ids: dict[tuple[str, str], str]


@pytest.fixture(scope="session")
def real_study(store: StudyStore, tmp_path_factory: pytest.TempPathFactory) -> RealStudy:
    """Real PopulationTrainer results logged through TrialTracker, as a launch's trials are."""
    from nalu_core import ModelConfig, PopulationTrainer, RunConfig, TaskConfig, TrainConfig
    from study._tracking import StudyTracker, TrialTracker, config_params

    tracker = StudyTracker(
        store.uri, study_name=REAL_STUDY, artifact_root=tmp_path_factory.mktemp("real-artifacts")
    )
    experiment_id = tracker.prepare()
    parent = tracker.start_launch(params={"study": REAL_STUDY})
    results: dict[tuple[str, str], Any] = {}
    run_ids: dict[tuple[str, str], str] = {}
    for number, (unit, op, lr) in enumerate(REAL_TRIALS):
        config = RunConfig(
            task=TaskConfig(name="static", op=op, options={"input_size": 2}),
            model=ModelConfig.stacked(unit),
            train=TrainConfig(
                seeds=8, steps=1500, lr=lr, eval_every=500, eval_samples=500, device="cpu"
            ),
        )
        tags = {
            "nalu.study": REAL_STUDY,
            "nalu.task": "static",
            "nalu.op": op,
            "nalu.unit": unit,
            "nalu.optuna_trial": str(number),
            "nalu.ray_trial_id": f"real_{number}",
        }
        with TrialTracker(
            store.uri,
            experiment_id=experiment_id,
            parent_run_id=parent,
            trial_name=f"static-{op}-{number}",
            params=config_params(config),
            tags=tags,
        ) as trial:
            trainer = PopulationTrainer(config)
            for report in trainer.run():
                trial.log_eval(report.step, report.metrics())
            results[(unit, op)] = trainer.result()
            trial.log_result(results[(unit, op)])
            assert trial.finish("COMPLETE")
            assert trial.run_id is not None
            run_ids[(unit, op)] = trial.run_id
    tracker.end_launch()
    return RealStudy(uri=store.uri, study=REAL_STUDY, results=results, run_ids=run_ids)
