"""Search space of the first paper's adversarial auto-encoder (WGAN-GP critic on the latent code).

Where the ranges come from (official code: github.com/aubreychen9012/cAAE, main.py; the paper's text):
shared names keep the distribution they have in every family (see search_spaces/ae.py):
- latent_dim: 32, 64, 100 or 128 (official code: 128; 100 is GANomaly's, so the second paper's value).
- lr: 1e-5..3e-3 (log, shared); contains the official 2e-5 (all three optimisers). The critic's rate
  follows it (critic_lr_ratio 1, as in the official code), so one number moves both players together.
- batch_size: 32 or 64 (official: 64).
- width: 8 or 16 (official: 16).
AAE-specific (also used by caae, with the same distributions):
- critic_steps: 5..20 in steps of 5; WGAN-GP's 5 to the official 20. More steps keep the critic near its
  optimum (a better Wasserstein estimate), but cost time roughly in proportion.
- gp_weight: 1..30 (log) around WGAN-GP's and the official 10; too small lets the critic lose its
  Lipschitz bound, too large flattens it.
- adv_weight: 0.1..10 (log) around the official 1 (the paper adds the adversarial loss unweighted; the
  reconstruction term is a per-image norm, so the balance of the two is a real choice on other data).
Not searched: the warm-up (the official 200 critic steps per batch for 20 epochs), Adam betas (0.5, 0.9).
"""

from __future__ import annotations

from typing import Any

import optuna

LATENT_DIMS = [32, 64, 100, 128]  # shared by every family: one distribution per name in a study


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw one AAE configuration; only trial.suggest_* calls."""
    trial.suggest_categorical("latent_dim", LATENT_DIMS)
    trial.suggest_float("lr", 1e-5, 3e-3, log=True)
    trial.suggest_categorical("batch_size", [32, 64])
    trial.suggest_categorical("width", [8, 16])
    trial.suggest_int("critic_steps", 5, 20, step=5)
    trial.suggest_float("gp_weight", 1.0, 30.0, log=True)
    trial.suggest_float("adv_weight", 0.1, 10.0, log=True)
    return {}
