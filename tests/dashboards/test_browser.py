"""Real-browser tests: Debian's chromium, driven by Playwright, against a live uvicorn server
reading a real small study (PopulationTrainer results logged by study/_tracking.py).

Screenshots go to <repo>/test-output/dashboards/ (gitignored).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from dashboards import Dashboard, create_app, write_report
from dashboards._pages import rate_ci
from dashboards._views import parse_probe
from tests.dashboards.conftest import RealStudy

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="scripts/_browser.sh installs chromium"),
]


@contextlib.contextmanager
def live_server(uri: str) -> Iterator[str]:
    """A uvicorn server of the dashboard on ``uri`` on a free loopback port; yields its URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    app = create_app(Dashboard(uri, ttl=60.0))
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    """A Playwright page in Debian's chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 1000})
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(real_study: RealStudy) -> Iterator[str]:
    with live_server(real_study.uri) as url:
        yield url


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[Any]:
    with chromium_page() as tab:
        yield tab


def _plot(page: Any, div_id: str) -> Any:
    page.wait_for_selector(f"#{div_id} .main-svg", timeout=15_000)  # plotly has drawn it
    return page.evaluate(
        f"(() => {{const g = document.getElementById('{div_id}');"
        "return {data: g.data, xtype: g._fullLayout.xaxis.type,"
        " ytype: g._fullLayout.yaxis.type};})()"
    )


def test_leaderboard_renders_the_real_success_rates(
    page: Any, server: str, real_study: RealStudy, output_dir: Path
) -> None:
    page.goto(f"{server}/studies/{real_study.study}/leaderboard?task=static&op=add")
    result = real_study.results[("nau", "add")]
    lo, hi = result.success_ci
    row = page.locator('#best-per-unit tr[data-unit="nau"]')
    assert row.locator("td.rate").inner_text() == rate_ci(result.success_rate, lo, hi)
    assert row.get_attribute("data-run-id") == real_study.run_ids[("nau", "add")]
    drawn = _plot(page, "best-lb")
    assert drawn["data"][0]["x"] == [pytest.approx(result.success_rate)]
    assert drawn["data"][0]["error_x"]["arrayminus"] == [pytest.approx(result.success_rate - lo)]
    page.screenshot(path=str(output_dir / "leaderboard.png"), full_page=True)

    page.goto(f"{server}/studies/{real_study.study}/table")
    cell = page.locator('#madsen tr[data-unit="nmu"] td[data-op="mul"]')
    mul = real_study.results[("nmu", "mul")]
    assert cell.inner_text() == rate_ci(mul.success_rate, *mul.success_ci)
    page.screenshot(path=str(output_dir / "table.png"), full_page=True)


def test_division_panel_draws_error_against_denominator(
    page: Any, server: str, real_study: RealStudy, output_dir: Path
) -> None:
    page.goto(f"{server}/studies/{real_study.study}/division")
    assert "explodes" in page.locator("#division-explanation").inner_text() or "W < 0" in (
        page.locator("#division-explanation").inner_text()
    )
    drawn = _plot(page, "division-plot")
    assert (drawn["xtype"], drawn["ytype"]) == ("log", "log")
    traces = {t["name"]: t for t in drawn["data"]}
    assert set(traces) == {"nalu", "nmru"}
    for unit in ("nalu", "nmru"):
        expected = parse_probe(real_study.results[(unit, "div")].division_probe)
        assert traces[unit]["y"] == pytest.approx([p.error for p in expected])
        assert traces[unit]["x"] == pytest.approx([p.abs_denominator for p in expected])
        row = page.locator(f'#division-table tr[data-unit="{unit}"]')
        growth = expected[0].error / expected[-1].error
        assert row.get_attribute("data-growth") == str(growth)
        assert row.locator("td").nth(6).inner_text() == f"{growth:.3g}×"
    # NALU's failure: the error at the smallest |denominator| dwarfs the one at the largest
    assert (
        float(page.locator('#division-table tr[data-unit="nalu"]').get_attribute("data-growth"))
        > 100
    )
    page.screenshot(path=str(output_dir / "division.png"), full_page=True)


def test_report_is_self_contained_and_renders_offline(
    page: Any, real_study: RealStudy, output_dir: Path
) -> None:
    out = write_report(Dashboard(real_study.uri), real_study.study, output_dir / "report.html")
    text = out.read_text()
    assert "<script src=" not in text and "plotly" in text.lower()
    page.goto(out.resolve().as_uri())
    assert page.evaluate("typeof Plotly") == "object"
    drawn = _plot(page, "division-plot")
    assert {t["name"] for t in drawn["data"]} == {"nalu", "nmru"}
    cell = page.locator('#madsen tr[data-unit="nau"] td[data-op="add"] a')
    assert cell.get_attribute("href") == f"#trial-{real_study.run_ids[('nau', 'add')]}"
    page.screenshot(path=str(output_dir / "report.png"))
