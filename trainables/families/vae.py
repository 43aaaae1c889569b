"""The first paper's VAE (Chen & Konukoglu, MIDL 2018): L2 reconstruction + KL, residual anomaly map."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.families.base import Family, Scores, parameters, scoring
from trainables.families.losses import kl_divergence, l2_recon
from trainables.families.nets import Decoder, Encoder
from trainables.families.registry import register_family


@dataclass
class VAEHparams:
    latent_dim: int = 128  # size of z; 128 in the first paper's official code
    width: int = 16  # channels after the stem conv, doubled per block; 16 in the official code
    kl_weight: float = 1.0  # weight of the KL term against the L2 reconstruction; 1 is the plain ELBO
    lr: float = 1e-4  # Adam learning rate; the official code uses 2e-5 (for its AAEs), 1e-4 trains faster
    beta1: float = 0.5  # Adam beta1; 0.5 in the official code
    beta2: float = 0.9  # Adam beta2; 0.9 in the official code


@register_family("vae")
class VAE(Family):
    """Encoder -> (mu, logvar), reparameterised z, decoder; anomaly map ``|x - Dec(mu)|``."""

    Hparams = VAEHparams

    def build(self, image_size: int) -> nn.ModuleDict:
        """Encoder emitting ``2 * latent_dim`` numbers (mu then logvar) and the mirrored decoder."""
        hp = self.hp
        return nn.ModuleDict(
            {
                "encoder": Encoder(image_size, 2 * hp.latent_dim, hp.width),
                "decoder": Decoder(image_size, hp.latent_dim, hp.width),
            }
        )

    def optimizers(self, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        """One Adam over encoder and decoder (Adam is per-parameter, so one or two optimisers are the same)."""
        hp = self.hp
        return {"ae": torch.optim.Adam(parameters(nets), lr=hp.lr, betas=(hp.beta1, hp.beta2))}

    def train_step(
        self, nets: nn.ModuleDict, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, float]:
        """One ELBO step: ``l2_recon(x, Dec(z)) + kl_weight * KL``, z sampled with the reparameterisation trick."""
        nets.train()
        mu, logvar = nets["encoder"](x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = l2_recon(x, nets["decoder"](z))
        kl = kl_divergence(mu, logvar)
        loss = recon + self.hp.kl_weight * kl
        opts["ae"].zero_grad(set_to_none=True)
        loss.backward()
        opts["ae"].step()
        return self.terms({"loss": loss, "recon": recon, "kl": kl})

    @scoring
    def score(self, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        """Deterministic reconstruction ``Dec(mu)``; the slice score is the map's mean over the whole slice.

        The brain mask is not passed to families, so the slice score includes background pixels
        (where both image and reconstruction are near 0); evaluation applies the mask to pixel metrics.
        """
        mu, _ = nets["encoder"](x).chunk(2, dim=1)
        recon = nets["decoder"](mu)
        pixel_map = (x - recon).abs()
        return Scores(recon=recon, pixel_map=pixel_map, slice_score=pixel_map.flatten(1).mean(1))
