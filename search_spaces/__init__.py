"""Declarative search spaces over nalu_core configurations, and their presets.

A space is a YAML file of named hyperparameters (float, int, categorical, fixed; each may be
conditional). It is validated against nalu_core before anything runs, converts to Optuna
(define-by-run) and, in :mod:`study`, to Ray Tune, and turns a sampled point into a
validated :class:`nalu_core.RunConfig`. See docs/search-spaces.md.
"""

from __future__ import annotations

from search_spaces._errors import InvalidSearchSpaceError, SearchSpaceError
from search_spaces._params import (
    CategoricalParameter,
    Condition,
    FixedParameter,
    FloatParameter,
    IntParameter,
    Parameter,
)
from search_spaces._presets import list_presets, load_preset, load_space, preset_text
from search_spaces._space import SearchSpace
from search_spaces._targets import STUDY_TRAIN_FIELDS, TRAIN_FIELDS, default_target

__all__ = [
    "STUDY_TRAIN_FIELDS",
    "TRAIN_FIELDS",
    "CategoricalParameter",
    "Condition",
    "FixedParameter",
    "FloatParameter",
    "IntParameter",
    "InvalidSearchSpaceError",
    "Parameter",
    "SearchSpace",
    "SearchSpaceError",
    "default_target",
    "list_presets",
    "load_preset",
    "load_space",
    "preset_text",
]
