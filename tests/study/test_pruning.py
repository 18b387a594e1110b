"""The Optuna side of a launch, driven the way Ray Tune drives it (suggest, then tell)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from study._pruning import METRIC, TaskGridSearcher, TaskSearch
from study._spec import parse_spec


def test_a_grid_study_finishes_its_last_grid_point(tmp_path: Path) -> None:
    """GridSampler stops its study after the last point; outside optimize() that used to raise.

    Every grid point is suggested once and told COMPLETE through our searcher, as Tune does,
    and the searcher then reports the quota used up.
    """
    (tmp_path / "space.yaml").write_text(
        "name: g\nparameters:\n  unit: nau\n  lr: [0.01, 0.02, 0.03]\n"
    )
    spec = parse_spec(
        {
            "name": "grid",
            "tasks": [{"name": "static", "ops": ["add"]}],
            "space": "space.yaml",
            "sampler": {"name": "grid", "options": {"search_space": {"lr": [0.01, 0.02, 0.03]}}},
            "pruner": {"name": "none"},
        },
        base_dir=tmp_path,
    )
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")

    def define(trial: optuna.Trial) -> dict[str, Any]:
        return {"lr": trial.suggest_categorical("lr", [0.01, 0.02, 0.03])}

    search = TaskSearch(
        define,
        study_name="grid.static-add",
        storage=storage,
        sampler=spec.sampler.build(),
        pruner=spec.pruner.build(max_resource=100),
    )
    searcher = TaskGridSearcher({"static-add": search}, {"static-add": 3})
    for i in range(3):
        config = searcher.suggest(f"t{i}")
        assert config is not None
        searcher.on_trial_complete(f"t{i}", {METRIC: 0.1 * i, "finished": True, "step": 100})
    assert searcher.suggest("t3") == searcher.FINISHED

    trials = optuna.load_study(study_name="grid.static-add", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    assert sorted(t.params["lr"] for t in trials) == [0.01, 0.02, 0.03]
