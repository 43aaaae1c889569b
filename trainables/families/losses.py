"""Loss terms shared by families. Each returns a scalar tensor; weights are applied by the caller."""

from __future__ import annotations

import torch


def l2_recon(x: torch.Tensor, xr: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Batch mean of each image's L2 norm ``||x - xr||_2``, as in the first paper's official code.

    The norm (not its square, not a per-pixel mean) is what that code minimises; it grows with the
    image side, so weights on other terms are relative to it. ``eps`` keeps the sqrt differentiable at 0.
    """
    return torch.sqrt((x - xr).square().flatten(1).sum(1) + eps).mean()


def mse(x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element."""
    return (x - xr).square().mean()


def l1_recon(x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every element (the second paper's image reconstruction term)."""
    return (x - xr).abs().mean()


def latent_l2(z: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Batch mean of the squared latent distance ``||z - z2||^2`` (the constrained AAE's consistency term)."""
    return (z - z2).square().flatten(1).sum(1).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over latent dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp())).sum(1).mean()
