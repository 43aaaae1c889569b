"""The first paper's VAE (Chen & Konukoglu, MIDL 2018): Gaussian likelihood + KL, residual anomaly map.

The objective is the negative ELBO with a unit-variance Gaussian decoder: ``1/2 ||x - x'||^2`` per image
(squared, summed over pixels) plus ``KL(q(z|x) || N(0, I))`` summed over latent dimensions, both averaged
over the batch; ``kl_weight = 1`` is that ELBO. (An unsquared per-image norm against a summed KL, as an
earlier version had, under-weights reconstruction and pushes the posterior to collapse.)

Departures, each with its reason:
- the encoder's log-variance is clamped to ``[-logvar_clamp, logvar_clamp]`` before ``exp``: an unbounded
  value overflows to inf/NaN early in training; 10 allows standard deviations from 0.007 to 148, far wider
  than a trained posterior needs, so the bound only acts on runaway values;
- nets and optimiser as the first paper's official code (ResNet encoder/decoder of width 16, latent 128,
  Adam lr 2e-5, betas (0.5, 0.9)): the official code publishes these for its AAEs; the paper trains every
  model alike, so the VAE takes the same;
- the anomaly map uses the deterministic reconstruction ``Dec(mu)`` (no sampling at test time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.families.base import Family, Scores, parameters, scoring
from trainables.families.losses import gaussian_recon, kl_divergence
from trainables.families.nets import Decoder, Encoder
from trainables.families.registry import register_family


@dataclass
class VAEHparams:
    latent_dim: int = 128  # size of z; 128 in the first paper's official code
    width: int = 16  # channels after the stem conv, doubled per block; 16 in the official code
    kl_weight: float = 1.0  # weight of the KL term against 1/2 ||x - x'||^2; 1 is the ELBO (unit-variance decoder)
    logvar_clamp: float = 10.0  # |log-variance| bound before exp (overflow guard; see module doc)
    lr: float = 2e-5  # Adam learning rate; 2e-5 in the official code (its models share it)
    beta1: float = 0.5  # Adam beta1; 0.5 in the official code
    beta2: float = 0.9  # Adam beta2; 0.9 in the official code


@register_family("vae")
class VAE(Family):
    """Encoder -> (mu, logvar), reparameterised z, decoder; anomaly map ``|x - Dec(mu)|``."""

    Hparams = VAEHparams
    # The first paper's (Chen & Konukoglu, MIDL 2018) VAE, Table 1: every default is its official code's value
    # (latent 128, width 16, lr 2e-5, Adam betas 0.5/0.9; VAEHparams says where each comes from).
    presets = {"paper": {}}

    def __init__(self, hparams: VAEHparams) -> None:
        super().__init__(hparams)
        if not hparams.logvar_clamp > 0 or hparams.kl_weight < 0:
            raise ValueError(f"vae: logvar_clamp must be > 0 and kl_weight >= 0, got {hparams}")

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

    def posterior(self, nets: nn.ModuleDict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z|x), the log-variance clamped."""
        mu, logvar = nets["encoder"](x).chunk(2, dim=1)
        bound = self.hp.logvar_clamp
        return mu, logvar.clamp(-bound, bound)

    def train_step(
        self, nets: nn.ModuleDict, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, float]:
        """One step on ``1/2 ||x - Dec(z)||^2 + kl_weight * KL``, z sampled with the reparameterisation trick."""
        nets.train()
        mu, logvar = self.posterior(nets, x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = gaussian_recon(x, nets["decoder"](z))
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
        mu, _ = self.posterior(nets, x)
        recon = nets["decoder"](mu)
        pixel_map = (x - recon).abs()
        return Scores(recon=recon, pixel_map=pixel_map, slice_score=pixel_map.flatten(1).mean(1))
