from __future__ import annotations


class StudyError(Exception):
    """Base class of every error raised by :mod:`study`."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SettingsError(StudyError, ValueError):
    """A service setting (Ray address, tracking URI, storage URL, workdir) is invalid."""


class SpecError(StudyError, ValueError):
    """A study spec is malformed; ``field`` names the offending key."""


class InvalidSpecError(SpecError):
    """Every problem found in one spec; ``errors`` holds them one by one."""

    def __init__(self, errors: list[SpecError]) -> None:
        super().__init__("\n".join(str(e) for e in errors), field=errors[0].field)
        self.errors = list(errors)
