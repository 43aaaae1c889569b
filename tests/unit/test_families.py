"""Every registered family: one training step, gradients, scoring shapes, learning, DDP, registry errors.

Tests parametrised over ``family_names()`` cover a new family without new code. Nets are shrunk (``FAST``)
so the file runs in well under a minute on 2 cores; family-specific tests follow the generic ones.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from pathlib import Path

import pytest
import torch
from family_kit import FAST, B, S, _family, _run, _setup, one_thread, smooth_images  # noqa: F401 (fixture)
from gloo_kit import join_group, leave_group, run_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainables.families import Scores, create_family, family_names
from trainables.families.losses import rank_energy
from trainables.families.registry import family_hparams


def _trainable(name: str) -> bool:
    return create_family(name).trainable


TRAINABLE = [n for n in family_names() if _trainable(n)]


@pytest.mark.parametrize("name", family_names())
def test_train_step_returns_finite_floats(name):
    family, nets, opts = _setup(name)
    out = family.train_step(nets, opts, smooth_images(B, S))
    assert "loss" in out
    for key, value in out.items():
        assert isinstance(value, float), key
        assert math.isfinite(value), key


@pytest.mark.parametrize("name", TRAINABLE)
def test_divergence_shows_in_returned_terms(name):
    """A non-finite batch must surface as a non-finite returned term: that is how the loop detects divergence."""
    family, nets, opts = _setup(name)
    x = smooth_images(B, S)
    x[0, 0, S // 2, S // 2] = float("nan")
    assert not all(math.isfinite(v) for v in family.train_step(nets, opts, x).values())


@pytest.mark.parametrize("name", TRAINABLE)
def test_one_step_updates_every_parameter(name):
    family, nets, opts = _setup(name)
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
    for t in (scores.recon, scores.pixel_map, scores.slice_score, scores.latent_score):
        assert t is None or not t.requires_grad
        assert t is None or torch.isfinite(t).all()


@pytest.mark.parametrize("name", family_names())
def test_score_shapes_and_modes(name):
    family, nets, _ = _setup(name)
    nets.train()
    _check_scores(family.score(nets, smooth_images(B, S)), B, S)
    assert all(m.training for m in nets.modules()), "score must restore train mode"


@pytest.mark.parametrize("name", family_names())
def test_larger_images(name):
    family, nets, opts = _setup(name, 64)
    x = smooth_images(B, 64)  # B = 4: the rank term needs rank_target (2) < batch - 1
    assert math.isfinite(family.train_step(nets, opts, x)["loss"])
    _check_scores(family.score(nets, x), B, 64)


@pytest.mark.parametrize("name", ["vae", "lran"])  # one ResNet and one DCGAN family at the largest size
def test_largest_images(name):
    family, nets, opts = _setup(name, 128)
    x = smooth_images(B, 128)
    assert math.isfinite(family.train_step(nets, opts, x)["loss"])
    _check_scores(family.score(nets, x), B, 128)


# Reconstruction MSE after / before 100 steps on 8 fixed images (``_lowers_reconstruction_error``), measured for
# seeds 0-5 (torch seed s for the weights, images of seed s + 1; the suite runs seed 0) with OMP_NUM_THREADS=1 on
# the 2-core machine (Intel); issue 24 saw caae's seeds 0-3 at 0.605, 0.172, 0.315, 0.132 on an AMD EPYC.
#   aae 0.165 0.062 0.084 0.072 0.077 0.073      ae 0.048 0.013 0.024 0.013 0.045 0.228
#   caae 0.483 0.582 0.164 0.178 0.315 0.146     dae 0.121 0.601 0.114 0.188 0.235 0.162
#   vae 0.053 0.084 0.044 0.060 0.080 0.076      lran, feature matching: 0.049 0.080 0.054 0.088 0.066 0.085
# Each bound keeps half of the smallest gain seen (1 - ratio), the AMD figure included: ratio < 1 - (1 - worst) / 2.
# LRAN with its published GAN term (w_a = 5, non-saturating BCE) is not here: its ratio was 0.80, 2.62, 2.67, 1.76,
# 1.51, 3.72, so in 100 small steps it neither lowers nor reliably raises the error; test_families_learn checks
# that LRAN learns to detect.
RECON_RATIO_BOUND = {"aae": 0.58, "ae": 0.61, "caae": 0.80, "dae": 0.80, "vae": 0.54, "lran-feature": 0.54}
RECON_CASES = [n for n in TRAINABLE if n != "lran"]


@pytest.mark.parametrize("name", RECON_CASES)
def test_training_lowers_reconstruction_error(name):
    _lowers_reconstruction_error(name, RECON_RATIO_BOUND.get(name, 0.5))  # 0.5: a new family, until measured


def test_lran_feature_matching_lowers_reconstruction_error():
    _lowers_reconstruction_error("lran", RECON_RATIO_BOUND["lran-feature"], adversarial="feature")


def _lowers_reconstruction_error(name: str, bound: float, **params) -> None:
    family, nets, opts = _setup(name, **params)
    x = smooth_images(8, S, seed=1)

    def recon_error() -> float:
        return (family.score(nets, x).recon - x).square().mean().item()

    first = recon_error()
    for _ in range(100):
        family.train_step(nets, opts, x)
    last = recon_error()
    assert last < bound * first, f"{name}: reconstruction MSE {first:.4f} -> {last:.4f} (bound x{bound})"


def test_caae_without_constraint_equals_aae():
    """lambda = 0 must be the AAE itself: same losses and same weights and buffers, bit for bit."""
    aae_losses, aae_state = _run("aae", 3)
    caae_losses, caae_state = _run("caae", 3, latent_weight=0.0)
    assert caae_losses == aae_losses
    assert aae_state.keys() == caae_state.keys()
    for key, value in aae_state.items():
        assert torch.equal(value, caae_state[key]), key


def test_caae_constraint_changes_training():
    losses, _ = _run("caae", 1, latent_weight=1.0)
    assert losses[0]["latent"] > 0
    assert losses[0]["loss"] != _run("aae", 1)[0][0]["loss"]


def test_consistency_pass_leaves_batchnorm_statistics_to_images():
    """Enc(x') runs in inference mode: after a step the running statistics are what Enc(x) alone gives."""
    family, nets, opts = _setup("caae", latent_weight=1.0)
    x = smooth_images(B, S)
    reference = copy.deepcopy(nets["encoder"])
    with torch.no_grad():
        reference(x)
    nets.train()
    family.autoencoder_step(nets, opts["ae"], x)
    expected, got = reference.state_dict(), nets["encoder"].state_dict()
    running = [k for k in expected if "running_" in k or "num_batches" in k]
    assert running and all(torch.allclose(expected[k], got[k]) for k in running)
    assert all(m.training for m in nets.modules()), "train mode restored after the pass"


def test_aae_warmup_runs_the_published_critic_steps_for_its_share_of_the_run():
    family = create_family("aae")
    assert (family.hp.warmup_critic_steps, family.hp.critic_steps) == (200, 20)
    counts = {}
    for epoch, epochs in ((0, 300), (19, 300), (20, 300), (0, 50), (2, 50), (3, 50), (0, 6), (1, 6)):
        family.set_epoch(epoch, epochs)
        counts[epoch, epochs] = family.critic_iterations()
    # the official 20 of 300 epochs; 3 of a 50-epoch run; at least one epoch of a short study trial
    assert counts == {(0, 300): 200, (19, 300): 200, (20, 300): 20, (0, 50): 200, (2, 50): 200, (3, 50): 20,
                      (0, 6): 200, (1, 6): 20}  # fmt: skip
    off = create_family("aae", {"warmup_share": 0.0})
    off.set_epoch(0, 300)
    assert off.critic_iterations() == 20


def effective_rank(z: torch.Tensor, rel_tol: float = 0.01) -> int:
    """Number of singular values of the centred batch ``z`` (B,D) above ``rel_tol`` times the largest."""
    s = torch.linalg.svdvals((z - z.mean(0, keepdim=True)).detach())
    return int((s > rel_tol * s[0]).sum())


def test_rank_term_lowers_effective_rank():
    """Optimising only the rank term on a random latent batch leaves about ``rank_target`` directions."""
    torch.manual_seed(0)
    z = torch.randn(32, 16, requires_grad=True)
    start = effective_rank(z)
    opt = torch.optim.Adam([z], lr=0.05)
    for _ in range(200):
        loss = rank_energy(z, 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # seeds 0-5, one and two threads: effective rank 2 and energy 3.9e-10 to 4.9e-10 every time
    assert start == 16
    assert effective_rank(z) <= 3
    assert rank_energy(z, 2).item() < 1e-3


def test_rank_term_ignores_scale_and_offset():
    z = torch.randn(16, 8)
    assert rank_energy(3 * z + 5, 2).item() == pytest.approx(rank_energy(z, 2).item(), rel=1e-4)
    assert rank_energy(z, 16).item() == 0.0  # rank at or above the batch's: no tail


def test_lran_latent_score_is_the_latent_residual():
    """The latent score is ``||E(x) - E2(G(E(x)))||`` per slice. (Whether it is larger for an image with a planted
    bright square after 40 steps held for seeds 0 and 1 of 0-5: differences 0.077, 0.018, -0.100, -0.121, -0.030,
    -0.039. Not a property of so short a training, so not asserted.)"""
    family, nets, opts = _setup("lran")
    for step in range(3):
        family.train_step(nets, opts, smooth_images(8, S, seed=100 + step))
    x = smooth_images(8, S, seed=2)
    scale = family.hp.input_scale
    with torch.no_grad():
        plain = nn.ModuleDict({k: copy.deepcopy(n).eval() for k, n in nets.items()})
        z = plain["encoder"](x / scale)
        expected = (z - plain["encoder2"](plain["decoder"](z))).norm(dim=1)
    assert torch.allclose(family.score(nets, x).latent_score, expected, atol=1e-5)


def test_lran_slice_score_choice():
    family, nets, _ = _setup("lran", slice_score="residual")
    x = smooth_images(B, S)
    scores = family.score(nets, x)
    assert torch.allclose(scores.slice_score, scores.pixel_map.flatten(1).mean(1))
    latent = _family("lran").score(nets, x)
    assert torch.equal(latent.slice_score, latent.latent_score)
    with pytest.raises(ValueError, match="slice_score"):
        create_family("lran", {"slice_score": "pixel"})


def test_threshold_map_is_the_image():
    family = create_family("threshold")
    x = smooth_images(B, S)
    scores = family.score(family.build(S), x)
    assert torch.equal(scores.pixel_map, x)
    assert torch.equal(scores.recon, torch.zeros_like(x))
    k = math.ceil(family.hp.top_fraction * S * S)
    assert torch.allclose(scores.slice_score, x.flatten(1).topk(k, dim=1).values.mean(1))
    assert family.optimizers(family.build(S)) == {}


def _ddp_worker(rank: int, world: int, store: str, out: str) -> None:
    """Two gloo ranks train every family for 2 steps on different batches, from different initial weights."""
    join_group(rank, world, store)
    weights = {}
    for name in family_names():
        torch.manual_seed(rank)  # DDP must broadcast rank 0's initial weights
        family = _family(name)
        nets = family.build(S)
        opts = family.optimizers(nets)
        # as trainables.train_loop._wrap_ddp: only nets with trainable parameters are wrapped
        wrap = {k: any(p.requires_grad for p in n.parameters()) for k, n in nets.items()}
        nets = nn.ModuleDict({k: DistributedDataParallel(n) if wrap[k] else n for k, n in nets.items()})
        for step in range(2):
            terms = family.train_step(nets, opts, smooth_images(B, S, seed=10 * rank + step))
            assert all(math.isfinite(v) for v in terms.values()), (name, terms)
        weights[name] = [p.detach().clone() for p in nets.parameters()]
    torch.save(weights, Path(out) / f"rank{rank}.pt")
    leave_group()


def test_families_under_ddp_keep_ranks_in_sync(tmp_path):
    """Each family's GAN/critic steps work with DDP wrappers, and the ranks end with identical weights."""
    run_ranks(_ddp_worker, (2, str(tmp_path / "store"), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0].keys() == set(family_names())
    for name, params in ranks[0].items():
        for p0, p1 in zip(params, ranks[1][name], strict=True):
            assert torch.equal(p0, p1), f"{name}: ranks diverged"


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


@pytest.mark.parametrize("name", family_names())
def test_hparams_document_their_defaults(name):
    """Each Hparams field carries a comment saying where its default comes from (see the family module)."""
    hparams = type(create_family(name)).Hparams
    source = "\n".join(inspect.getsource(c) for c in hparams.__mro__ if dataclasses.is_dataclass(c))
    for field in family_hparams(name):
        line = next((ln for ln in source.splitlines() if ln.strip().startswith(f"{field}:")), None)
        assert line is not None and "#" in line, f"{name}.{field} has no comment"
