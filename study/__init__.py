"""Study orchestration: Ray Tune + Optuna, MLflow tracking, export and the CLI."""

from __future__ import annotations

from study._errors import SettingsError, SpecError, StudyError
from study._settings import ENV_VARS, Settings, resolve_settings

__all__ = [
    "ENV_VARS",
    "Settings",
    "SettingsError",
    "SpecError",
    "StudyError",
    "resolve_settings",
]
