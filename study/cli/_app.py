"""The ``nalu-study`` command line.

Each command group lives in its own module of :mod:`study.cli` with a ``register(app)`` function.
Packages that build on :mod:`study` (the dashboards) add their commands through the
``nalu_study.commands`` entry-point group, so that dependencies keep pointing one way.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import typer

from study.cli import _export, _spaces, _study, _train, _units

app = typer.Typer(
    name="nalu-study",
    help="Hyperparameter studies for neural arithmetic units on Ray Tune, Optuna and MLflow.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _module in (_train, _units, _spaces, _study, _export):
    _module.register(app)


def _load_plugins() -> None:
    for entry in entry_points(group="nalu_study.commands"):
        entry.load()(app)


def main(argv: list[str] | None = None) -> None:
    _load_plugins()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="nalu-study")
