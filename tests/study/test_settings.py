from __future__ import annotations

from pathlib import Path

import pytest

from study import SettingsError, resolve_settings


def test_precedence_is_cli_then_env_then_file_then_default(tmp_path: Path) -> None:
    env = {
        "NALU_STUDY_STORAGE": "postgresql://env@127.0.0.1/db",
        "NALU_STUDY_WORKDIR": str(tmp_path),
    }
    settings = resolve_settings(
        "s",
        cli={"tracking_uri": "http://127.0.0.1:5000"},
        file={
            "tracking_uri": "http://file:1",
            "storage": "sqlite:////file.db",
            "ray_address": "auto",
        },
        env=env,
    )
    assert settings.tracking_uri == "http://127.0.0.1:5000"
    assert settings.storage == "postgresql://env@127.0.0.1/db"
    assert settings.ray_address == "auto"
    assert settings.workdir == tmp_path


def test_defaults_are_one_sqlite_store_per_workdir(tmp_path: Path) -> None:
    settings = resolve_settings("demo", cli={"workdir": str(tmp_path)}, env={})
    other = resolve_settings("other", cli={"workdir": str(tmp_path)}, env={})
    assert settings.ray_address is None
    assert settings.storage == f"sqlite:///{tmp_path}/optuna.db" == other.storage
    assert settings.tracking_uri == f"sqlite:///{tmp_path}/mlflow.db" == other.tracking_uri
    assert settings.study_dir("demo") == tmp_path / "demo"


@pytest.mark.parametrize(
    ("cli", "field"),
    [
        ({"ray_address": "nohost"}, "ray_address"),
        ({"storage": "optuna.db"}, "storage"),
        ({"x": "1"}, "x"),
    ],
)
def test_bad_settings_name_the_field(cli: dict[str, str], field: str) -> None:
    with pytest.raises(SettingsError) as info:
        resolve_settings("s", cli=cli, env={})
    assert info.value.field == field
