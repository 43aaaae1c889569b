"""Coarse-noise denoising auto-encoder (Kascenas, Pugeault & O'Neil, MIDL 2022, PMLR 172:653-664).

A U-Net with skip connections and no bottleneck learns to remove *coarse* noise from healthy slices: Gaussian
noise drawn on a low-resolution grid, upsampled to the slice and added inside the brain only. Fine healthy
detail passes through the skips, so it is reproduced faithfully; a lesion looks to the network like a
large-scale intensity error of the kind it was trained to remove, so it is "denoised away" and shows in the
residual ``x - x'``.

Settings and where they come from (the authors' public code, github.com/AntanasKascenas/DenoisingAE, file
src/denoising.py, read at commit 072c51d; the paper's text itself was not available to us, so where the
code's function defaults and its command-line run differ we follow the run that produced the paper's model):
- noise drawn at 16 x 16 for 128 x 128 slices (``noise_res=16``), std 0.2, bilinear upsampling, randomly
  translated, multiplied by the foreground mask (image > 0.01 there; here image != 0, since preprocessing
  sets the background to exactly 0);
- loss: squared error to the clean slice inside the foreground, averaged over all pixels;
- U-Net: depth 4, 2**6 = 64 channels in the first level, doubling per level, GroupNorm, swish (SiLU),
  average-pool down-sampling, transposed-convolution up-sampling, reflection padding, a 1x1 output conv;
- Adam, lr 1e-4, amsgrad, weight decay 1e-5, batch 16 (its run; the function defaults say lr 1e-3, 2**7 channels);
- scoring: ``|x - x'|`` inside the foreground eroded by a 5 x 5 window, then a 5 x 5 median filter.
Intensity scale: that code divides each volume by the 99th percentile of its brain voxels, ours z-scores
inside the brain. On the default synthetic T2 cohort the brain's standard deviation on the 99th-percentile
scale is 0.14 (measured on 6 healthy subjects: 0.136-0.151), so the paper's std 0.2 is 1.4 of our units:
``noise_std`` is in our units and defaults to 1.4 (a conversion of the paper's value, not its number). As in
that code, ``std`` is the lattice's: bilinear interpolation lowers the pixels' std (about 0.68 of it).
- the learning rate follows a cosine from ``lr`` towards 0 over the run (the authors' run anneals it); here it
  is set per epoch from ``Family.set_epoch``'s epoch and budget (``lr_schedule="constant"`` turns it off).
Departures, each a choice: plain convolutions instead of weight-standardised ones; the cosine steps once an
epoch, not once a batch (the family sees epochs, not the loader's length); the 5 x 5 windows and the noise
grid scale with the slice side (a 16-cell grid per 128 pixels is 4 cells at 32 x 32), so one setting means
the same physical coarseness at every ``image_size``; the translation is a random sub-cell offset of a grid
one cell larger, not a circular roll (a roll puts a seam into the field). ``noise_mode="fourier"`` draws a
band-limited field instead (no energy above the grid's Nyquist frequency), for studying the noise's spectrum.
``residual`` chooses the map's sign: ``abs`` (the paper), ``bright`` (``x - x'``: brighter than the network
expects) or ``dark`` (``x' - x``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.families.base import Family, Scores, scoring
from trainables.families.registry import register_family

REFERENCE_SIZE = 128  # the slice side the paper's noise grid and windows are given for
RESIDUALS = ("abs", "bright", "dark")
NOISE_MODES = ("bilinear", "fourier")
LR_SCHEDULES = ("cosine", "constant")


@dataclass
class DAEHparams:
    channels: int = 64  # U-Net channels in the first level, doubled per level; 2**6 in the authors' run
    depth: int = 4  # U-Net levels (3 poolings); 4 in the authors' code
    noise_res: int = 16  # coarse noise grid side per 128 slice pixels; 16 at 128x128 in the authors' code
    noise_std: float = 1.4  # noise std in z-score units: the paper's 0.2 on its 99th-percentile scale, converted
    noise_mode: str = "bilinear"  # upsampling of the coarse grid: bilinear (the paper) or fourier (band-limited)
    lr: float = 1e-4  # Adam learning rate; 1e-4 in the authors' run
    lr_schedule: str = "cosine"  # "cosine": lr * (1 + cos(pi * epoch / epochs)) / 2 over the run; or "constant"
    weight_decay: float = 1e-5  # Adam weight decay; 1e-5 in the authors' code (with amsgrad)
    residual: str = "abs"  # map sign: abs |x - x'| (the paper), bright (x - x') or dark (x' - x)
    median_kernel: int = 5  # median filter and erosion window at 128 px (5 in the authors' code), scaled


def scaled_window(kernel: int, size: int) -> int:
    """A window of ``kernel`` pixels at 128 px, scaled to a slice of side ``size``: the nearest odd integer >= 1."""
    k = max(1, round(kernel * size / REFERENCE_SIZE))
    return k if k % 2 else k + 1


def noise_grid(noise_res: int, size: int) -> int:
    """Coarse grid side for a slice of side ``size``: ``noise_res`` cells per 128 pixels, at least 1."""
    return max(1, round(noise_res * size / REFERENCE_SIZE))


def coarse_noise(
    shape: tuple[int, int, int, int], grid: int, std: float, mode: str = "bilinear", generator=None, device=None
) -> torch.Tensor:
    """Gaussian noise (B,C,H,W) with H == W, drawn on a ``grid x grid`` lattice and upsampled smoothly.

    ``bilinear``: i.i.d. N(0, std^2) values on a lattice one cell larger than the slice, bilinearly upsampled
    and cut at a random sub-cell offset (so the lattice does not sit at fixed pixels); its spectrum is that of
    the lattice times the bilinear kernel's (sinc^2): nearly all energy below the lattice's frequency.
    ``fourier``: a periodic field whose Fourier coefficients are zero above the lattice's Nyquist frequency
    (``grid // 2`` cycles per slice) and whose pixels have std ``std``.
    """
    b, c, h, w = shape
    if h != w:
        raise ValueError(f"coarse_noise: square slices only, got {h}x{w}")
    if mode == "fourier":
        white = torch.randn(b, c, h, w, generator=generator, device=device)
        spectrum = torch.fft.fft2(white)
        freq = torch.fft.fftfreq(h, device=device).abs() * h  # cycles per slice
        keep = (freq[:, None] <= grid // 2) & (freq[None, :] <= grid // 2)
        field = torch.fft.ifft2(spectrum * keep).real
        return field * (std / field.flatten(2).std(dim=2).clamp_min(1e-12)[..., None, None])
    if mode != "bilinear":
        raise ValueError(f"coarse_noise: mode must be one of {NOISE_MODES}, got {mode!r}")
    cell = h / grid
    lattice = torch.randn(b, c, grid + 2, grid + 2, generator=generator, device=device) * std
    side = int(math.ceil((grid + 1) * cell)) + 1
    field = F.interpolate(lattice, size=(side, side), mode="bilinear", align_corners=True)
    dx, dy = (int(v) for v in torch.randint(0, max(1, int(cell)), (2,), generator=generator))
    return field[..., dy : dy + h, dx : dx + w]


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


class _Block(nn.Sequential):
    """Two 3x3 convolutions (reflection padding), each followed by GroupNorm and SiLU (swish)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        layers: list[nn.Module] = []
        for c in (c_in, c_out):
            layers += [nn.Conv2d(c, c_out, 3, padding=1, padding_mode="reflect"), nn.GroupNorm(_groups(c_out), c_out)]
            layers.append(nn.SiLU())
        super().__init__(*layers)


class UNet(nn.Module):
    """U-Net with skip connections at every level: no bottleneck, so fine detail passes straight through."""

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        widths = [channels * 2**i for i in range(depth)]
        self.down = nn.ModuleList(_Block(c_in, c) for c_in, c in zip([1, *widths[:-1]], widths, strict=True))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(depth - 1))
        self.merge = nn.ModuleList(_Block(2 * widths[i], widths[i]) for i in range(depth - 1))
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.avg_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        return self.out(x)


def median_filter(maps: torch.Tensor, k: int) -> torch.Tensor:
    """``k x k`` median of (B,1,H,W) maps (zero padding, as outside the brain the map is 0)."""
    if k <= 1:
        return maps
    patches = F.unfold(maps, k, padding=k // 2)  # (B, k*k, H*W)
    return patches.median(dim=1).values.view_as(maps)


@register_family("dae")
class DAE(Family):
    """U-Net trained to remove coarse noise from healthy slices; anomaly map the (post-processed) residual."""

    Hparams = DAEHparams
    # Kascenas et al. (MIDL 2022), the authors' run: the defaults (U-Net 64 channels, depth 4; coarse noise 16 at
    # 128 px, std 1.4 in z-score units; lr 1e-4, cosine; DAEHparams says where each comes from).
    presets = {"kascenas-2022": {}}

    def __init__(self, hparams: DAEHparams) -> None:
        super().__init__(hparams)
        checks = {
            "residual": hparams.residual in RESIDUALS,
            "noise_mode": hparams.noise_mode in NOISE_MODES,
            "lr_schedule": hparams.lr_schedule in LR_SCHEDULES,
            "depth": hparams.depth >= 1,
            "channels": hparams.channels >= 1,
            "noise_res": hparams.noise_res >= 1,
            "noise_std": hparams.noise_std >= 0,
            "median_kernel": hparams.median_kernel >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"dae: invalid hyperparameter {bad[0]}={getattr(hparams, bad[0])!r}")

    def build(self, image_size: int) -> nn.ModuleDict:
        """The U-Net; ``image_size`` must be divisible by 2**(depth-1)."""
        if image_size % 2 ** (self.hp.depth - 1):
            step = 2 ** (self.hp.depth - 1)
            raise ValueError(f"dae: image size {image_size} is not divisible by 2**(depth-1) = {step}")
        return nn.ModuleDict({"unet": UNet(self.hp.channels, self.hp.depth)})

    def optimizers(self, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        """Adam with amsgrad and a small weight decay, as the authors' code."""
        params = nets["unet"].parameters()
        return {"unet": torch.optim.Adam(params, lr=self.hp.lr, weight_decay=self.hp.weight_decay, amsgrad=True)}

    def epoch_lr(self) -> float:
        """This epoch's learning rate: ``lr`` annealed on a half cosine over the run's epochs, or constant."""
        if self.hp.lr_schedule == "constant":
            return self.hp.lr
        return self.hp.lr * (1 + math.cos(math.pi * self.epoch / max(self.epochs, 1))) / 2

    def noisy(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus coarse noise inside the brain (``x != 0``: preprocessing zeroes the background)."""
        grid = noise_grid(self.hp.noise_res, x.shape[-1])
        noise = coarse_noise(tuple(x.shape), grid, self.hp.noise_std, self.hp.noise_mode, device=x.device)
        return x + noise * (x != 0)

    def train_step(
        self, nets: nn.ModuleDict, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, float]:
        """One step of masked squared error between the U-Net's output on the noisy slice and the clean slice."""
        nets.train()
        for group in opts["unet"].param_groups:
            group["lr"] = self.epoch_lr()
        out = nets["unet"](self.noisy(x))
        loss = ((out - x).square() * (x != 0)).mean()
        opts["unet"].zero_grad(set_to_none=True)
        loss.backward()
        opts["unet"].step()
        return self.terms({"loss": loss})

    @scoring
    def score(self, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        """Residual of the clean slice (sign per ``residual``) in the eroded brain, median-filtered; slice mean."""
        recon = nets["unet"](x)
        residual = {"abs": (x - recon).abs(), "bright": x - recon, "dark": recon - x}[self.hp.residual]
        k = scaled_window(self.hp.median_kernel, x.shape[-1])
        brain = (x != 0).to(x.dtype)
        inner = F.avg_pool2d(brain, k, stride=1, padding=k // 2, count_include_pad=True) > 0.95 if k > 1 else brain > 0
        pixel_map = median_filter(residual * inner, k)
        return Scores(recon=recon, pixel_map=pixel_map, slice_score=pixel_map.flatten(1).mean(1))
