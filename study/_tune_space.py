"""Search spaces as Ray Tune param spaces, for when a user asks for a Tune-native searcher.

Optuna is the default searcher and uses :meth:`search_spaces.SearchSpace.suggest`
(define-by-run). A Tune-native searcher gets a param space instead: each parameter becomes a
Tune domain, a fixed value stays a plain value. Tune's own domains cannot be conditional, so
with ``conditionals="sample_from"`` (the default; Tune's BasicVariantGenerator) a conditional
parameter is a ``tune.sample_from`` that samples only when its conditions hold and is
``None`` otherwise. Searchers that reject ``sample_from`` (HyperOpt, BayesOpt, ...) take
``conditionals="flat"``: every parameter is sampled and the conditions are applied when the
point is converted (:meth:`SearchSpace.active`, :meth:`SearchSpace.to_run_config`).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

from ray import tune
from ray.tune.search.sample import Domain

from search_spaces import (
    CategoricalParameter,
    FixedParameter,
    FloatParameter,
    IntParameter,
    Parameter,
    SearchSpace,
)

Conditionals = Literal["sample_from", "flat"]


def tune_domain(param: Parameter) -> Any:
    """The Tune domain of one parameter, ignoring its conditions."""
    if isinstance(param, FixedParameter):
        return param.value
    if isinstance(param, CategoricalParameter):
        return tune.choice(list(param.choices))
    if isinstance(param, IntParameter):
        if param.step != 1:
            # Tune's qrandint rounds to multiples of q, not to low + k * step: list the grid
            return tune.choice(param.grid())
        if param.log:
            return tune.lograndint(param.low, param.high + 1)  # upper bound exclusive
        return tune.randint(param.low, param.high + 1)  # upper bound exclusive
    if isinstance(param, FloatParameter):
        if param.step is not None:
            count = round((param.high - param.low) / param.step)
            return tune.choice([param.low + k * param.step for k in range(count + 1)])
        if param.log:
            return tune.loguniform(param.low, param.high)
        return tune.uniform(param.low, param.high)
    raise TypeError(f"unknown parameter type {type(param).__name__}")


def _conditional_sample(space: SearchSpace, param: Parameter, domain: Any, config: Any) -> Any:
    # Tune passes the resolved-so-far config; reading a value that is not resolved yet
    # raises its RecursiveDependencyError and Tune retries after the next pass. Inactive
    # parameters are None there.
    if not hasattr(config, space.parameters[0].name) and hasattr(config, "config"):
        config = config.config  # the experiment spec, as Tune passes it inside a Tuner
    point: dict[str, Any] = {}
    for other in space.parameters:
        if other.name == param.name:
            break
        value = getattr(config, other.name, None)
        if value is not None and other.active(point):
            point[other.name] = value
    if not param.active(point):
        return None
    if isinstance(domain, Domain):
        return domain.sample()
    return domain


def to_tune_param_space(
    space: SearchSpace, *, conditionals: Conditionals = "sample_from"
) -> dict[str, Any]:
    """A flat Tune param space with one key per parameter (the flat hyperparameter name)."""
    if conditionals not in ("sample_from", "flat"):
        raise ValueError(f"conditionals must be 'sample_from' or 'flat', got {conditionals!r}")
    param_space: dict[str, Any] = {}
    for param in space.parameters:
        domain = tune_domain(param)
        if param.conditional and conditionals == "sample_from":
            domain = tune.sample_from(functools.partial(_conditional_sample, space, param, domain))
        param_space[param.name] = domain
    return param_space
