"""Plain auto-encoder baseline: the first paper's ResNet encoder/decoder and L2 reconstruction, nothing adversarial.

With ``latent_weight > 0`` it adds the constrained AAE's latent consistency term ``||z - Enc(Dec(z))||^2``
without the critic, so a study can tell what the adversarial prior adds on top of each part.
The helpers ``reconstruction_terms`` and ``score_reconstruction`` are shared with the (constrained) AAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.families.base import Family, Scores, eval_mode, parameters, scoring
from trainables.families.losses import l2_recon, latent_l2
from trainables.families.nets import Decoder, Encoder
from trainables.families.registry import register_family


@dataclass
class AEHparams:
    latent_dim: int = 128  # size of z; 128 in the first paper's official code
    width: int = 16  # channels after the stem conv, doubled per block; 16 in the official code
    latent_weight: float = 0.0  # lambda of ||z - Enc(Dec(z))||^2; 0: plain AE (the constrained AAE used 0.5, 1.0)
    lr: float = 2e-5  # Adam learning rate; 2e-5 in the official code (its models share it)
    beta1: float = 0.5  # Adam beta1; 0.5 in the official code
    beta2: float = 0.9  # Adam beta2; 0.9 in the official code


def build_autoencoder(image_size: int, latent_dim: int, width: int) -> dict[str, nn.Module]:
    """The first paper's deterministic ResNet encoder (image -> z) and decoder (z -> image)."""
    return {"encoder": Encoder(image_size, latent_dim, width), "decoder": Decoder(image_size, latent_dim, width)}


def reconstruction_terms(
    nets: nn.ModuleDict, x: torch.Tensor, latent_weight: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``z = Enc(x)`` and the loss terms ``recon`` (batch mean of ``||x - Dec(z)||_2``, the official code's
    reconstruction loss) and, if ``latent_weight > 0``, ``latent`` (batch mean of ``||z - Enc(Dec(z))||^2``).

    The consistency pass ``Enc(x')`` runs in inference mode, as in the official code: its BatchNorm layers
    normalise with their running statistics and leave them untouched (a reconstruction's statistics,
    blurrier and lower in contrast early on, would otherwise leak into what eval mode uses). The gradient
    flows through both passes, as in the official code. The pass is skipped at weight 0 rather than
    multiplied by 0, so ``latent_weight = 0`` is exactly the model without the term.
    """
    z = nets["encoder"](x)
    xr = nets["decoder"](z)
    terms = {"recon": l2_recon(x, xr)}
    if latent_weight > 0:
        with eval_mode(nets["encoder"]):
            terms["latent"] = latent_l2(z, nets["encoder"](xr))
    return z, terms


def reconstruction_loss(terms: dict[str, torch.Tensor], latent_weight: float) -> torch.Tensor:
    """``recon + latent_weight * latent`` (the latent term only where it was computed)."""
    loss = terms["recon"]
    return loss + latent_weight * terms["latent"] if "latent" in terms else loss


def score_reconstruction(nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
    """Scores of a deterministic auto-encoder: map ``|x - x'|``, slice score its mean over the slice,
    latent score ``||z - Enc(x')||`` with ``z = Enc(x)``, ``x' = Dec(z)``. Call inside ``@scoring``.

    The brain mask is not passed to families, so the slice mean includes background pixels (where image
    and reconstruction are both near 0); evaluation applies the mask to the pixel metrics.
    """
    z = nets["encoder"](x)
    recon = nets["decoder"](z)
    pixel_map = (x - recon).abs()
    latent = (z - nets["encoder"](recon)).norm(dim=1)
    return Scores(recon=recon, pixel_map=pixel_map, slice_score=pixel_map.flatten(1).mean(1), latent_score=latent)


@register_family("ae")
class AE(Family):
    """Deterministic ResNet auto-encoder; optional latent consistency; anomaly map ``|x - Dec(Enc(x))|``."""

    Hparams = AEHparams

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
        """One step on ``l2_recon(x, x') + latent_weight * ||z - Enc(x')||^2``."""
        nets.train()
        _, terms = reconstruction_terms(nets, x, self.hp.latent_weight)
        loss = reconstruction_loss(terms, self.hp.latent_weight)
        opts["ae"].zero_grad(set_to_none=True)
        loss.backward()
        opts["ae"].step()
        return self.terms({"loss": loss, **terms})

    @scoring
    def score(self, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        """Residual map, its slice mean, and the latent score ``||z - Enc(x')||``."""
        return score_reconstruction(nets, x)
