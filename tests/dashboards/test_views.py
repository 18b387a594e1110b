from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboards import NotFoundError, Trial, TTLCache
from dashboards._importance import importance
from dashboards._views import division, leaderboard, madsen_table, parse_probe, pick_slice
from nalu_core import wilson_interval
from tests.dashboards._study_data import probe


def make_trial(
    run_id: str,
    unit: str,
    op: str,
    successes: int,
    *,
    n: int = 10,
    state: str = "COMPLETE",
    extra: float = 1.0,
    params: dict[str, str] | None = None,
) -> Trial:
    lo, hi = wilson_interval(successes, n)
    return Trial(
        run_id=run_id,
        experiment_id="1",
        study="s",
        task="static",
        op=op,
        unit=unit,
        state=state,
        params={"unit": unit, "op": op, "task": "static", "seeds": str(n), **(params or {})},
        metrics={
            "success_rate": successes / n,
            "success_lower": lo,
            "success_upper": hi,
            "extrapolation_mse_median": extra,
        },
        tags={},
    )


def test_leaderboard_ranks_complete_trials_by_rate_then_extrapolation() -> None:
    trials = [
        make_trial("a", "nau", "add", 7, extra=0.5),
        make_trial("b", "nau", "add", 9, extra=9.0),
        make_trial("c", "nmu", "add", 7, extra=0.1),
        make_trial("d", "nmu", "add", 10, state="PRUNED"),
        make_trial("e", "nau", "mul", 10),
    ]
    lb = leaderboard("s", trials, task="static", op="add")
    assert [r.run_id for r in lb.top_configs] == ["b", "c", "a"]
    assert [(r.unit, r.run_id) for r in lb.best_per_unit] == [("nau", "b"), ("nmu", "c")]
    assert lb.complete_trials == 3
    assert lb.slices == ["static/add", "static/mul"]


def test_madsen_table_keeps_the_best_run_per_cell() -> None:
    trials = [
        make_trial("a", "nau", "add", 3),
        make_trial("b", "nau", "add", 8),
        make_trial("c", "nau", "div", 0),
        make_trial("d", "nmu", "mul", 9),
    ]
    tab = madsen_table("s", trials)
    assert tab.ops == ["add", "mul", "div"]
    assert tab.cells["nau"]["add"].run_id == "b"
    assert tab.cells["nau"]["add"].trials == 2
    assert tab.cells["nau"]["div"].success_rate == 0.0
    assert "mul" not in tab.cells["nau"]
    lo, hi = wilson_interval(9, 10)
    assert (tab.cells["nmu"]["mul"].success_lower, tab.cells["nmu"]["mul"].success_upper) == (
        lo,
        hi,
    )


def test_division_lists_units_without_a_probe_as_missing() -> None:
    trials = [make_trial("a", "nalu", "div", 1), make_trial("b", "nmru", "div", 9)]
    div = division("s", trials, probe=lambda t: probe([1e6, 1.0]) if t.unit == "nmru" else None)
    assert [c.unit for c in div.curves] == ["nmru"] and div.missing == ["nalu"]
    assert div.curves[0].growth == 1e6
    with pytest.raises(NotFoundError):
        division("s", [make_trial("a", "nau", "add", 1)], probe=lambda t: None)


def test_pick_slice_names_the_bad_field() -> None:
    trials = [make_trial("a", "nau", "add", 3)]
    assert pick_slice(trials, None, None) == ("static", "add")
    with pytest.raises(NotFoundError) as err:
        pick_slice(trials, "static", "div")
    assert err.value.field == "op"
    with pytest.raises(NotFoundError):
        pick_slice([], None, None)


def test_parse_probe_reads_the_trainer_layout() -> None:
    points = parse_probe(probe([1e9, 1e5, 10.0]))
    assert [round(p.abs_denominator, 12) for p in points] == [
        1e-5,
        round(math.sqrt(1e-7), 12),
        round(math.sqrt(1e-5), 12),
    ]
    assert [p.error for p in points] == [1e9, 1e5, 10.0]


def test_parse_probe_falls_back_to_the_per_seed_median_and_columns() -> None:
    data = probe([1.0, 2.0])
    data["bins"][0]["mse_median"] = None  # every seed diverged in the trainer's median
    data["bins"][0]["mse"] = [4.0, 6.0, None]
    assert [p.error for p in parse_probe(data)] == [5.0, 2.0]
    columns = {"abs_denominator": [0.1, 0.01], "mse": [1.0, 100.0]}
    assert [(p.abs_denominator, p.error) for p in parse_probe(columns)] == [
        (0.01, 100.0),
        (0.1, 1.0),
    ]
    assert parse_probe({"nonsense": 1}) == [] and parse_probe(None) == []


@given(st.lists(st.floats(1e-12, 1e12), min_size=1, max_size=6))
def test_parse_probe_keeps_every_finite_bin_in_order(errors: list[float]) -> None:
    points = parse_probe(probe(errors))
    assert [p.error for p in points] == errors
    xs = [p.abs_denominator for p in points]
    assert xs == sorted(xs) and all(
        p.lo is not None and p.lo < p.abs_denominator < (p.hi or 0) for p in points
    )


def test_ttl_cache_serves_stale_values_while_one_refresh_runs() -> None:
    now = [0.0]
    cache = TTLCache(ttl=10.0, clock=lambda: now[0])
    calls: list[int] = []

    def load() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get("k", load) == 1
    now[0] = 5.0
    assert cache.get("k", load) == 1 and len(calls) == 1
    now[0] = 11.0
    assert cache.get("k", load, background=False) == 2
    now[0] = 30.0
    assert cache.get("k", load) == 2  # stale value at once, refresh behind it
    for _ in range(200):
        if cache.get("k", load) == 3:
            break
        import time

        time.sleep(0.01)
    assert cache.get("k", load) == 3


@pytest.mark.parametrize("evaluator", ["fanova", "ped_anova"])
def test_importance_finds_the_parameter_that_decides_success(evaluator: str) -> None:
    trials = []
    for i in range(40):
        lr = 10 ** (-4 + 3 * i / 39)
        batch = ["32", "64", "128"][i % 3]
        successes = 10 if lr > 0.01 else 0
        trials.append(
            make_trial(
                f"r{i}", "nau", "add", successes, params={"lr": f"{lr:.6g}", "batch_size": batch}
            )
        )
    result = importance("s", trials, evaluator=evaluator)
    assert result.source == "mlflow" and result.trials == 40
    scores = {i.param: i.importance for i in result.importances}
    assert set(scores) == {"lr", "batch_size"}
    assert scores["lr"] > 0.8 > scores["batch_size"]


def test_importance_explains_when_there_is_nothing_to_attribute() -> None:
    trials = [make_trial(f"r{i}", "nau", "add", 5, params={"lr": str(i)}) for i in range(5)]
    result = importance("s", trials, evaluator="fanova")
    assert result.importances == [] and "same success_rate" in (result.note or "")
