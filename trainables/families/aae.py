"""The first paper's adversarial auto-encoder (Chen & Konukoglu, MIDL 2018): the VAE's KL replaced by a
WGAN-GP critic on the latent code, prior N(0, I), residual anomaly map.

One ``train_step`` is one auto-encoder step preceded by ``critic_steps`` critic steps:
1. encode the batch once, ``z = Enc(x)``, ``x' = Dec(z)`` (kept for step 3);
2. critic steps: real codes drawn from the prior, fake codes ``z.detach()``; loss
   ``-(mean C(real) - mean C(fake)) + gp_weight * GP`` with the penalty on random interpolates;
3. auto-encoder step: ``l2_recon(x, x') + adv_weight * (-mean C(z))`` (the encoder's adversarial step,
   making codes look like prior samples), plus the latent consistency term in the constrained AAE.

Deviation from the official code (TensorFlow), which fed a fresh data batch to every critic iteration:
the shared training loop hands a family one batch per step, so the critic iterations reuse this batch's
codes (with fresh prior samples and interpolates each time). Its warm-up (200 critic iterations during
the first 20 epochs) is available as ``warmup_critic_steps`` / ``warmup_steps``, off by default; the
family sees steps, not epochs, so ``warmup_steps`` counts auto-encoder steps (20 epochs = 20 x steps per
epoch). The step count is read from the Adam state of the auto-encoder optimiser, so it survives a
restart from a checkpoint.

DDP: every net is called as ``nets[key](...)``, and every forward with grad enabled is followed by one
backward that reaches all of that net's parameters (DDP's reducer, without unused-parameter search,
expects exactly that). So the auto-encoder step's backward also fills the critic's ``.grad`` rather than
freezing it; the critic optimiser discards those (``zero_grad``) before its next step. Each critic step is
one forward of real, fake and interpolated codes concatenated (the critic has no batch statistics, so
this equals three calls) and one backward; the penalty's inner ``autograd.grad`` is taken w.r.t. the
interpolates only, which DDP allows. Checked with 2 gloo ranks: weights stay identical across ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.families.ae import build_autoencoder, reconstruction_loss, reconstruction_terms, score_reconstruction
from trainables.families.base import Family, Scores, local_grads, parameters, scoring
from trainables.families.losses import gradient_penalty, wasserstein_estimate
from trainables.families.nets import Critic
from trainables.families.registry import register_family


@dataclass
class AAEHparams:
    latent_dim: int = 128  # size of z; 128 in the first paper's official code
    width: int = 16  # channels after the stem conv, doubled per block; 16 in the official code
    lr: float = 2e-5  # Adam learning rate of the auto-encoder; 2e-5 in the official code
    beta1: float = 0.5  # Adam beta1; 0.5 in the official code (WGAN-GP's setting)
    beta2: float = 0.9  # Adam beta2; 0.9 in the official code (WGAN-GP's setting)
    critic_lr_ratio: float = 1.0  # critic learning rate = lr * ratio; the official code uses one rate for both
    adv_weight: float = 1.0  # weight of the encoder's adversarial loss; the paper adds it unweighted
    gp_weight: float = 10.0  # WGAN-GP gradient-penalty weight; 10 in the official code and in WGAN-GP
    critic_steps: int = 20  # critic steps per auto-encoder step; 20 in the official code (WGAN-GP: 5)
    warmup_critic_steps: int = 0  # critic steps per step during warm-up; the official code used 200 (0: off)
    warmup_steps: int = 0  # auto-encoder steps of warm-up; official: its first 20 epochs (0: no warm-up)


def _steps_taken(opt: torch.optim.Optimizer) -> int:
    """Steps an Adam optimiser has taken, from its per-parameter state (restored with its checkpoint)."""
    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p)
            return int(state["step"]) if state and "step" in state else 0
    return 0


def critic_step(
    nets: nn.ModuleDict, opt: torch.optim.Optimizer, z_fake: torch.Tensor, gp_weight: float
) -> dict[str, torch.Tensor]:
    """One WGAN-GP step of ``nets["critic"]``: prior samples N(0, I) are real, the detached codes fake."""
    z_real = torch.randn_like(z_fake)
    mix = torch.rand(len(z_fake), 1, device=z_fake.device)
    z_mix = (mix * z_real + (1 - mix) * z_fake).requires_grad_(True)
    s_real, s_fake, s_mix = nets["critic"](torch.cat([z_real, z_fake, z_mix])).split(len(z_fake))
    wdist = wasserstein_estimate(s_real, s_fake)
    gp = gradient_penalty(s_mix, z_mix)
    loss = -wdist + gp_weight * gp
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return {"critic": loss.detach(), "wdist": wdist.detach(), "gp": gp.detach()}


@register_family("aae")
class AAE(Family):
    """ResNet auto-encoder whose codes a WGAN-GP critic pushes towards N(0, I); map ``|x - Dec(Enc(x))|``."""

    Hparams = AAEHparams

    def __init__(self, hparams) -> None:
        super().__init__(hparams)
        if hparams.critic_steps < 1 or hparams.warmup_critic_steps < 0 or hparams.warmup_steps < 0:
            raise ValueError(f"{type(self).__name__}: critic_steps must be >= 1, warm-up settings >= 0; got {hparams}")

    @property
    def latent_weight(self) -> float:
        """Weight of the latent consistency term: none in the plain AAE (the constrained AAE overrides this)."""
        return 0.0

    def build(self, image_size: int) -> nn.ModuleDict:
        """Encoder and decoder of the official code, and the latent critic (MLP 200-400-1)."""
        hp = self.hp
        nets = build_autoencoder(image_size, hp.latent_dim, hp.width)
        return nn.ModuleDict({**nets, "critic": Critic(hp.latent_dim)})

    def optimizers(self, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        """Adam for the auto-encoder (``"ae"``) and for the critic (``"critic"``), betas as in WGAN-GP."""
        hp = self.hp
        betas = (hp.beta1, hp.beta2)
        return {
            "ae": torch.optim.Adam(parameters(nets, "encoder", "decoder"), lr=hp.lr, betas=betas),
            "critic": torch.optim.Adam(parameters(nets, "critic"), lr=hp.lr * hp.critic_lr_ratio, betas=betas),
        }

    def critic_iterations(self, opts: dict[str, torch.optim.Optimizer]) -> int:
        """Critic steps for this auto-encoder step: the warm-up count during the first ``warmup_steps``."""
        hp = self.hp
        warm = hp.warmup_critic_steps > 0 and _steps_taken(opts["ae"]) < hp.warmup_steps
        return hp.warmup_critic_steps if warm else hp.critic_steps

    def train_step(
        self, nets: nn.ModuleDict, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, float]:
        """Critic steps on this batch's codes, then one auto-encoder step; returns every term.

        ``loss`` is the auto-encoder objective; ``critic``, ``wdist`` and ``gp`` are means over the critic steps.
        """
        nets.train()
        z, terms = reconstruction_terms(nets, x, self.latent_weight)
        n = self.critic_iterations(opts)
        sums: dict[str, torch.Tensor] = {}
        for _ in range(n):
            for key, value in critic_step(nets, opts["critic"], z.detach(), self.hp.gp_weight).items():
                sums[key] = sums.get(key, 0.0) + value
        with local_grads(nets["critic"]):  # the critic's gradients from this step are zeroed unused: no all-reduce
            terms["adv"] = -nets["critic"](z).mean()
        loss = reconstruction_loss(terms, self.latent_weight) + self.hp.adv_weight * terms["adv"]
        opts["ae"].zero_grad(set_to_none=True)
        loss.backward()  # also fills the critic's .grad; critic_step zeroes it before using it
        opts["ae"].step()
        return self.terms({"loss": loss, **terms, **{k: v / n for k, v in sums.items()}})

    @scoring
    def score(self, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        """Residual map ``|x - Dec(Enc(x))|``, its slice mean, and the latent score ``||z - Enc(x')||``."""
        return score_reconstruction(nets, x)
