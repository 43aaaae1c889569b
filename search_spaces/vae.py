"""Search space of the first paper's VAE.

The paper fixed these by hand (latent 128, batch 64, Adam); we search around those choices:
- latent_dim: 32, 64, 100 or 128 (shared; the official 128 at 32x32 is generous, smaller codes regularise more).
- kl_weight: 1e-3..1 (log); 1 is the ELBO (unit-variance Gaussian decoder); smaller weights trade the
  smooth latent for sharper reconstructions (a beta-VAE with beta < 1).
- lr: 1e-5..3e-3 (log, shared by all families); contains the official 2e-5.
- batch_size: 32 or 64 (the paper's 64).
- width: 8 or 16 channels at the first block (16 in the official code).
Not searched: logvar_clamp (an overflow guard, not a modelling choice), Adam betas (0.5, 0.9).
"""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.aae import LATENT_DIMS


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw one VAE configuration; only trial.suggest_* calls."""
    trial.suggest_categorical("latent_dim", LATENT_DIMS)
    trial.suggest_float("kl_weight", 1e-3, 1.0, log=True)
    trial.suggest_float("lr", 1e-5, 3e-3, log=True)
    trial.suggest_categorical("batch_size", [32, 64])
    trial.suggest_categorical("width", [8, 16])
    return {}
