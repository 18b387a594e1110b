"""Web dashboard and static report of nalu-study results."""

from __future__ import annotations

__all__: list[str] = []
