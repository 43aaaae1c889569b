"""Search space of the second paper's latent-regularised adversarial network (GANomaly + rank term).

Where the ranges come from (the second paper: w_i=1, w_a=5, w_z=1, w_r=0.05, Adam lr 0.002, batch 64;
GANomaly's reference code: latent 100, w_con=50, w_adv=1, w_enc=1, lr 2e-4). Shared names keep the
distribution they have in every family (see search_spaces/ae.py):
- latent_dim: 32, 64, 100 or 128 (100 is GANomaly's default, the family's).
- lr: 1e-5..3e-3 (log, shared): contains GANomaly's 2e-4 and the second paper's 2e-3.
- batch_size: 32 or 64 (the paper's 64).
LRAN-specific:
- w_i: 1..50 (log): the paper's 1 to GANomaly's 50 for the image L1 term.
- w_a: 0.5..10 (log): GANomaly's 1 and the paper's 5 for the adversarial term.
- use_zrec / use_rank: each term on or off, so Table 4's ablations (and GANomaly, use_rank off) are points
  of the space; when on, its weight is searched on a log scale:
  - w_z: 0.1..10 around both papers' 1 for ||z - z'||^2;
  - w_r: 1e-3..0.5 around the paper's 0.05;
  - rank_target: 1..16 (log-int). The rank term is computed on the batch gathered over DDP workers, whose
    centred codes span at most batch_size - 1 >= 31 directions here, so every drawn r leaves energy to
    penalise (the family raises on an r that could not).
- adversarial: "gan" (the paper's GAN term) or "feature" (GANomaly's feature matching).
- channels: 16, 32 or 64 at the first conv (DCGAN/GANomaly: 64; fewer for speed at 32x32).
Not searched: slice_score (a scoring choice on the same weights: compare both with the reproduce
script or study.evaluate), input_scale (a data-range setting), Adam betas.
"""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces.aae import LATENT_DIMS


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw one LRAN configuration; only trial.suggest_* calls."""
    trial.suggest_categorical("latent_dim", LATENT_DIMS)
    trial.suggest_float("lr", 1e-5, 3e-3, log=True)
    trial.suggest_categorical("batch_size", [32, 64])
    trial.suggest_float("w_i", 1.0, 50.0, log=True)
    trial.suggest_float("w_a", 0.5, 10.0, log=True)
    if trial.suggest_categorical("use_zrec", [True, False]):
        trial.suggest_float("w_z", 0.1, 10.0, log=True)
    if trial.suggest_categorical("use_rank", [True, False]):
        trial.suggest_float("w_r", 1e-3, 0.5, log=True)
        trial.suggest_int("rank_target", 1, 16, log=True)
    trial.suggest_categorical("adversarial", ["gan", "feature"])
    trial.suggest_categorical("channels", [16, 32, 64])
    return {}
