"""Search space of the intensity-threshold baseline: nothing to tune.

The family has no learned weights; its one setting, ``top_fraction`` (how many of a slice's brightest
pixels make its score), stays at its default so the baseline is the same rule in every study. Listing the
family in a study still gives it a row (trial) beside the learned detectors.
"""

from __future__ import annotations

from typing import Any

import optuna


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """No parameters: returns no constants either."""
    return {}
