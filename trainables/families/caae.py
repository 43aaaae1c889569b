"""The first paper's proposal, the constrained AAE (Chen & Konukoglu, MIDL 2018): the AAE (trainables/families/
aae.py: its three-phase schedule, critic and generator steps) with a latent consistency term in the auto-encoder
step. The whole auto-encoder objective, ``||x - x'||_2 + latent_weight * ||z - Enc(x')||^2`` with ``z = Enc(x)``,
``x' = Dec(z)`` (``latent_weight`` the paper's lambda), asks a lesion image and its (healthy-looking)
reconstruction to share a code, so the reconstruction stays close to the input outside the lesion.

The consistency pass ``Enc(x')`` runs in inference mode, as in the official code (which hard-codes lambda = 0.5):
its BatchNorm layers normalise with their running statistics and leave them untouched (a reconstruction's
statistics, blurrier and lower in contrast early on, would otherwise leak into what eval mode uses). The gradient
flows through both passes, as in the official code. At ``latent_weight = 0`` the pass is skipped rather than
multiplied by 0, so the model is exactly the AAE for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.families.aae import AAE, AAEHparams
from trainables.families.autoencoder import reconstruct
from trainables.families.base import eval_mode
from trainables.families.losses import latent_l2
from trainables.families.registry import register_family


@dataclass
class CAAEHparams(AAEHparams):
    latent_weight: float = 1.0  # lambda; the paper reports 0.5 (AUROC 0.906) and 1.0 (0.923, its best)


def latent_consistency(encoder: nn.Module, z: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``||z - Enc(x')||^2``, the second encoder pass in inference mode (module doc)."""
    with eval_mode(encoder):
        return latent_l2(z, encoder(xr))


@register_family("caae")
class CAAE(AAE):
    """AAE with the latent consistency constraint; scores as the AAE (residual map, latent score)."""

    Hparams = CAAEHparams
    # The first paper's two reported lambdas (Chen & Konukoglu, MIDL 2018, Table 1): 1.0 (pixel AUROC 0.923, its
    # best) and 0.5 (0.906; the official code's hard-coded value). Every other value: the AAE's (AAEHparams).
    presets = {"paper-lambda-1.0": {"latent_weight": 1.0}, "paper-lambda-0.5": {"latent_weight": 0.5}}

    def __init__(self, hparams: CAAEHparams) -> None:
        super().__init__(hparams)
        if hparams.latent_weight < 0:
            raise ValueError(f"caae: latent_weight must be >= 0, got {hparams.latent_weight}")

    def autoencoder_loss(self, nets: nn.ModuleDict, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Phase 1's objective ``recon + latent_weight * latent``; terms ``recon`` (batch mean of ``||x - x'||_2``,
        or its square with ``recon_norm="squared"``)
        and, at a positive weight, ``latent`` (batch mean of ``||z - Enc(x')||^2``)."""
        z, xr = reconstruct(nets, x)
        recon = self.recon_loss(x, xr)
        if self.hp.latent_weight == 0:
            return recon, {"recon": recon}
        latent = latent_consistency(nets["encoder"], z, xr)
        return recon + self.hp.latent_weight * latent, {"recon": recon, "latent": latent}
