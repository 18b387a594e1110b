from __future__ import annotations


class DashboardError(ValueError):
    """Base class of every error raised by :mod:`dashboards`; ``field`` names the bad input."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class StoreUnavailableError(DashboardError):
    """The MLflow tracking store or the Optuna storage cannot be read."""


class NotFoundError(DashboardError):
    """A study, trial or slice that the request names does not exist."""
