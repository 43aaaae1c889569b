"""Search space of the first paper's VAE.

The paper fixed these by hand (latent 128, batch 64, Adam); we search around those choices:
- latent_dim: 32..128; the paper's 128 at 32x32 is generous, smaller codes regularise more.
- kl_weight: 1e-3..1 (log); the KL's weight trades reconstruction sharpness for a smooth latent.
- lr: 1e-5..3e-3 (log, shared by all families); the official code used 2e-5 for adversarial models.
- batch_size: 32 or 64 (the paper's).
- width: 8 or 16 channels at the first block (16 in the official code).
"""

from __future__ import annotations

from typing import Any

import optuna


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw one VAE configuration; only trial.suggest_* calls."""
    trial.suggest_categorical("latent_dim", [32, 64, 128])
    trial.suggest_float("kl_weight", 1e-3, 1.0, log=True)
    trial.suggest_float("lr", 1e-5, 3e-3, log=True)
    trial.suggest_categorical("batch_size", [32, 64])
    trial.suggest_categorical("width", [8, 16])
    return {}
