"""Service settings: where Ray, MLflow and Optuna live.

One object, resolved with the precedence CLI > environment > file (the study spec's
``settings:`` section) > default. The environment names are the ones docker-compose.yml sets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from study._errors import SettingsError

ENV_VARS: dict[str, str] = {
    "ray_address": "NALU_STUDY_RAY_ADDRESS",
    "tracking_uri": "NALU_STUDY_TRACKING_URI",
    "storage": "NALU_STUDY_STORAGE",
    "workdir": "NALU_STUDY_WORKDIR",
}
DEFAULT_WORKDIR = "studies"
# A study name is a folder name: no separators, no "..", no trailing newline ($ would allow one)
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# The name the commands that read every study (list, dashboard) resolve settings under
ANY_STUDY = "_"
# scheme://user:password@host -> scheme://user:***@host; also a bare password before "@"
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*):[^@\s]*@")


def redact(text: str) -> str:
    """``text`` with the password of every URL in it replaced by ``***``.

    The one helper for everything shown or logged: CLI echoes, error messages, the
    dashboard's pages and API. ``postgresql://optuna:s3cret@db/optuna`` becomes
    ``postgresql://optuna:***@db/optuna``.
    """
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def check_study_name(name: str, *, field: str = "name") -> str:
    """``name`` if it is a valid study name (a plain folder name), else a SettingsError."""
    if not isinstance(name, str) or not STUDY_NAME.fullmatch(name) or ".." in name:
        shown = repr(name) if len(repr(name)) <= 60 else repr(name)[:57] + "..."
        raise SettingsError(
            f"must be 1-100 letters, digits, '_', '.' or '-' starting with a letter or digit "
            f"(a folder name), got {shown}",
            field=field,
        )
    return name


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Resolved settings for one study.

    ``ray_address`` ``None`` starts (or joins) a local Ray instance. The embedded defaults are
    one store per workdir, shared by all its studies: ``<workdir>/mlflow.db`` (one MLflow
    experiment per study) and ``<workdir>/optuna.db`` (Optuna studies ``<study>.<task>-<op>``),
    so that ``mlflow ui``, optuna-dashboard and ``nalu-study dashboard`` see every study at once.
    A study's own folder keeps its record, its Ray results and its exports.
    """

    ray_address: str | None
    tracking_uri: str
    storage: str
    workdir: Path

    def study_dir(self, study_name: str) -> Path:
        """``<workdir>/<study_name>``; a name such as ``../x`` never leaves the workdir."""
        return self.workdir / check_study_name(study_name)

    @property
    def artifact_root(self) -> Path:
        """Where a store the driver opens itself (SQLite, a database) keeps run artifacts."""
        return self.workdir / "artifacts"


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'mlflow.db'}"


def default_storage(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'optuna.db'}"


def _validate(name: str, value: str) -> str:
    value = value.strip()
    if not value:
        raise SettingsError(f"setting {name!r} is empty", field=name)
    if name == "ray_address":
        ok = value == "auto" or value.startswith("ray://") or ":" in value
        if not ok:
            raise SettingsError(
                f"ray_address must be 'auto', HOST:PORT or ray://HOST:PORT, got {value!r}",
                field=name,
            )
    if name == "tracking_uri" and "://" not in value and not value.startswith("file:"):
        raise SettingsError(
            f"tracking_uri must be a URI such as sqlite:////abs/path.db or http://host:5000, "
            f"got {value!r}",
            field=name,
        )
    if name == "storage" and "://" not in value:
        raise SettingsError(
            f"storage must be a database URL such as sqlite:////abs/optuna.db or "
            f"postgresql://user@host/db, got {value!r}",
            field=name,
        )
    return value


def resolve_settings(
    study_name: str,
    *,
    cli: Mapping[str, str | None] | None = None,
    file: Mapping[str, str | None] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve each setting from CLI, then environment, then file, then the default."""
    cli = cli or {}
    file = file or {}
    env = os.environ if env is None else env
    unknown = sorted((set(cli) | set(file)) - set(ENV_VARS))
    if unknown:
        raise SettingsError(
            f"unknown setting {unknown[0]!r}; allowed: {sorted(ENV_VARS)}", field=unknown[0]
        )

    def pick(name: str) -> str | None:
        for source in (cli.get(name), env.get(ENV_VARS[name]), file.get(name)):
            if source is not None and str(source) != "":
                return _validate(name, str(source))
        return None

    if study_name != ANY_STUDY:
        check_study_name(study_name)
    workdir = Path(pick("workdir") or DEFAULT_WORKDIR).expanduser().resolve()
    return Settings(
        ray_address=pick("ray_address"),
        tracking_uri=pick("tracking_uri") or default_tracking_uri(workdir),
        storage=pick("storage") or default_storage(workdir),
        workdir=workdir,
    )
