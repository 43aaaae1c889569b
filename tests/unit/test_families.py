"""Every registered family: one training step, gradients, scoring shapes, learning, registry errors."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.families import Family, Scores, create_family, family_names
from trainables.families.registry import family_hparams

B, S = 4, 32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these nets are tiny, and on a small shared machine (2 cores, Ray trials
    alongside) two OpenMP threads measured 5x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _family(name: str, **params) -> Family:
    fast = {"lr": 1e-3} if "lr" in family_hparams(name) else {}  # families call their main learning rate `lr`
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


def _setup(name: str, size: int = S):
    torch.manual_seed(0)
    family = _family(name)
    nets = family.build(size)
    return family, nets, family.optimizers(nets)


@pytest.mark.parametrize("name", family_names())
def test_train_step_returns_finite_floats(name):
    family, nets, opts = _setup(name)
    out = family.train_step(nets, opts, smooth_images(B, S))
    assert "loss" in out
    for key, value in out.items():
        assert isinstance(value, float), key
        assert math.isfinite(value), key


@pytest.mark.parametrize("name", family_names())
def test_one_step_updates_every_parameter(name):
    family, nets, opts = _setup(name)
    if not family.trainable:
        pytest.skip(f"{name} has no learned weights")
    before = {k: p.detach().clone() for k, p in nets.named_parameters()}
    assert before, f"{name} built no parameters"
    family.train_step(nets, opts, smooth_images(B, S))
    for key, p in nets.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"non-finite gradient in {key}"
        assert torch.isfinite(p).all(), f"non-finite value in {key}"
        assert not torch.equal(p.detach(), before[key]), f"{key} did not change: no gradient reached it"


def _check_scores(scores: Scores, batch: int, size: int) -> None:
    assert scores.recon.shape == (batch, 1, size, size)
    assert scores.pixel_map.shape == (batch, 1, size, size)
    assert scores.slice_score.shape == (batch,)
    assert scores.latent_score is None or scores.latent_score.shape == (batch,)
    for t in (scores.recon, scores.pixel_map, scores.slice_score):
        assert not t.requires_grad
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("name", family_names())
def test_score_shapes_and_modes(name):
    family, nets, _ = _setup(name)
    nets.train()
    _check_scores(family.score(nets, smooth_images(B, S)), B, S)
    assert all(m.training for m in nets.modules()), "score must restore train mode"


@pytest.mark.parametrize("size", [64, 128])
def test_vae_larger_images(size):
    family, nets, opts = _setup("vae", size)
    x = smooth_images(2, size)
    assert math.isfinite(family.train_step(nets, opts, x)["loss"])
    _check_scores(family.score(nets, x), 2, size)


@pytest.mark.parametrize("name", family_names())
def test_training_lowers_reconstruction_error(name):
    family, nets, opts = _setup(name)
    if not family.trainable:
        pytest.skip(f"{name} has no learned weights")
    x = smooth_images(8, S, seed=1)

    def recon_error() -> float:
        return (family.score(nets, x).recon - x).square().mean().item()

    first = recon_error()
    for _ in range(150):
        family.train_step(nets, opts, x)
    last = recon_error()
    assert last < 0.5 * first, f"{name}: reconstruction MSE {first:.4f} -> {last:.4f}"


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="nosuchfamily") as err:
        create_family("nosuchfamily")
    assert "vae" in str(err.value)  # lists the known ones


def test_unknown_hyperparameter_is_named():
    with pytest.raises(ValueError, match="latnet_dim") as err:
        create_family("vae", {"latnet_dim": 64})
    assert "latent_dim" in str(err.value)  # lists the valid ones


def test_numbers_are_coerced_and_bad_types_rejected():
    family = create_family("vae", {"kl_weight": 2, "latent_dim": 64.0})
    assert isinstance(family.hp.kl_weight, float) and family.hp.kl_weight == 2.0
    assert isinstance(family.hp.latent_dim, int) and family.hp.latent_dim == 64
    with pytest.raises(ValueError, match="latent_dim"):
        create_family("vae", {"latent_dim": 64.5})
    with pytest.raises(ValueError, match="lr"):
        create_family("vae", {"lr": "fast"})


@pytest.mark.parametrize("name", family_names())
def test_defaults_round_trip(name):
    defaults = family_hparams(name)
    assert create_family(name, defaults).hp == create_family(name).hp
