"""Intensity-thresholding baseline (Meissen et al.): the standardised image itself is the anomaly map.

Lesions that are hyperintense in the scanned modality (tumour and oedema on T2 and FLAIR) score high
without any learning; on FLAIR this simple rule reaches pixel AUROC 0.99+ on common benchmarks, so a
learned detector has to beat it to be worth its cost. On T2 (the first paper's modality) bright CSF
competes with lesions, which makes it a weaker but still honest reference.

- ``pixel_map = x`` (signed: hypointense pixels are the least anomalous), so thresholding the map is
  thresholding the image;
- ``recon`` is all zeros: the implied "healthy" image is the brain's mean intensity (0 after z-scoring),
  which keeps ``x - recon == pixel_map`` as for reconstruction models;
- ``slice_score``: the mean of the slice's top ``top_fraction`` pixels of the map (at least one pixel),
  a smooth high quantile that a handful of bright lesion pixels raise while a single hot pixel barely does.
No training: ``trainable = False``, no networks, no optimisers, ``train_step`` returns ``{"loss": 0.0}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trainables.families.base import Family, Scores, scoring
from trainables.families.registry import register_family


@dataclass
class ThresholdHparams:
    top_fraction: float = 0.01  # share of a slice's pixels averaged into its score (10 pixels at 32x32); ours


@register_family("threshold")
class Threshold(Family):
    """The image as its own anomaly map; nothing to train."""

    Hparams = ThresholdHparams
    # Meissen et al.'s intensity threshold as the reproduction's baseline row; top_fraction is ours (ThresholdHparams).
    presets = {"baseline": {}}
    trainable = False

    def __init__(self, hparams: ThresholdHparams) -> None:
        super().__init__(hparams)
        if not 0 < hparams.top_fraction <= 1:
            raise ValueError(f"threshold: top_fraction must be in (0, 1], got {hparams.top_fraction}")

    def build(self, image_size: int) -> nn.ModuleDict:
        """No networks."""
        return nn.ModuleDict()

    def optimizers(self, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        """No optimisers."""
        return {}

    def train_step(
        self, nets: nn.ModuleDict, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, float]:
        """Nothing to learn."""
        return {"loss": 0.0}

    @scoring
    def score(self, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        """``pixel_map = x``, ``recon = 0``, slice score the mean of the top ``top_fraction`` of the map."""
        flat = x.flatten(1)
        k = max(1, math.ceil(self.hp.top_fraction * flat.shape[1]))
        slice_score = flat.topk(k, dim=1).values.mean(1)
        return Scores(recon=torch.zeros_like(x), pixel_map=x.clone(), slice_score=slice_score)
