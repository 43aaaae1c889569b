"""Search space of the second paper's latent-regularised adversarial network (GANomaly + rank term).

Shared names keep the distribution they have in every family (see search_spaces/ae.py):
- latent_dim: 32, 64 or 128 (GANomaly's default is 100, between two of them).
- lr: 1e-5..3e-3 (log, shared by every family: a name keeps one distribution in a study); it contains
  GANomaly's 2e-4 and the second paper's 2e-3 (the family's default).
- batch_size: 32 or 64 (the paper's 64).
LRAN-specific:
- w_i: 1..50 (log): the paper's 1 to GANomaly's 50 for the image L1 term.
- w_a: 0.5..10 (log): GANomaly's 1 and the paper's 5 for the adversarial (feature-matching) term.
- w_z: 0.1..10 (log) around both papers' 1 for the latent reconstruction ||z - z'||^2.
- w_r: 1e-3..0.5 (log) around the paper's 0.05. The ablation w_r = 0 (GANomaly) is a fixed setting of
  trainables/reproduce.py, not a point of this log range.
- rank_target: 1..16 (log-int). It must stay below the per-worker batch (16 or 32 with 2 workers) for
  the term to act; latent codes of healthy slices should vary along few directions.
- channels: 16, 32 or 64 at the first conv (DCGAN/GANomaly: 64; fewer for speed at 32x32).
Not searched: slice_score (a scoring choice on the same weights: compare both with the reproduce
script or study.evaluate), input_scale (a data-range setting), Adam betas.
"""

from __future__ import annotations

from typing import Any

import optuna


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw one LRAN configuration; only trial.suggest_* calls."""
    trial.suggest_categorical("latent_dim", [32, 64, 128])
    trial.suggest_float("lr", 1e-5, 3e-3, log=True)
    trial.suggest_categorical("batch_size", [32, 64])
    trial.suggest_float("w_i", 1.0, 50.0, log=True)
    trial.suggest_float("w_a", 0.5, 10.0, log=True)
    trial.suggest_float("w_z", 0.1, 10.0, log=True)
    trial.suggest_float("w_r", 1e-3, 0.5, log=True)
    trial.suggest_int("rank_target", 1, 16, log=True)
    trial.suggest_categorical("channels", [16, 32, 64])
    return {}
