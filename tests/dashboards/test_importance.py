"""Importance from a real Optuna storage (the study's own trials and distributions)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from dashboards import NotFoundError, StoreUnavailableError
from dashboards._importance import importance


def test_importance_reads_the_optuna_study(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    # the launcher's naming: one Optuna study per task × op
    study = optuna.create_study(study_name="s.static-add", storage=url, direction="maximize")
    for i in range(30):
        lr = 10 ** (-4 + 3 * i / 29)
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": lr, "optimizer": ["adam", "sgd"][i % 2]},
                distributions={
                    "lr": optuna.distributions.FloatDistribution(1e-4, 0.1, log=True),
                    "optimizer": optuna.distributions.CategoricalDistribution(["adam", "sgd"]),
                },
                value=1.0 if lr > 0.01 else 0.0,
            )
        )
    result = importance("s", [], task="static", op="add", evaluator="ped_anova", storage=url)
    assert result.source == "optuna" and result.trials == 30
    scores = {i.param: i.importance for i in result.importances}
    assert max(scores, key=lambda k: scores[k]) == "lr"
    with pytest.raises(NotFoundError):
        importance("s", [], task="static", op="div", storage=url)


def test_missing_optuna_file_is_reported_and_not_created(tmp_path: Path) -> None:
    db = tmp_path / "optuna.db"
    with pytest.raises(StoreUnavailableError) as err:
        importance("s", [], storage=f"sqlite:///{db}")
    assert err.value.field == "storage" and not db.exists()
