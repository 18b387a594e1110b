"""The JSON API and the HTML pages, in-process, over a real SQLite MLflow store."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from dashboards import Dashboard, create_app
from nalu_core import wilson_interval
from tests.dashboards.conftest import PROBES, SEEDS, SUCCESSES, StudyStore

Q = quote("demo study/1", safe="")


def test_studies_counts_trials_by_state(client: TestClient, store: StudyStore) -> None:
    body = client.get("/api/studies").json()
    study = next(s for s in body["studies"] if s["name"] == store.study)
    assert study["states"] == {"COMPLETE": 14, "PRUNED": 1, "FAIL": 1, "RUNNING": 0, "OTHER": 0}
    assert study["trials"] == 16
    assert study["slices"] == ["static/add", "static/mul", "static/div"]
    page = client.get("/").text
    assert f'href="/studies/{Q}"' in page and '<td class="num">16</td>' in page


def test_leaderboard_ranks_by_success_rate_with_wilson_bounds(
    client: TestClient, store: StudyStore
) -> None:
    body = client.get(f"/api/studies/{Q}/leaderboard", params={"op": "add"}).json()
    assert (body["task"], body["op"]) == ("static", "add")
    rates = [r["success_rate"] for r in body["top_configs"]]
    expected = sorted(
        (s / SEEDS for (u, o), pair in SUCCESSES.items() if o == "add" for s in pair), reverse=True
    )
    assert rates == expected  # the pruned 16/16 trial is not ranked
    best = body["best_per_unit"]
    assert [r["unit"] for r in best] == ["nau", "nalu", "nmu"]
    assert best[0]["run_id"] == store.run_ids[("nau", "add", 0.01)]
    assert (best[0]["success_lower"], best[0]["success_upper"]) == pytest.approx(
        wilson_interval(16, SEEDS)
    )
    assert best[0]["config"] == "lr=0.01"  # only what varies within the slice
    assert best[0]["mlflow_url"].startswith("http://mlflow.example:5000/#/experiments/")
    assert best[0]["mlflow_url"].endswith("?workflowType=machine_learning")  # classic view
    page = client.get(f"/studies/{Q}/leaderboard", params={"op": "add"}).text
    assert "100% [81%, 100%]" in page  # 16/16 with Wilson bounds, as rendered


def test_madsen_table_cells_link_to_the_best_run(client: TestClient, store: StudyStore) -> None:
    body = client.get(f"/api/studies/{Q}/table").json()
    assert body["ops"] == ["add", "mul", "div"]
    assert body["units"] == ["nalu", "nau", "nmru", "nmu"]
    cell = body["cells"]["nmu"]["mul"]
    assert cell["success_rate"] == 15 / 16 and cell["trials"] == 2  # the FAIL trial is left out
    assert cell["run_id"] == store.run_ids[("nmu", "mul", 0.01)]
    assert "div" not in body["cells"]["nau"]
    page = client.get(f"/studies/{Q}/table").text
    assert f'href="/trials/{cell["run_id"]}">94% [72%, 99%]</a>' in page


def test_division_panel_reads_each_units_best_probe(client: TestClient, store: StudyStore) -> None:
    body = client.get(f"/api/studies/{Q}/division").json()
    curves = {c["unit"]: c for c in body["curves"]}
    assert set(curves) == {"nalu", "nmru"} and body["missing"] == []
    # best div configs: nalu lr=0.1 (1/16), nmru lr=0.01 (14/16); probes scale with (1 + lr)
    assert curves["nalu"]["run_id"] == store.run_ids[("nalu", "div", 0.1)]
    assert curves["nmru"]["run_id"] == store.run_ids[("nmru", "div", 0.01)]
    assert [p["error"] for p in curves["nmru"]["points"]] == [e * 1.01 for e in PROBES["nmru"]]
    assert curves["nalu"]["growth"] == pytest.approx(1e9 / 0.2)
    assert curves["nmru"]["growth"] == pytest.approx(0.05 / 0.004)
    assert "NAC" in body["explanation"] and "W < 0" in body["explanation"]
    page = client.get(f"/studies/{Q}/division").text
    assert 'id="division-plot"' in page and "12.5×" in page and "5e+09×" in page


def test_importance_parallel_and_scatter(client: TestClient) -> None:
    imp = client.get(f"/api/studies/{Q}/importance").json()
    assert imp["evaluator"] == "ped_anova" and imp["source"] == "mlflow"
    assert (imp["task"], imp["op"]) == ("static", "add")  # per slice: default the first
    assert imp["trials"] == 6 and {i["param"] for i in imp["importances"]} == {"unit", "lr"}
    bad = client.get(f"/api/studies/{Q}/importance", params={"evaluator": "magic"})
    assert bad.status_code == 400 and bad.json()["field"] == "evaluator"
    par = client.get(f"/api/studies/{Q}/parallel", params={"op": "div"}).json()
    assert par["params"] == ["unit", "lr"] and par["numeric"] == {"unit": False, "lr": True}
    assert len(par["rows"]) == 4
    sc = client.get(f"/api/studies/{Q}/scatter").json()
    assert len(sc["points"]) == 16
    page = client.get(f"/studies/{Q}/plots").text
    assert '"type":"parcoords"' in page and '"type":"scattergl"' in page


def test_trial_page_has_curves_seeds_and_mlflow_link(
    client: TestClient, store: StudyStore
) -> None:
    run_id = store.run_ids[("nmru", "div", 0.01)]
    body = client.get(f"/api/trials/{run_id}").json()
    assert body["study"] == store.study and body["trial"]["unit"] == "nmru"
    assert [p["step"] for p in body["curves"]["success_rate"]] == [1000, 2000, 2000]
    assert len(body["seeds"]) == SEEDS and sum(s["success"] for s in body["seeds"]) == 14
    assert body["division"]["points"][0]["error"] == PROBES["nmru"][0] * 1.01
    assert {"seeds.parquet", "division_probe.json", "config.yaml"} <= set(body["artifacts"])
    page = client.get(f"/trials/{run_id}").text
    assert 'id="mlflow-link"' in page and run_id in page and 'data-seed="15"' in page


def test_openapi_documents_every_api_route(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = set(schema["paths"])
    for name in ("leaderboard", "table", "division", "importance", "parallel", "scatter"):
        assert f"/api/studies/{{study}}/{name}" in paths
    assert {"/api/studies", "/api/trials/{run_id}"} <= paths
    assert "LeaderboardResponse" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200


def test_unknown_names_give_404_pages_not_traces(client: TestClient) -> None:
    api = client.get("/api/studies/nope/leaderboard")
    assert api.status_code == 404 and api.json()["field"] == "study"
    page = client.get("/studies/nope/leaderboard")
    assert page.status_code == 404 and "no study named &#x27;nope&#x27;" in page.text
    assert (
        client.get(f"/api/studies/{Q}/leaderboard", params={"op": "pow"}).json()["field"] == "op"
    )
    assert client.get("/api/trials/0123456789abcdef0123456789abcdef").status_code == 404


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_gives_a_clear_page() -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    client = TestClient(create_app(Dashboard(uri)), raise_server_exceptions=False)
    page = client.get("/")
    assert page.status_code == 503
    assert "Store unavailable" in page.text and uri in page.text
    assert "Traceback" not in page.text
    api = client.get("/api/studies")
    assert api.status_code == 503 and api.json()["field"] == "tracking_uri"


def test_missing_sqlite_store_is_reported_and_not_created(tmp_path: Path) -> None:
    db = tmp_path / "nowhere" / "mlflow.db"
    client = TestClient(create_app(Dashboard(f"sqlite:///{db}")))
    page = client.get("/studies/x/table")
    assert page.status_code == 503 and "does not exist" in page.text
    assert not db.exists()


def test_reads_are_cached_for_the_ttl(store: StudyStore, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    now = [0.0]
    dash = Dashboard(store.uri, ttl=60.0)
    dash.source.cache.clock = lambda: now[0]
    before = len(dash.trials(store.study))
    client = MlflowClient(store.uri)
    exp = client.get_experiment_by_name(store.study)
    assert exp is not None
    extra = client.create_run(
        exp.experiment_id, tags={"nalu.role": "trial", "nalu.state": "RUNNING"}
    )
    try:
        now[0] = 30.0
        assert len(dash.trials(store.study)) == before  # within the TTL: no new query
        now[0] = 61.0
        assert len(dash.trials(store.study)) == before  # expired: stale answer at once...
        for _ in range(500):  # ...while one background read refreshes it
            if len(dash.trials(store.study)) == before + 1:
                break
            time.sleep(0.01)
        assert len(dash.trials(store.study)) == before + 1
    finally:
        client.delete_run(extra.info.run_id)
