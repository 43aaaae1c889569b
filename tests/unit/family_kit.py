"""Shared by the family test files: shrunken settings (``FAST``), the one-thread fixture, a family and its nets
built from them, and smooth synthetic images. Imported by name (pytest puts tests/unit on sys.path)."""

from __future__ import annotations

import pytest
import torch

from trainables.families import Family, create_family
from trainables.families.registry import family_hparams

B, S = 4, 32
# Smaller nets, fewer critic steps and no critic warm-up than the papers', where a family has the field: same
# code paths, a fraction of the time. `lr` is raised so a few dozen steps show learning; the rank target fits
# the tiny batches (it must stay below batch - 1).
FAST = {"lr": 1e-3, "width": 8, "latent_dim": 32, "channels": 16, "critic_steps": 5, "warmup_share": 0.0}
FAST["rank_target"] = 2
# dae: a 2-level U-Net, and noise on the scale of these smooth test images (the product's 1.4 is in z-units of
# real brains); measured reconstruction MSE 0.46 -> 0.06 in 100 steps (depth 3 at noise 1.4: 0.19 -> 0.14)
FAST.update({"depth": 2, "noise_std": 0.5})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these nets are tiny, and on a small shared machine (2 cores, Ray trials
    alongside) two OpenMP threads measured 5x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _family(name: str, **params) -> Family:
    fast = {k: v for k, v in FAST.items() if k in family_hparams(name)}
    return create_family(name, {**fast, **params})


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n,1,size,size) sums of random Gaussian blobs inside a disc, background 0, brain roughly unit scale."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = (xx**2 + yy**2 < 0.8).float()
    centres = torch.rand(n, 3, 2, generator=g) * 1.2 - 0.6
    widths = torch.rand(n, 3, 1, 1, generator=g) * 0.3 + 0.15
    amps = torch.rand(n, 3, 1, 1, generator=g) * 2 - 1
    d2 = (xx - centres[..., 0, None, None]) ** 2 + (yy - centres[..., 1, None, None]) ** 2
    blobs = (amps * torch.exp(-d2 / (2 * widths**2))).sum(1)
    return ((blobs + 0.5) * disc).unsqueeze(1)


def _setup(name: str, size: int = S, **params):
    torch.manual_seed(0)
    family = _family(name, **params)
    nets = family.build(size)
    return family, nets, family.optimizers(nets)


def _run(name: str, steps: int, **params) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    family, nets, opts = _setup(name, **params)
    losses = [family.train_step(nets, opts, smooth_images(B, S, seed=step)) for step in range(steps)]
    return losses, nets.state_dict()
