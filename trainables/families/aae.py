"""The first paper's adversarial auto-encoder (Chen & Konukoglu, MIDL 2018): the VAE's KL replaced by a
WGAN-GP critic on the latent code, prior N(0, I), residual anomaly map.

One ``train_step`` follows the official code's schedule, three phases on one batch, each with its own Adam:
1. auto-encoder step (``"ae"``, encoder and decoder): ``||x - x'||_2`` per image, batch mean (``recon_norm``
   "squared": ``||x - x'||^2``, as the paper's text writes it; docs/decisions.md)
   (``autoencoder_loss``; the constrained AAE, trainables/families/caae.py, adds its consistency term there);
2. critic steps (``"critic"``): codes ``Enc(x)`` of the updated encoder are fake, prior samples real;
   loss ``-(mean C(real) - mean C(fake)) + gp_weight * GP`` with the penalty on random interpolates.
   ``critic_steps`` per batch (20), ``warmup_critic_steps`` (200 = the official 10 x 20) during the first
   ``warmup_share`` of the run's epochs (the official 20 of 300, at least one epoch). As in the official
   code every critic step reuses this batch and one prior draw; only the interpolation weights are drawn
   afresh;
3. generator step (``"gen"``, encoder only): ``adv_weight * (-mean C(Enc(x)))``, codes pushed towards the prior.

Sign convention: our critic scores prior samples high; the official code's scores them low and its
generator minimises ``mean C(fake)``. The two are the same game with the critic negated.

Departures, each with its reason:
- ``adv_weight`` (1 = the official unweighted loss) exists so a study can search it;
- the warm-up is a share of the run's epochs (``Family.set_epoch`` gives the epoch and the budget), not 20
  epochs: the official code spends 1/15 of its 300 epochs in it, and 20 epochs at ten times the critic
  steps would be most of a study trial's budget (a 6-epoch trial: all of it). A run restarted from a
  checkpoint resumes the schedule where it was.

DDP: every net is called as ``nets[key](...)``, and every forward with grad enabled is followed by one
backward reaching all of that net's parameters (DDP's reducer, without unused-parameter search, expects
that). The critic phase computes the codes without grad; the generator step's backward also fills the
critic's ``.grad``, which the critic optimiser discards (``zero_grad``) before its next step. Each critic
step is one forward of real, fake and interpolated codes concatenated (the critic has no batch
statistics, so this equals three calls) and one backward; the penalty's inner ``autograd.grad`` is taken
w.r.t. the interpolates only, which DDP allows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.families.autoencoder import build_autoencoder, reconstruct, score_reconstruction
from trainables.families.base import Family, Scores, local_grads, parameters, scoring
from trainables.families.losses import gradient_penalty, l2_recon, l2_squared_recon, wasserstein_estimate
from trainables.families.nets import Critic
from trainables.families.registry import register_family


@dataclass
class AAEHparams:
    latent_dim: int = 128  # size of z; 128 in the first paper's official code
    width: int = 16  # channels after the stem conv, doubled per block; 16 in the official code
    lr: float = 2e-5  # Adam learning rate of all three optimisers; 2e-5 in the official code
    beta1: float = 0.5  # Adam beta1; 0.5 in the official code (WGAN-GP's setting)
    beta2: float = 0.9  # Adam beta2; 0.9 in the official code (WGAN-GP's setting)
    critic_lr_ratio: float = 1.0  # critic learning rate = lr * ratio; the official code uses one rate for all
    adv_weight: float = 1.0  # weight of the encoder's adversarial loss; 1 = the official unweighted loss
    gp_weight: float = 10.0  # WGAN-GP gradient-penalty weight; 10 in the official code and in WGAN-GP
    critic_steps: int = 20  # critic steps per batch; 20 in the official code (WGAN-GP: 5)
    warmup_critic_steps: int = 200  # critic steps per batch during warm-up; 200 (10 x 20) in the official code
    warmup_share: float = 20 / 300  # share of the run's epochs warmed up, at least 1; official: 20 of 300 (0: none)
    recon_norm: str = "l2"  # "l2": ||x - x'||_2 per image (the official code's); "squared": ||x - x'||^2 (paper text)


RECON_NORMS = {"l2": l2_recon, "squared": l2_squared_recon}


def critic_step(
    nets: nn.ModuleDict, opt: torch.optim.Optimizer, z_real: torch.Tensor, z_fake: torch.Tensor, gp_weight: float
) -> dict[str, torch.Tensor]:
    """One WGAN-GP step of ``nets["critic"]`` on prior samples ``z_real`` and detached codes ``z_fake``."""
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
    # The first paper's AAE, Table 1: the defaults, its official code's values (latent 128, lr 2e-5, 20 critic
    # steps, gradient penalty 10, the 20/300 warm-up; AAEHparams says where each comes from).
    presets = {"paper": {}}

    def __init__(self, hparams) -> None:
        super().__init__(hparams)
        if hparams.critic_steps < 1 or hparams.warmup_critic_steps < 0 or not 0 <= hparams.warmup_share <= 1:
            raise ValueError(f"{type(self).__name__}: critic_steps must be >= 1, warm-up settings >= 0; got {hparams}")
        if hparams.recon_norm not in RECON_NORMS:
            raise ValueError(f"{type(self).__name__}: recon_norm must be one of {sorted(RECON_NORMS)}, "
                             f"got {hparams.recon_norm!r}")  # fmt: skip

    def build(self, image_size: int) -> nn.ModuleDict:
        """Encoder and decoder of the official code, and the latent critic (MLP 200-400-1)."""
        hp = self.hp
        nets = build_autoencoder(image_size, hp.latent_dim, hp.width)
        return nn.ModuleDict({**nets, "critic": Critic(hp.latent_dim)})

    def optimizers(self, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        """Adam for the auto-encoder step (``"ae"``), the critic (``"critic"``) and the encoder-only
        generator step (``"gen"``), each with its own moments, as in the official code."""
        hp = self.hp
        betas = (hp.beta1, hp.beta2)
        return {
            "ae": torch.optim.Adam(parameters(nets, "encoder", "decoder"), lr=hp.lr, betas=betas),
            "critic": torch.optim.Adam(parameters(nets, "critic"), lr=hp.lr * hp.critic_lr_ratio, betas=betas),
            "gen": torch.optim.Adam(parameters(nets, "encoder"), lr=hp.lr, betas=betas),
        }

    def critic_iterations(self) -> int:
        """Critic steps for this batch: the warm-up count during the run's first ``warmup_share`` of epochs."""
        hp = self.hp
        warm = hp.warmup_critic_steps > 0 and hp.warmup_share > 0 and self.epoch < self.warmup_epochs()
        return hp.warmup_critic_steps if warm else hp.critic_steps

    def warmup_epochs(self) -> int:
        """Epochs of warm-up in this run: ``warmup_share`` of its budget, rounded, at least one."""
        return max(1, round(self.hp.warmup_share * self.epochs))

    def autoencoder_step(self, nets: nn.ModuleDict, opt: torch.optim.Optimizer, x: torch.Tensor) -> dict[str, float]:
        """Phase 1: one step of encoder and decoder on ``autoencoder_loss``."""
        loss, terms = self.autoencoder_loss(nets, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return self.terms({"loss": loss, **terms})

    def autoencoder_loss(self, nets: nn.ModuleDict, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Phase 1's objective and its terms: ``recon``, the batch mean of ``||x - x'||_2`` (the official code's;
        ``recon_norm="squared"``: of ``||x - x'||^2``, the paper's text)."""
        _, xr = reconstruct(nets, x)
        recon = self.recon_loss(x, xr)
        return recon, {"recon": recon}

    def recon_loss(self, x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
        """The reconstruction term chosen by ``recon_norm``."""
        return RECON_NORMS[self.hp.recon_norm](x, xr)

    def critic_phase(self, nets: nn.ModuleDict, opt: torch.optim.Optimizer, x: torch.Tensor) -> dict[str, float]:
        """Phase 2: critic steps on this batch's codes and one prior draw; means of its terms."""
        with torch.no_grad():
            z_fake = nets["encoder"](x)
        z_real = torch.randn_like(z_fake)
        n = self.critic_iterations()
        sums: dict[str, torch.Tensor] = {}
        for _ in range(n):
            for key, value in critic_step(nets, opt, z_real, z_fake, self.hp.gp_weight).items():
                sums[key] = sums.get(key, 0.0) + value
        return self.terms({k: v / n for k, v in sums.items()})

    def generator_step(self, nets: nn.ModuleDict, opt: torch.optim.Optimizer, x: torch.Tensor) -> dict[str, float]:
        """Phase 3: encoder-only step making codes score like prior samples."""
        z = nets["encoder"](x)
        with local_grads(nets["critic"]):  # the critic's gradients from this step are discarded: no all-reduce
            adv = -nets["critic"](z).mean()
        opt.zero_grad(set_to_none=True)
        (self.hp.adv_weight * adv).backward()  # also fills the critic's .grad; critic_step zeroes it first
        opt.step()
        return self.terms({"adv": adv})

    def train_step(
        self, nets: nn.ModuleDict, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, float]:
        """The three phases; ``loss`` is the auto-encoder objective, ``adv`` the generator's, and
        ``critic``, ``wdist``, ``gp`` the means over the critic steps."""
        nets.train()
        out = self.autoencoder_step(nets, opts["ae"], x)
        out |= self.critic_phase(nets, opts["critic"], x)
        return out | self.generator_step(nets, opts["gen"], x)

    @scoring
    def score(self, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        """Residual map ``|x - Dec(Enc(x))|``, its slice mean, and the latent score ``||z - Enc(x')||``."""
        return score_reconstruction(nets, x)
