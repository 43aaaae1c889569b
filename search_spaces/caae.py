"""Search space of the first paper's constrained AAE: the AAE's space plus lambda.

- everything the AAE samples, with the same distributions (search_spaces/aae.py says why);
- latent_weight (the paper's lambda): 0..2 in steps of 0.25; contains 0 (the AAE), 0.5 and 1.0 (the paper's
  two settings, 1.0 its best) and stronger constraints up to 2; the steps keep those exact values reachable
  while TPE sees an order.
"""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces import aae


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw one constrained-AAE configuration; only trial.suggest_* calls."""
    constants = aae.suggest(trial)
    trial.suggest_float("latent_weight", 0.0, 2.0, step=0.25)
    return constants
