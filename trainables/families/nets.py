"""Shared building blocks: the small ResNet encoder/decoder of the first paper's official code.

Encoder: a 3x3 conv to ``width`` channels, then ``n`` down-sampling residual blocks (channels double
each block: 16 -> 32 -> 64 -> 128 -> 256 at the default width), then a linear layer to ``out_dim``.
The decoder mirrors it: a linear layer to the bottleneck, ``n`` up-sampling residual blocks halving
channels, and a 3x3 conv to one channel with a linear output (inputs are z-scored intensities with
background 0, so no squashing non-linearity).

The number of blocks adapts to the image side: ``n = max(4, log2(size) - 2)``, i.e. four blocks as in
the paper while that leaves a bottleneck of at least 2x2 (32 -> 2x2, 64 -> 4x4), more blocks for larger
images so the bottleneck stays 4x4 (128 -> 5 blocks, 4x4) and the linear layers stay small.

Normalisation is BatchNorm by default, or ``norm="group"`` / ``"none"``. A BatchNorm net
called twice before ``backward`` under DDP (``Enc(x)`` then ``Enc(x')``) works with torch 2.13 and gloo
(checked with 2 ranks); should a DDP build complain that running statistics were modified in place,
wrap with ``broadcast_buffers=False``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def n_blocks(image_size: int) -> int:
    """Number of down-/up-sampling blocks for a square image of side ``image_size`` (a power of 2, >= 16)."""
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image size must be a power of 2 and at least 16, got {image_size}")
    return max(4, int(math.log2(image_size)) - 2)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # 8 groups, or fewer for narrow layers
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'batch', 'group' or 'none'")


class ResBlock(nn.Module):
    """Pre-activation residual block that halves (``"down"``) or doubles (``"up"``) the spatial size."""

    def __init__(self, c_in: int, c_out: int, resample: str, norm: str = "batch") -> None:
        super().__init__()
        if resample == "down":
            first = nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
            self.skip = nn.Conv2d(c_in, c_out, 1, stride=2)
        elif resample == "up":
            first = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1))
            self.skip = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 1))
        else:
            raise ValueError(f"resample must be 'down' or 'up', got {resample!r}")
        self.body = nn.Sequential(
            _norm(norm, c_in),
            nn.ReLU(),
            first,
            _norm(norm, c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class Encoder(nn.Module):
    """(B,1,S,S) image -> (B,out_dim) vector (a latent code, or mean and log-variance stacked)."""

    def __init__(self, image_size: int, out_dim: int, width: int = 16, norm: str = "batch") -> None:
        super().__init__()
        n = n_blocks(image_size)
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResBlock(width << i, width << (i + 1), "down", norm) for i in range(n)))
        self.head = nn.Sequential(_norm(norm, width << n), nn.ReLU(), nn.Flatten())
        self.fc = nn.Linear((width << n) * (image_size >> n) ** 2, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.blocks(self.stem(x))))


class Decoder(nn.Module):
    """(B,latent_dim) code -> (B,1,S,S) image with a linear output; mirror of ``Encoder``."""

    def __init__(self, image_size: int, latent_dim: int, width: int = 16, norm: str = "batch") -> None:
        super().__init__()
        n = n_blocks(image_size)
        self.shape = (width << n, image_size >> n, image_size >> n)
        self.fc = nn.Linear(latent_dim, self.shape[0] * self.shape[1] * self.shape[2])
        self.blocks = nn.Sequential(*(ResBlock(width << i, width << (i - 1), "up", norm) for i in range(n, 0, -1)))
        self.out = nn.Sequential(_norm(norm, width), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.fc(z).view(-1, *self.shape)))
