"""What counts as a number in a config, a search point, a result row or a bench figure: one rule for the study
and the workers. A bool is never a number here (``True`` is an ``int`` to Python, but a flag given where a value
belongs is a mistake to report, not a 1); numpy scalars count as the Python numbers they stand for."""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_real(value: Any) -> bool:
    """An int or a float (Python or numpy), not a bool; NaN and infinities included."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    """An int (Python or numpy), not a bool; 3.0 is not one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """A real number that is neither NaN nor infinite."""
    return is_real(value) and math.isfinite(value)
