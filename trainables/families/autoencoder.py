"""The first paper's deterministic ResNet auto-encoder, shared by the plain AE and the (constrained) AAE: its
nets, its forward pass and its scores. Each family's objective stays in its own module (ae.py, aae.py, caae.py).
"""

from __future__ import annotations

import torch
from torch import nn

from trainables.families.base import Scores
from trainables.families.nets import Decoder, Encoder


def build_autoencoder(image_size: int, latent_dim: int, width: int) -> dict[str, nn.Module]:
    """The first paper's deterministic ResNet encoder (image -> z) and decoder (z -> image)."""
    return {"encoder": Encoder(image_size, latent_dim, width), "decoder": Decoder(image_size, latent_dim, width)}


def reconstruct(nets: nn.ModuleDict, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, x')`` with ``z = Enc(x)`` and ``x' = Dec(z)``, in the nets' current mode and grad setting."""
    z = nets["encoder"](x)
    return z, nets["decoder"](z)


def score_reconstruction(nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
    """Scores of a deterministic auto-encoder: map ``|x - x'|``, slice score its mean over the slice,
    latent score ``||z - Enc(x')||`` with ``z = Enc(x)``, ``x' = Dec(z)``. Call inside ``@scoring``.

    The brain mask is not passed to families, so the slice mean includes background pixels (where image
    and reconstruction are both near 0); evaluation applies the mask to the pixel metrics.
    """
    z, recon = reconstruct(nets, x)
    pixel_map = (x - recon).abs()
    latent = (z - nets["encoder"](recon)).norm(dim=1)
    return Scores(recon=recon, pixel_map=pixel_map, slice_score=pixel_map.flatten(1).mean(1), latent_score=latent)
