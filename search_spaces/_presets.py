"""The search spaces shipped with the package, and loading a space by name or path."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

from search_spaces._errors import SearchSpaceError
from search_spaces._space import SearchSpace

_SUFFIX = ".yaml"


def list_presets() -> list[str]:
    """Names of the shipped spaces (``quick``, ``division``, ...)."""
    folder = resources.files("search_spaces") / "presets"
    return sorted(
        entry.name.removesuffix(_SUFFIX)
        for entry in folder.iterdir()
        if entry.name.endswith(_SUFFIX)
    )


def preset_text(name: str) -> str:
    if name not in list_presets():
        raise SearchSpaceError(f"no preset named {name!r}; presets: {list_presets()}", file=name)
    entry = resources.files("search_spaces") / "presets" / f"{name}{_SUFFIX}"
    return entry.read_text(encoding="utf-8")


def load_preset(name: str) -> SearchSpace:
    """A shipped space, validated once per process (spaces are immutable)."""
    if name not in list_presets():
        raise SearchSpaceError(f"no preset named {name!r}; presets: {list_presets()}", file=name)
    return _load_preset(name)


@functools.cache
def _load_preset(name: str) -> SearchSpace:
    return SearchSpace.from_yaml(preset_text(name), file=f"<preset {name}>", default_name=name)


def load_space(source: str | Path) -> SearchSpace:
    """A preset name (``quick``) or the path of a YAML file; validated."""
    path = Path(source)
    if isinstance(source, str) and source in list_presets() and not path.is_file():
        return load_preset(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return SearchSpace.from_file(path)
    raise SearchSpaceError(
        f"is neither a preset ({list_presets()}) nor a YAML file", file=str(source)
    )
