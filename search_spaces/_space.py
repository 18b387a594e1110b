"""A validated search space and its conversions: Optuna, points and RunConfigs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution

from nalu_core import RunConfig, TaskConfig
from search_spaces._build import active_point, build_run_config
from search_spaces._errors import InvalidSearchSpaceError, SearchSpaceError
from search_spaces._params import FixedParameter, Parameter
from search_spaces._parse import parse_space
from search_spaces._validate import semantic_errors
from search_spaces._yaml import dump_yaml, load_yaml


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """Named hyperparameters over RunConfig fields, ordered so conditions come after
    the parameters they test. Build one with :meth:`from_mapping`, :meth:`from_yaml`,
    :meth:`from_file` or :func:`load_space`; all of them validate."""

    name: str
    description: str
    tasks: tuple[str, ...]
    parameters: tuple[Parameter, ...]
    file: str

    @classmethod
    def from_mapping(
        cls, data: object, *, file: str = "<mapping>", default_name: str = "space"
    ) -> SearchSpace:
        """Parse and validate; raises :class:`InvalidSearchSpaceError` listing every problem."""
        parsed = parse_space(data, file=file, default_name=default_name)
        errors = semantic_errors(
            parsed.parameters, parsed.tasks, file=file, parse_errors=parsed.errors
        )
        if errors:
            raise InvalidSearchSpaceError(errors, file=file)
        return cls(
            name=parsed.name,
            description=parsed.description,
            tasks=parsed.tasks,
            parameters=parsed.parameters,
            file=file,
        )

    @classmethod
    def from_yaml(
        cls, text: str, *, file: str = "<string>", default_name: str = "space"
    ) -> SearchSpace:
        try:
            data = load_yaml(text)
        except Exception as err:  # yaml.YAMLError and friends: report, don't trace
            # one line, naming the file (PyYAML calls it "<unicode string>")
            detail = " ".join(str(err).replace('in "<unicode string>",', "").split())
            raise SearchSpaceError(f"is not valid YAML: {detail}", file=file) from err
        return cls.from_mapping(data, file=file, default_name=default_name)

    @classmethod
    def from_file(cls, path: str | Path) -> SearchSpace:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise SearchSpaceError(f"cannot be read: {err.strerror}", file=str(path)) from err
        return cls.from_yaml(text, file=str(path), default_name=path.stem)

    # -- inspection ---------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def __getitem__(self, name: str) -> Parameter:
        for param in self.parameters:
            if param.name == name:
                return param
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """Every parameter in long form, defaults and targets spelt out."""
        return {
            "name": self.name,
            "description": self.description,
            "tasks": list(self.tasks),
            "parameters": {p.name: p.to_dict() for p in self.parameters},
        }

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())

    # -- Optuna -------------------------------------------------------------------------

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Define-by-run: sample each parameter whose conditions hold, in order.

        Returns the point (fixed values included). Also usable as Ray Tune's
        ``OptunaSearch(space=space.suggest)``, which merges the returned dict.
        """
        point: dict[str, Any] = {}
        for param in self.parameters:
            if param.active(point):
                point[param.name] = param.suggest(trial)
        return point

    def to_optuna_distributions(self) -> dict[str, BaseDistribution]:
        """The unconditional sampled parameters; conditional ones need :meth:`suggest`."""
        dists: dict[str, BaseDistribution] = {}
        for param in self.parameters:
            dist = param.distribution()
            if dist is not None and not param.conditional:
                dists[param.name] = dist
        return dists

    def fixed_values(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.parameters if isinstance(p, FixedParameter)}

    # -- points -------------------------------------------------------------------------

    def active(self, point: Mapping[str, Any]) -> dict[str, Any]:
        """``point`` restricted to the parameters that exist there, fixed values added."""
        return active_point(self.parameters, point, file=self.file)

    def to_run_config(
        self,
        point: Mapping[str, Any],
        *,
        task: TaskConfig,
        train: Mapping[str, Any] | None = None,
    ) -> RunConfig:
        """The validated RunConfig of a sampled point.

        The study supplies the task (name, op, options) and the training fields it owns
        (``seeds``, ``steps``, ``eval_every``, ...); the point supplies the rest.
        """
        if self.tasks and task.name not in self.tasks:
            raise SearchSpaceError(
                f"is written for tasks {list(self.tasks)}, not {task.name!r}", file=self.file
            )
        return build_run_config(
            self.parameters, point, task=task, train=train or {}, file=self.file
        )
