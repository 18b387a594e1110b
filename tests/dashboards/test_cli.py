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

from study._cli import _load_plugins, app
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


def test_dashboard_needs_a_store() -> None:
    env = {k: v for k, v in os.environ.items() if k != "NALU_STUDY_TRACKING_URI"}
    result = runner.invoke(app, ["dashboard"], env=env)
    assert result.exit_code == 2 and "--tracking-uri" in result.output


@pytest.mark.integration
def test_dashboard_serves_on_loopback_by_default(store: StudyStore, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    code = "from study._cli import main; main()"
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
