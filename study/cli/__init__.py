"""The ``nalu-study`` command line: one module per command group, each with ``register(app)``."""

from __future__ import annotations

from study.cli._app import app, main

__all__ = ["app", "main"]
