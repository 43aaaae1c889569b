"""Which val measure chooses, and which way is better: one answer for the driver and the workers.

A worker keeps its best epoch by the study's first objective; the driver picks each objective's best trial,
draws Pareto fronts and compares the winner with the baseline row. Every one of those decisions goes
through an ``Objective``, so "max" and "min" are read in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from trainables.numbers import is_real

MODES = ("max", "min")
T = TypeVar("T")


@dataclass(frozen=True)
class Objective:
    metric: str  # a val_* metric name (model choice never sees test data)
    mode: str = "max"  # "max" or "min"

    def oriented(self, value: float) -> float:
        """``value`` turned so that larger is better (negated when minimised)."""
        return value if self.mode == "max" else -value

    def better(self, value: float, than: float) -> bool:
        """Whether ``value`` improves on ``than``; a NaN never improves, anything improves on a NaN."""
        if not math.isfinite(value):
            return False
        return math.isnan(than) or self.oriented(value) > self.oriented(than)

    def best(self, items: Iterable[T], value: Callable[[T], Any] | None = None) -> T | None:
        """The item with the best finite value (``value(item)``, default ``item[metric]``); None when none has one.
        Ties keep the first."""
        read = value or (lambda item: item[self.metric])
        chosen, chosen_value = None, math.nan
        for item in items:
            candidate = read(item)
            if is_real(candidate) and self.better(candidate, chosen_value):
                chosen, chosen_value = item, candidate
        return chosen
