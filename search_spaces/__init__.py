"""Optuna define-by-run search spaces, one module per detector family.

Each module exposes `suggest(trial) -> dict`: it only calls `trial.suggest_*` and returns constants
(fixed settings) to merge into the trial's config. A study over several families draws the family
first, then that family's conditional space.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

import optuna

SpaceFn = Callable[[optuna.Trial], dict[str, Any]]


def space_names() -> list[str]:
    """Families that have a search space module here."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def family_space(family: str) -> SpaceFn:
    """The `suggest` function of one family's module."""
    if family not in space_names():
        raise ValueError(f"no search space for family '{family}'; known: {', '.join(space_names())}")
    return importlib.import_module(f"{__name__}.{family}").suggest


def suggest_image_size(trial: optuna.Trial, image_sizes: list[int]) -> None:
    """Draw the slice side where the study lists several (data.image_size); with one, nothing is drawn."""
    if len(image_sizes) > 1:
        trial.suggest_categorical("image_size", list(image_sizes))


class define_by_run:  # noqa: N801  (used like a function; a class so Tune can pickle the searcher)
    """A define-by-run function for Ray's OptunaSearch over one or several families (and image sizes)."""

    def __init__(self, families: list[str], image_sizes: list[int] | None = None) -> None:
        self.families = list(families)
        self.image_sizes = list(image_sizes or [])

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        if len(self.families) == 1:
            family = self.families[0]
            constants = {"family": family}
        else:
            family = trial.suggest_categorical("family", self.families)
            constants = {}
        constants.update(family_space(family)(trial) or {})
        suggest_image_size(trial, self.image_sizes)
        return constants
