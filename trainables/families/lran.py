"""The second paper's latent-regularised adversarial network (Wang, Chen, Xie, Ma, 2020): GANomaly with a
low-rank constraint on the batch's latent codes.

Nets (DCGAN style, ``trainables.families.nets``): encoder ``G_e``, decoder ``G_d`` (tanh output), an
auxiliary encoder ``G_e'`` of the same shape with its own weights, and an image discriminator ``D``.
Generator objective, for ``z = G_e(x)``, ``x' = G_d(z)``, ``z' = G_e'(x')``:

    w_i * L1(x, x') + w_a * adversarial + w_z * ||z - z'||^2 + w_r * rank(z)

Choices where the paper leaves room (each documented where it is made):
- adversarial: GANomaly's feature matching, ``mean (f(x) - f(x'))^2`` over D's last feature map (see
  ``losses.feature_matching``), not the generator's BCE against D's logit. The second paper builds on
  GANomaly, whose code uses feature matching: the generator has a paired target (its own input), so
  matching D's features of that target is a bounded, per-sample term; the BCE game lets a winning D
  produce large, noisy gradients that, weighted by w_a = 5, swamp the L1 term.
- latent term: the mean squared difference (GANomaly's code computes its ``||.||_2`` term this way, and
  the paper's weights were set with that code); the score ``||z - z'||`` is its per-slice L2 norm.
- rank: the share of centred latent energy beyond ``rank_target`` singular values
  (``losses.rank_energy``, where the reasons are given), computed on each worker's local batch.
- intensity range: slices are z-scored (background 0, brain values within about [-3, 6]); the
  nets see ``x / input_scale`` and the decoder's tanh output is scaled back by ``input_scale``. All
  losses are computed in the scaled space, where the paper's weights were balanced (images in [-1, 1]);
  reconstructions, maps and scores are in the input's units. A value beyond ``input_scale`` cannot be
  reconstructed: on healthy data that is rare (choose the scale above the healthy range), on lesions it
  only raises the residual.
- D step after the generator step, on the same ``x'`` (detached), as GANomaly does; D's re-initialisation
  when its loss collapses (GANomaly) is not done: divergence is caught by the training loop instead.

Scores: ``latent_score = ||z - z'||`` (the paper's anomaly score) and the residual ``|x - x'|`` as the
pixel map; ``slice_score`` is the latent score or the residual's slice mean (``slice_score``), the two
columns of the paper's Table 5. Ablations of its Table 4 are weight settings (w_r = 0 is GANomaly).

DDP: nets are called as ``nets[key](...)``, and every forward with grad enabled is followed by a backward
reaching all of that net's parameters (DDP's reducer, without unused-parameter search, expects it). So D
is not frozen during the generator step: its parameters get gradients there, which D's optimiser discards
(``zero_grad``) before its own step. D is called twice (real, fake) before its backward, as GANomaly does,
so BatchNorm sees real and fake batches apart. Checked with 2 gloo ranks: weights stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from trainables.families.base import Family, Scores, local_grads, parameters, scoring
from trainables.families.losses import bce_logits, feature_matching, l1_recon, mse, rank_energy
from trainables.families.nets import DCGANDecoder, DCGANDiscriminator, DCGANEncoder
from trainables.families.registry import register_family

SLICE_SCORES = ("latent", "residual")


@dataclass
class LRANHparams:
    latent_dim: int = 100  # size of z; GANomaly's default (nz = 100), which the second paper builds on
    channels: int = 64  # channels of the first conv, doubled per stage (DCGAN/GANomaly ngf = ndf = 64)
    w_i: float = 1.0  # weight of L1(x, x'); 1 in the second paper (GANomaly: 50)
    w_a: float = 5.0  # weight of the adversarial (feature-matching) term; 5 in the second paper (GANomaly: 1)
    w_z: float = 1.0  # weight of ||z - z'||^2; 1 in the second paper and in GANomaly
    w_r: float = 0.05  # weight of the rank term; 0.05 in the second paper (0: GANomaly)
    rank_target: int = 8  # r: latent energy beyond r singular values is penalised; our choice, see module doc
    lr: float = 2e-3  # Adam learning rate of generator and discriminator; 0.002 in the second paper
    beta1: float = 0.5  # Adam beta1; 0.5 in the second paper's base (GANomaly, DCGAN)
    beta2: float = 0.999  # Adam beta2; GANomaly's (PyTorch's default)
    disc_lr_ratio: float = 1.0  # discriminator learning rate = lr * ratio; GANomaly uses one rate for both
    input_scale: float = 5.0  # nets see x / input_scale; z-scored brains stay within +-5 but for rare outliers
    slice_score: str = "latent"  # "latent": ||z - z'|| (the paper's score); "residual": mean |x - x'|


@register_family("lran")
class LRAN(Family):
    """GANomaly-style generator (G_e, G_d, G_e') with a low-rank latent term, and a DCGAN discriminator."""

    Hparams = LRANHparams

    def __init__(self, hparams: LRANHparams) -> None:
        super().__init__(hparams)
        if hparams.slice_score not in SLICE_SCORES:
            raise ValueError(f"lran: slice_score must be one of {SLICE_SCORES}, got {hparams.slice_score!r}")
        if hparams.rank_target < 1 or hparams.input_scale <= 0:
            raise ValueError(f"lran: rank_target must be >= 1 and input_scale > 0, got {hparams}")

    def build(self, image_size: int) -> nn.ModuleDict:
        """``encoder`` (G_e), ``decoder`` (G_d), ``encoder2`` (G_e', own weights) and ``disc`` (D)."""
        hp = self.hp
        return nn.ModuleDict(
            {
                "encoder": DCGANEncoder(image_size, hp.latent_dim, hp.channels),
                "decoder": DCGANDecoder(image_size, hp.latent_dim, hp.channels),
                "encoder2": DCGANEncoder(image_size, hp.latent_dim, hp.channels),
                "disc": DCGANDiscriminator(image_size, hp.channels),
            }
        )

    def optimizers(self, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        """Adam for the generator (``"gen"``: G_e, G_d, G_e') and for the discriminator (``"disc"``)."""
        hp = self.hp
        betas = (hp.beta1, hp.beta2)
        return {
            "gen": torch.optim.Adam(parameters(nets, "encoder", "decoder", "encoder2"), lr=hp.lr, betas=betas),
            "disc": torch.optim.Adam(parameters(nets, "disc"), lr=hp.lr * hp.disc_lr_ratio, betas=betas),
        }

    def generator_terms(self, nets: nn.ModuleDict, xs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x'`` and the generator's loss terms for a scaled batch ``xs = x / input_scale``."""
        z = nets["encoder"](xs)
        xr = nets["decoder"](z)
        z2 = nets["encoder2"](xr)
        with torch.no_grad():  # D's features of x are the target; only x' carries gradient
            _, real_features = nets["disc"](xs)
        with local_grads(nets["disc"]):  # D's gradients from the generator's step are zeroed unused: no all-reduce
            fake_logits, fake_features = nets["disc"](xr)
        # 0 * logits: D's head must take part in this backward, since under DDP (no unused-parameter search)
        # every parameter of a net called with grad enabled has to receive a gradient, zero or not
        terms = {
            "irec": l1_recon(xs, xr),
            "adv": feature_matching(real_features, fake_features) + 0.0 * fake_logits.sum(),
            "zrec": mse(z, z2),
            "rank": rank_energy(z, self.hp.rank_target),
        }
        return xr, terms

    def train_step(
        self, nets: nn.ModuleDict, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, float]:
        """One generator step, then one discriminator step on the same reconstructions.

        ``loss`` is the generator objective; ``disc`` is D's BCE (mean of the real and fake halves).
        """
        hp = self.hp
        nets.train()
        xs = x / hp.input_scale
        xr, terms = self.generator_terms(nets, xs)
        loss = hp.w_i * terms["irec"] + hp.w_a * terms["adv"] + hp.w_z * terms["zrec"] + hp.w_r * terms["rank"]
        opts["gen"].zero_grad(set_to_none=True)
        loss.backward()  # also fills D's .grad; zeroed below before D's own backward
        opts["gen"].step()
        logits_real, _ = nets["disc"](xs)
        logits_fake, _ = nets["disc"](xr.detach())
        disc = 0.5 * (bce_logits(logits_real, 1.0) + bce_logits(logits_fake, 0.0))
        opts["disc"].zero_grad(set_to_none=True)
        disc.backward()
        opts["disc"].step()
        return self.terms({"loss": loss, **terms, "disc": disc})

    @scoring
    def score(self, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        """Residual map ``|x - x'|`` (input units), latent score ``||z - z'||``; slice score per ``slice_score``."""
        scale = self.hp.input_scale
        z = nets["encoder"](x / scale)
        xr = nets["decoder"](z)
        latent = (z - nets["encoder2"](xr)).norm(dim=1)
        recon = xr * scale
        pixel_map = (x - recon).abs()
        slice_score = latent if self.hp.slice_score == "latent" else pixel_map.flatten(1).mean(1)
        return Scores(recon=recon, pixel_map=pixel_map, slice_score=slice_score, latent_score=latent)
