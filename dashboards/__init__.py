"""Web dashboard and static report of nalu-study results."""

from __future__ import annotations

from dashboards._app import create_app
from dashboards._data import MlflowSource, Trial, TTLCache
from dashboards._errors import DashboardError, NotFoundError, StoreUnavailableError
from dashboards._report import render_report, write_report
from dashboards._service import Dashboard

__all__ = [
    "Dashboard",
    "DashboardError",
    "MlflowSource",
    "NotFoundError",
    "StoreUnavailableError",
    "TTLCache",
    "Trial",
    "create_app",
    "render_report",
    "write_report",
]
