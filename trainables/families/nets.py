"""Shared building blocks: the small ResNet encoder/decoder of the first paper's official code, its latent
critic, and the DCGAN-style encoder/decoder/discriminator of the second paper (at the end of the file).

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


class Critic(nn.Module):
    """WGAN critic on latent codes: an MLP ``latent_dim -> 200 -> 400 -> 1`` with leaky ReLUs, as in the
    first paper's official code. No normalisation layer: the gradient penalty is defined per sample,
    which batch statistics would break (Gulrajani et al. 2017)."""

    def __init__(self, latent_dim: int, hidden: tuple[int, int] = (200, 400), slope: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden[0]),
            nn.LeakyReLU(slope),
            nn.Linear(hidden[0], hidden[1]),
            nn.LeakyReLU(slope),
            nn.Linear(hidden[1], 1, bias=False),  # a WGAN loss and its penalty are blind to an output offset
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).squeeze(1)


# DCGAN-style nets (Radford et al. 2016) as used by GANomaly and the second paper: strided 4x4 convs,
# BatchNorm (not on the first conv), leaky ReLU in encoders/discriminator, transposed convs and ReLU in
# the decoder, tanh output; weights drawn from N(0, 0.02) (BatchNorm scales from N(1, 0.02)).


def dcgan_stages(image_size: int) -> int:
    """Stride-2 stages between a square image of side ``image_size`` (power of 2, >= 16) and a 4x4 map."""
    if image_size < 16 or image_size & (image_size - 1):
        raise ValueError(f"image size must be a power of 2 and at least 16, got {image_size}")
    return int(math.log2(image_size)) - 2


def _dcgan_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def _dcgan_trunk(image_size: int, channels: int) -> tuple[nn.Sequential, int]:
    """Convs from (B,1,S,S) down to (B,C,4,4), doubling channels per stage; returns the trunk and C."""
    layers: list[nn.Module] = [nn.Conv2d(1, channels, 4, 2, 1, bias=False), nn.LeakyReLU(0.2)]
    c = channels
    for _ in range(dcgan_stages(image_size) - 1):
        layers += [nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * c), nn.LeakyReLU(0.2)]
        c *= 2
    return nn.Sequential(*layers), c


class DCGANEncoder(nn.Module):
    """(B,1,S,S) image in about [-1, 1] -> (B,out_dim) code: the DCGAN trunk, then a 4x4 valid conv."""

    def __init__(self, image_size: int, out_dim: int, channels: int = 64) -> None:
        super().__init__()
        self.features, c = _dcgan_trunk(image_size, channels)
        self.head = nn.Conv2d(c, out_dim, 4, 1, 0, bias=False)
        self.apply(_dcgan_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).flatten(1)


class DCGANDiscriminator(DCGANEncoder):
    """DCGAN image discriminator: returns ``(logits (B,), features (B,C,4,4))`` from one forward, so a
    feature-matching loss and the real/fake logits never need a second call."""

    def __init__(self, image_size: int, channels: int = 64) -> None:
        super().__init__(image_size, 1, channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        features = self.features(x)
        return self.head(features).flatten(), features


class DCGANDecoder(nn.Module):
    """(B,latent_dim) code -> (B,1,S,S) image in (-1, 1): transposed convs halving channels, BN, ReLU, tanh."""

    def __init__(self, image_size: int, latent_dim: int, channels: int = 64) -> None:
        super().__init__()
        n = dcgan_stages(image_size)
        c = channels << (n - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(latent_dim, c, 4, 1, 0, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU()]
            c //= 2
        layers += [nn.ConvTranspose2d(c, 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.apply(_dcgan_init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])
