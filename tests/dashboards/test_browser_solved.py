"""Real-browser tests of a study whose trials reach MSE 0, and of the division panel's wording.

A hand-made store with known numbers: one configuration solves add exactly (interpolation and
extrapolation MSE 0 on every seed, its curves reaching 0), a RealNPU that divides on 10 of 16
seeds while the probe's tiny denominators blow its error up, and a NALU that fails. Log axes
cannot show 0: the plots must floor those at ``MSE_FLOOR`` and star them, not drop them.

Screenshots go to <repo>/test-output/dashboards/solved-*.png (gitignored).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dashboards import Dashboard, write_report
from nalu_core import wilson_interval
from study import MSE_FLOOR
from tests.dashboards._study_data import TrialSpec, probe, sqlite_uri, write_study
from tests.dashboards.test_browser import CHROMIUM, _plot, chromium_page, live_server

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="scripts/_browser.sh installs chromium"),
]

STUDY = "solved"
SEEDS = 16
# ten hyperparameters that vary (22 were reported unreadable): the plot must choose
EXTRA = {f"opt{i}": i for i in range(10)}


def _spec(
    unit: str,
    op: str,
    lr: float,
    *,
    successes: int,
    mse: float,
    number: int,
    probe_errors: list[float] | None = None,
) -> TrialSpec:
    lo, hi = wilson_interval(successes, SEEDS)
    seeds = [
        {
            "seed": i,
            "interpolation_mse": mse,
            "extrapolation_mse": mse if i < successes else max(mse, 1e-3) * 10,
            "success": i < successes,
            "solved_at": 500 if i < successes else None,
            "sparsity_error": 0.0,
            "diverged": False,
        }
        for i in range(SEEDS)
    ]
    history = [
        (step, {"success_rate": successes / SEEDS * step / 1500, "extrapolation_mse_median": m})
        for step, m in ((500, 1e-2), (1000, 1e-5), (1500, mse))
    ]
    params: dict[str, Any] = {"lr": lr, "seeds": SEEDS, "steps": 1500}
    params.update({k: v + number for k, v in EXTRA.items()})
    return TrialSpec(
        unit=unit,
        op=op,
        params=params,
        metrics={
            "success_rate": successes / SEEDS,
            "success_lower": lo,
            "success_upper": hi,
            "extrapolation_mse_median": mse,
            "interpolation_mse_median": mse,
        },
        history=history,
        seeds=seeds,
        probe=None if probe_errors is None else probe(probe_errors),
        optuna_trial=number,
    )


SPECS = [
    _spec("nau", "add", 0.012345678901234, successes=16, mse=0.0, number=0),  # solved: MSE 0
    _spec("nau", "add", 0.1, successes=8, mse=3e-4, number=1),
    _spec("nmu", "add", 0.0003, successes=2, mse=2e-2, number=2),
    _spec(
        "realnpu",
        "div",
        0.01,
        successes=10,  # 62% of seeds divide in the extrapolation range
        mse=1e-5,
        number=3,
        probe_errors=[4e6, 2e3, 5.0, 1e-3, 1e-5, 1e-5],
    ),
    _spec(
        "nalu",
        "div",
        0.05,
        successes=0,
        mse=40.0,
        number=4,
        probe_errors=[1e9, 3e6, 2e4, 80.0, 5.0, 4.0],
    ),
]


@pytest.fixture(scope="module")
def solved(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[str]]:
    root = tmp_path_factory.mktemp("solved")
    uri = sqlite_uri(root / "mlflow.db")
    return uri, write_study(uri, STUDY, SPECS, artifact_root=root / "artifacts")


@pytest.fixture(scope="module")
def server(solved: tuple[str, list[str]]) -> Iterator[str]:
    with live_server(solved[0]) as url:
        yield url


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Any]:
    with chromium_page() as tab:
        yield tab


def _trace(drawn: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in drawn["data"] if t.get("name") == name)


def test_scatter_keeps_solved_trials_starred_and_draws_its_diagonal(
    page: Any, server: str, output_dir: Path
) -> None:
    page.goto(f"{server}/studies/{STUDY}/plots")
    drawn = _plot(page, "scatter-plot")
    assert (drawn["xtype"], drawn["ytype"]) == ("log", "log")
    nau = _trace(drawn, "nau")
    solved = [
        i for i, (x, y) in enumerate(zip(nau["x"], nau["y"], strict=True)) if x == y == MSE_FLOOR
    ]
    assert len(solved) == 1, nau  # the MSE-0 trial is on the plot, at the floor
    assert nau["marker"]["symbol"][solved[0]] == "star"
    assert [s for s in nau["marker"]["symbol"] if s != "star"] == ["circle"]
    diagonal = _trace(drawn, "extrapolation = interpolation")
    assert diagonal["x"] == diagonal["y"] and diagonal["line"]["dash"] == "dash"
    assert diagonal["x"][0] == MSE_FLOOR  # it reaches the solved corner
    note = page.locator("#scatter-note").inner_text()
    assert "dashed diagonal" in note and f"drawn at {MSE_FLOOR:.0e}" in note
    # the star is visible in the page, not only in the data
    assert (page.locator("#scatter-plot .annotation-text").first.text_content() or "").startswith(
        "★"
    )

    # parallel coordinates: 8 of the 12 varying params (unit first), lr on a log axis
    par = page.evaluate(
        "(() => document.getElementById('parallel-plot').data[0].dimensions"
        ".map(d => ({label: d.label, ticktext: d.ticktext || null})))()"
    )
    labels = [d["label"] for d in par]
    assert labels[0] == "unit" and labels[-1] == "success_rate" and len(labels) == 9
    assert "lr (log)" in labels
    lr = next(d for d in par if d["label"] == "lr (log)")
    assert lr["ticktext"] and all(t.startswith("1e") for t in lr["ticktext"])
    page.screenshot(path=str(output_dir / "solved-plots.png"), full_page=True)

    # choosing the axes: two boxes, one click
    for box in page.locator("#axes-form input[name=axis]").all():
        if box.get_attribute("value") not in ("unit", "lr"):
            box.uncheck()
    page.click("#axes-form button")
    page.wait_for_url("**params=unit%2Clr")
    chosen = page.evaluate(
        "(() => document.getElementById('parallel-plot').data[0].dimensions.map(d => d.label))()"
    )
    assert chosen == ["unit", "lr (log)", "success_rate"]


def test_trial_page_of_a_solved_trial_floors_and_stars_its_zeros(
    page: Any, server: str, solved: tuple[str, list[str]], output_dir: Path
) -> None:
    run_id = solved[1][0]
    page.goto(f"{server}/trials/{run_id}")
    mse = _plot(page, f"mse-trial-{run_id}")
    assert mse["ytype"] == "log"
    extra = _trace(mse, "extrapolation_mse_median")
    assert extra["y"][-1] == MSE_FLOOR and extra["marker"]["symbol"][-1] == "star"
    assert extra["y"][:2] == [1e-2, 1e-5]  # positive values stay where they are
    seeds = _plot(page, f"seeds-trial-{run_id}")
    assert len(seeds["data"][0]["y"]) == SEEDS  # no seed vanishes
    assert set(seeds["data"][0]["marker"]["symbol"]) == {"star"}
    page.screenshot(path=str(output_dir / "solved-trial.png"), full_page=True)


def test_division_panel_words_each_unit_from_its_success(
    page: Any, server: str, output_dir: Path
) -> None:
    page.goto(f"{server}/studies/{STUDY}/division")
    _plot(page, "division-plot")
    realnpu = page.locator('#division-table tr[data-unit="realnpu"] td').nth(7).inner_text()
    nalu = page.locator('#division-table tr[data-unit="nalu"] td').nth(7).inner_text()
    assert realnpu.startswith("divides: 62% of seeds succeed in the extrapolation range")
    assert "probe only: median MSE grows toward |den| 0" in realnpu
    assert "fails near zero" not in page.content()
    assert nalu.startswith("fails in the extrapolation range (0% of seeds")
    page.screenshot(path=str(output_dir / "solved-division.png"), full_page=True)


def test_leaderboard_importance_and_report_read_cleanly(
    page: Any, server: str, solved: tuple[str, list[str]], output_dir: Path
) -> None:
    page.goto(f"{server}/studies/{STUDY}/leaderboard?task=static&op=add")
    config = page.locator('#best-per-unit tr[data-unit="nau"] td').nth(4).inner_text()
    assert "lr=0.0123" in config and "0.012345" not in config  # 3 significant digits
    page.screenshot(path=str(output_dir / "solved-leaderboard.png"), full_page=True)

    page.goto(f"{server}/studies/{STUDY}/importance?task=static&op=add")
    page.wait_for_selector("#importance-caveat", timeout=60_000)
    assert "Only 3 complete trial(s)" in page.locator("#importance-caveat").inner_text()
    page.screenshot(path=str(output_dir / "solved-importance.png"), full_page=True)

    out = write_report(Dashboard(solved[0]), STUDY, output_dir / "solved-report.html")
    page.goto(out.resolve().as_uri())
    toc = page.locator("main ul a", has_text="hyperparameter importance")
    href = toc.get_attribute("href")
    assert href == "#importance-static-add"
    assert page.locator(f"[id='{href[1:]}']").count() == 1  # the link lands on a section
