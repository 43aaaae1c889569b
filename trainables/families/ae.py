"""Plain auto-encoder baseline: the first paper's ResNet encoder/decoder and L2 reconstruction, nothing adversarial.

Its whole objective is ``||x - x'||_2`` per image, batch mean. It has no latent consistency term (the
constrained AAE's lambda, trainables/families/caae.py): the reproduction trains "ae" as this plain baseline
(trainables/reproduce/runs.py, study/configs/reproduce.yaml), and what the term adds is what the constrained
AAE's own lambda answers (0 is the AAE), as the AAE against this AE answers what the critic adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.families.autoencoder import build_autoencoder, reconstruct, score_reconstruction
from trainables.families.base import Family, Scores, parameters, scoring
from trainables.families.losses import l2_recon
from trainables.families.registry import register_family


@dataclass
class AEHparams:
    latent_dim: int = 128  # size of z; 128 in the first paper's official code
    width: int = 16  # channels after the stem conv, doubled per block; 16 in the official code
    lr: float = 2e-5  # Adam learning rate; 2e-5 in the official code (its models share it)
    beta1: float = 0.5  # Adam beta1; 0.5 in the official code
    beta2: float = 0.9  # Adam beta2; 0.9 in the official code


@register_family("ae")
class AE(Family):
    """Deterministic ResNet auto-encoder; anomaly map ``|x - Dec(Enc(x))|``."""

    Hparams = AEHparams
    # Our baseline on the first paper's nets (not a row of its tables): the defaults, its official code's values
    # (latent 128, width 16, lr 2e-5; AEHparams says where each comes from).
    presets = {"paper-nets": {}}

    def build(self, image_size: int) -> nn.ModuleDict:
        """Encoder and decoder of the first paper's official code."""
        return nn.ModuleDict(build_autoencoder(image_size, self.hp.latent_dim, self.hp.width))

    def optimizers(self, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        """One Adam over encoder and decoder."""
        hp = self.hp
        return {"ae": torch.optim.Adam(parameters(nets), lr=hp.lr, betas=(hp.beta1, hp.beta2))}

    def train_step(
        self, nets: nn.ModuleDict, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, float]:
        """One step on ``l2_recon(x, x')``: the batch mean of ``||x - x'||_2`` (the official code's loss)."""
        nets.train()
        _, xr = reconstruct(nets, x)
        recon = l2_recon(x, xr)
        opts["ae"].zero_grad(set_to_none=True)
        recon.backward()
        opts["ae"].step()
        return self.terms({"loss": recon, "recon": recon})

    @scoring
    def score(self, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        """Residual map, its slice mean, and the latent score ``||z - Enc(x')||``."""
        return score_reconstruction(nets, x)
