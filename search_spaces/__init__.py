"""Declarative search spaces over nalu_core configurations, and their presets."""

from __future__ import annotations

__all__: list[str] = []
