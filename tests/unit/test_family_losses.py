"""Each family's loss terms pinned against hand computations on a tiny batch, which nets each phase updates,
and the rank term under DDP (the same on one worker with the whole batch as on two with half each)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from family_kit import B, S, _run, _setup, one_thread, smooth_images  # noqa: F401 (one_thread: autouse fixture)
from gloo_kit import join_group, leave_group, run_ranks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainables.families.aae import critic_step
from trainables.families.losses import gather_batch, rank_energy

# Loss terms pinned against hand computations on a tiny batch: each recomputes the step's terms with plain
# tensor arithmetic on a copy of the nets taken before the step (same modes, same random draws).


def test_vae_loss_is_half_squared_error_plus_kl_by_hand():
    family, nets, opts = _setup("vae")
    x = smooth_images(B, S)
    hand = copy.deepcopy(nets)
    torch.manual_seed(7)
    out = family.train_step(nets, opts, x)
    torch.manual_seed(7)
    with torch.no_grad():
        code = hand["encoder"](x).double()
        mu, logvar = code[:, :32], code[:, 32:]
        z = mu + torch.randn_like(mu.float()).double() * torch.exp(logvar / 2)
        xr = hand["decoder"](z.float()).double()
    xd = x.double()
    recon = sum(0.5 * ((xd[i] - xr[i]) ** 2).sum().item() for i in range(B)) / B
    kl = sum(0.5 * (mu[i] ** 2 + logvar[i].exp() - 1 - logvar[i]).sum().item() for i in range(B)) / B
    assert out["recon"] == pytest.approx(recon, rel=1e-4)
    assert out["kl"] == pytest.approx(kl, rel=1e-4)
    assert out["loss"] == pytest.approx(recon + kl, rel=1e-4)  # kl_weight 1: the ELBO


def test_vae_logvar_is_clamped():
    family, nets, opts = _setup("vae")
    with torch.no_grad():
        nets["encoder"].fc.bias[32:] = 1e4  # exp(1e4 / 2) overflows without the clamp
    x = smooth_images(B, S)
    assert all(math.isfinite(v) for v in family.train_step(nets, opts, x).values())
    _, logvar = family.posterior(nets, x)
    assert logvar.max().item() == pytest.approx(family.hp.logvar_clamp)


def _snapshot(nets: nn.ModuleDict) -> dict[str, list[torch.Tensor]]:
    return {k: [p.detach().clone() for p in n.parameters()] for k, n in nets.items()}


def _changed(before: dict[str, list[torch.Tensor]], nets: nn.ModuleDict) -> set[str]:
    return {
        k for k, n in nets.items() if any(not torch.equal(a, p) for a, p in zip(before[k], n.parameters(), strict=True))
    }


def test_aae_phases_each_update_only_their_nets():
    """Auto-encoder step: encoder and decoder; critic steps: the critic; generator step: the encoder only."""
    family, nets, opts = _setup("caae", latent_weight=1.0)
    x = smooth_images(B, S)
    nets.train()
    assert {k: {id(p) for g in o.param_groups for p in g["params"]} for k, o in opts.items()} == {
        "ae": {id(p) for k in ("encoder", "decoder") for p in nets[k].parameters()},
        "critic": {id(p) for p in nets["critic"].parameters()},
        "gen": {id(p) for p in nets["encoder"].parameters()},
    }
    for phase, opt, nets_changed in (
        (family.autoencoder_step, opts["ae"], {"encoder", "decoder"}),
        (family.critic_phase, opts["critic"], {"critic"}),
        (family.generator_step, opts["gen"], {"encoder"}),
    ):
        before = _snapshot(nets)
        phase(nets, opt, x)
        assert _changed(before, nets) == nets_changed, phase.__name__


def test_caae_autoencoder_terms_by_hand():
    """recon: batch mean of ||x - x'||_2; latent: batch mean of ||z - Enc(x')||^2, Enc(x') in inference mode."""
    family, nets, opts = _setup("caae", latent_weight=0.5)
    x = smooth_images(B, S)
    hand = copy.deepcopy(nets)
    nets.train()
    out = family.autoencoder_step(nets, opts["ae"], x)
    hand.train()
    with torch.no_grad():
        z = hand["encoder"](x)  # train mode: batch statistics (and it moves the running ones, as the step does)
        xr = hand["decoder"](z)
        hand["encoder"].eval()
        z2 = hand["encoder"](xr)
    recon = sum(((x[i] - xr[i]) ** 2).sum().sqrt().item() for i in range(B)) / B
    latent = sum(((z[i] - z2[i]) ** 2).sum().item() for i in range(B)) / B
    assert out["recon"] == pytest.approx(recon, rel=1e-4)
    assert out["latent"] == pytest.approx(latent, rel=1e-4)
    assert out["loss"] == pytest.approx(recon + 0.5 * latent, rel=1e-4)


def test_aae_critic_and_generator_terms_by_hand():
    family, nets, opts = _setup("aae")
    x = smooth_images(B, S)
    hand = copy.deepcopy(nets)
    z_real, z_fake = torch.randn(B, 32), torch.randn(B, 32) + 1.0
    torch.manual_seed(3)
    out = critic_step(nets, opts["critic"], z_real, z_fake, gp_weight=10.0)
    torch.manual_seed(3)
    mix = torch.rand(B, 1)
    norms = []
    for i in range(B):
        point = (mix[i] * z_real[i] + (1 - mix[i]) * z_fake[i]).requires_grad_(True)
        (grad,) = torch.autograd.grad(hand["critic"](point[None]).sum(), point)
        norms.append(grad.norm().item())
    with torch.no_grad():
        wdist = hand["critic"](z_real).mean().item() - hand["critic"](z_fake).mean().item()
    gp = sum((n - 1) ** 2 for n in norms) / B
    assert out["wdist"].item() == pytest.approx(wdist, rel=1e-4, abs=1e-6)
    assert out["gp"].item() == pytest.approx(gp, rel=1e-4, abs=1e-7)
    assert out["critic"].item() == pytest.approx(-wdist + 10.0 * gp, rel=1e-4, abs=1e-6)
    hand = copy.deepcopy(nets)
    nets.train()
    adv = family.generator_step(nets, opts["gen"], x)["adv"]
    hand.train()
    with torch.no_grad():
        assert adv == pytest.approx(-hand["critic"](hand["encoder"](x)).mean().item(), rel=1e-4, abs=1e-6)


def test_lran_terms_by_hand():
    """irec: mean |x - x'|; adv: -log sigmoid(D(x')); zrec: mean (z - z')^2; rank: energy beyond r; weighted sum."""
    family, nets, opts = _setup("lran")
    x = smooth_images(B, S)
    hand = copy.deepcopy(nets)
    out = family.train_step(nets, opts, x)
    hand.train()
    with torch.no_grad():
        xs = x / family.hp.input_scale
        z = hand["encoder"](xs)
        xr = hand["decoder"](z)
        z2 = hand["encoder2"](xr)
        logits, _ = hand["disc"](xr)
    s2 = np.linalg.svd((z - z.mean(0)).double().numpy(), compute_uv=False) ** 2
    hand_terms = {
        "irec": (xs - xr).abs().mean().item(),
        "adv": -torch.log(torch.sigmoid(logits.double())).mean().item(),
        "zrec": ((z - z2) ** 2).mean().item(),
        "rank": float(s2[2:].sum() / s2.sum()),
    }
    for key, value in hand_terms.items():
        assert out[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
    weights = {"irec": 1.0, "adv": 5.0, "zrec": 1.0, "rank": 0.05}
    assert out["loss"] == pytest.approx(sum(weights[k] * v for k, v in hand_terms.items()), rel=1e-4)


def test_lran_switched_off_terms_are_the_zero_weights():
    """use_rank/use_zrec False train exactly as weight 0; the switched-off G_e' keeps its initial weights."""
    for switch, weight in (({"use_rank": False}, {"w_r": 0.0}), ({"use_zrec": False}, {"w_z": 0.0})):
        off_losses, off_state = _run("lran", 2, **switch)
        zero_losses, zero_state = _run("lran", 2, **weight)
        assert off_losses == zero_losses
        assert all(torch.equal(v, zero_state[k]) for k, v in off_state.items())
    _, initial = _run("lran", 0)
    _, no_zrec = _run("lran", 2, use_zrec=False)
    assert all(torch.equal(no_zrec[k], initial[k]) for k in initial if k.startswith("encoder2.") and "running" not in k
               and "num_batches" not in k)  # fmt: skip


def test_lran_rank_target_must_leave_energy_to_penalise():
    family, nets, opts = _setup("lran", rank_target=B - 1)
    with pytest.raises(ValueError, match="rank_target"):
        family.train_step(nets, opts, smooth_images(B, S))
    family, nets, opts = _setup("lran", rank_target=B - 1, use_rank=False)  # off: no constraint on r
    assert math.isfinite(family.train_step(nets, opts, smooth_images(B, S))["loss"])


def _rank_setup() -> tuple[nn.Linear, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Linear(12, 6), torch.randn(16, 12, generator=torch.Generator().manual_seed(1))


def _rank_worker(rank: int, world: int, store: str, out: str) -> None:
    """Each of two gloo ranks holds 8 of the 16 samples; the rank term is taken on the gathered batch."""
    join_group(rank, world, store)
    net, x = _rank_setup()
    ddp = DistributedDataParallel(net)
    term = rank_energy(gather_batch(ddp(x[8 * rank : 8 * (rank + 1)])), 2)
    term.backward()
    torch.save({"term": term.detach(), "grads": [p.grad for p in net.parameters()]}, Path(out) / f"rank{rank}.pt")
    leave_group()


def test_rank_term_same_on_one_worker_and_on_two(tmp_path):
    """Value and parameter gradients (after DDP's average) of the rank term: 1 worker x 16 == 2 workers x 8."""
    net, x = _rank_setup()
    term = rank_energy(gather_batch(net(x)), 2)
    term.backward()
    run_ranks(_rank_worker, (2, str(tmp_path / "store"), str(tmp_path)))
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt")
        assert got["term"].item() == pytest.approx(term.item(), rel=1e-5)
        for p, g in zip(net.parameters(), got["grads"], strict=True):
            assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-7)
    local = rank_energy(net(x[:8]), 2).item()
    assert abs(local - term.item()) > 1e-3, "the local batch alone gives another value: gathering matters"
