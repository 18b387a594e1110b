from __future__ import annotations


class NaluCoreError(Exception):
    """Base class of every error raised by :mod:`nalu_core`."""


class ConfigError(NaluCoreError, ValueError):
    """A configuration value is invalid.

    ``field`` names the offending option (dotted for nested configs, e.g. ``"train.lr"``),
    so that the CLI and the search-space validator can point at it.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
