from __future__ import annotations

from collections.abc import Sequence

MAX_MESSAGE = 400


class SearchSpaceError(ValueError):
    """A search space is invalid, or a point does not fit it.

    ``file`` names the YAML file (or ``<preset NAME>``, ``<mapping>``) and ``param`` the
    offending parameter, ``None`` for problems with the file as a whole.
    """

    def __init__(self, message: str, *, file: str | None = None, param: str | None = None) -> None:
        # a value repr'd into the message may be huge (a long list of choices): one line stays
        # readable, and an error never costs more than the file it reports on
        self.message = (
            message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
        )
        self.file = file
        self.param = param
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.file or "<search space>"
        if self.param is not None:
            where += f": parameter {self.param!r}"
        return f"{where}: {self.message}"


class InvalidSearchSpaceError(SearchSpaceError):
    """Every problem validation found in one space; ``errors`` holds them one by one."""

    def __init__(self, errors: Sequence[SearchSpaceError], *, file: str | None = None) -> None:
        if not errors:
            raise ValueError("InvalidSearchSpaceError needs at least one error")
        self.errors = list(errors)
        ValueError.__init__(self, "\n".join(str(e) for e in self.errors))
        self.message = self.errors[0].message
        self.file = file
        self.param = self.errors[0].param
