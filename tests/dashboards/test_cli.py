"""``nalu-study report`` and ``nalu-study dashboard`` through the real command line."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from study.cli._app import _load_plugins, app
from tests.dashboards.conftest import StudyStore

_load_plugins()
runner = CliRunner()


def test_report_writes_one_self_contained_file(store: StudyStore, tmp_path: Path) -> None:
    out = tmp_path / "share" / "report.html"
    result = runner.invoke(
        app, ["report", store.study, "--out", str(out), "--tracking-uri", store.uri]
    )
    assert result.exit_code == 0, result.output
    assert "self-contained" in result.output
    text = out.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", text)  # nothing fetched
    assert text.count("Plotly.newPlot(") >= 8
    # the Madsen cell of nmu × mul, with its Wilson interval, links to that run's section
    assert "94% [72%, 99%]</a>" in text
    run_id = store.run_ids[("nmu", "mul", 0.01)]
    assert f'href="#trial-{run_id}"' in text and f'id="trial-{run_id}"' in text
    assert 'id="division-plot"' in text and 'id="importance-static-add"' in text


def test_report_of_unknown_study_is_a_message_not_a_trace(
    store: StudyStore, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["report", "nope", "--out", str(tmp_path / "r.html"), "--tracking-uri", store.uri]
    )
    assert result.exit_code == 1
    assert "no study named 'nope'" in result.output and "Traceback" not in result.output


def test_dashboard_without_a_store_says_where_it_looked(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NALU_STUDY_")}
    env["COLUMNS"] = "1000"  # one line: the message is not wrapped in a box
    result = runner.invoke(app, ["dashboard", "--workdir", str(tmp_path / "empty")], env=env)
    assert result.exit_code == 2, result.output
    assert f"no study store at {tmp_path / 'empty' / 'mlflow.db'}" in result.output


@pytest.mark.integration
def test_dashboard_serves_on_loopback_by_default(store: StudyStore, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    code = "from study.cli import main; main()"
    cmd = [
        sys.executable,
        "-c",
        code,
        "dashboard",
        "--tracking-uri",
        store.uri,
        "--port",
        str(port),
        "--snapshot-dir",
        str(tmp_path / "snapshots"),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        body = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/studies", timeout=5
                ) as r:
                    body = json.load(r)
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.3)
        assert body is not None
        assert store.study in {s["name"] for s in body["studies"]}
        # warm-up's read left a snapshot of each study for the next start
        while time.monotonic() < deadline and not list(tmp_path.glob("snapshots/*.json")):
            time.sleep(0.1)
        assert list(tmp_path.glob("snapshots/*.json"))
        # the socket is bound to loopback only (psutil reads /proc: no `ss` needed)
        import psutil

        bound = {
            (c.laddr.ip, c.laddr.port)
            for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port
        }
        assert bound == {("127.0.0.1", port)}, bound
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_dashboard_serves_the_workdirs_store_and_reads_old_per_study_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboards._cli import _legacy_note, _settings

    for name in ("NALU_STUDY_TRACKING_URI", "NALU_STUDY_STORAGE", "NALU_STUDY_WORKDIR"):
        monkeypatch.delenv(name, raising=False)
    work = tmp_path / "work"
    (work / "old").mkdir(parents=True)
    for db in (work / "mlflow.db", work / "optuna.db", work / "old" / "mlflow.db"):
        db.touch()
    old = {"tracking_uri": f"sqlite:///{work / 'old' / 'mlflow.db'}", "storage": "sqlite:///x"}
    (work / "old" / "study.json").write_text(json.dumps({"name": "old", "settings": old}))
    # no --study: every study of the workdir, from its one store
    uri, storage = _settings(None, tracking_uri=None, storage=None, workdir=work)
    assert (
        uri == f"sqlite:///{work / 'mlflow.db'}" and storage == f"sqlite:///{work / 'optuna.db'}"
    )
    # a study of the old layout: its own file (its missing optuna file is left out)
    assert _settings("old", tracking_uri=None, storage=None, workdir=work) == (
        old["tracking_uri"],
        None,
    )
    note = _legacy_note(work, None)
    assert note is not None and "--study old" in note and _legacy_note(work, "old") is None
