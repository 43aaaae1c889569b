"""Search space of the coarse-noise denoising auto-encoder (trainables/families/dae.py).

Names shared with other families keep the distribution they have everywhere (see search_spaces/ae.py):
- lr: 1e-5..3e-3 (log, shared); contains the authors' run's 1e-4 (the family default) and their code's 1e-3.
- batch_size: 32 or 64 (shared). The authors trained with 16; a name keeps one distribution in a study.
- channels: 16, 32 or 64 U-Net channels in the first level (shared with LRAN's first conv); 64 is the authors'.
DAE-specific:
- noise_res: 4..32 grid cells per 128 pixels (log-int). The paper's 16 in the middle; the authors' follow-up
  work reports that the noise's spatial scale matters most, with coarser and finer grids both worse on BraTS,
  which we could not read in detail: the range spans a factor 4 each way around 16.
- noise_std: 0.3..3.0 (log) in z-score units: the paper's 0.2 converts to 1.4 of ours (see the family
  module); the range spans about 0.04..0.4 on the paper's scale.
- depth: 3 or 4 levels (the authors' 4; 3 is cheaper and at 32x32 keeps a 8x8 deepest level).
Not searched: residual (a scoring choice on the same weights), noise_mode, median_kernel, weight_decay.
"""

from __future__ import annotations

from typing import Any

import optuna


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """Draw one DAE configuration; only trial.suggest_* calls."""
    trial.suggest_float("lr", 1e-5, 3e-3, log=True)
    trial.suggest_categorical("batch_size", [32, 64])
    trial.suggest_categorical("channels", [16, 32, 64])
    trial.suggest_int("noise_res", 4, 32, log=True)
    trial.suggest_float("noise_std", 0.3, 3.0, log=True)
    trial.suggest_categorical("depth", [3, 4])
    return {}
