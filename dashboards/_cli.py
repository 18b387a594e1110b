from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds ``dashboard`` and ``report`` to the ``nalu-study`` command line."""
