"""Search space of the plain auto-encoder baseline.

Names shared with other families keep one distribution in every family (one Optuna study may hold
several families, and a name must mean one distribution there; tests/unit/test_search_spaces.py checks):
- latent_dim: 32, 64, 100 or 128 (128: the first paper's official code; 100: GANomaly's, the second paper's).
- lr: 1e-5..3e-3 (log, shared by all families); contains the official 2e-5 and the second paper's 2e-3.
- batch_size: 32 or 64 (both papers: 64).
- width: 8 or 16 channels at the first block (16 in the official code).
"""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.aae import LATENT_DIMS


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw one AE configuration; only trial.suggest_* calls."""
    trial.suggest_categorical("latent_dim", LATENT_DIMS)
    trial.suggest_float("lr", 1e-5, 3e-3, log=True)
    trial.suggest_categorical("batch_size", [32, 64])
    trial.suggest_categorical("width", [8, 16])
    return {}
