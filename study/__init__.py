"""Study orchestration: Ray Tune + Optuna, MLflow tracking, export and the CLI."""

from __future__ import annotations

from study._errors import InvalidSpecError, SettingsError, SpecError, StudyError
from study._export import trials_dataframe
from study._settings import ENV_VARS, Settings, redact, resolve_settings
from study._spec import StudySpec, load_spec, parse_spec
from study._studies import StudyStatus, list_studies, study_status
from study._tracking import (
    MSE_FLOOR,
    ROBUST_LOWER_BOUND,
    StudyTracker,
    TrackingError,
    TrialTracker,
    config_params,
    division_summary,
)

__all__ = [
    "ENV_VARS",
    "InvalidSpecError",
    "MSE_FLOOR",
    "ROBUST_LOWER_BOUND",
    "Settings",
    "SettingsError",
    "SpecError",
    "StudyError",
    "StudySpec",
    "StudyStatus",
    "StudyTracker",
    "TrackingError",
    "TrialTracker",
    "config_params",
    "division_summary",
    "list_studies",
    "load_spec",
    "parse_spec",
    "redact",
    "resolve_settings",
    "study_status",
    "trials_dataframe",
]
