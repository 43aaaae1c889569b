"""The second paper's latent-regularised adversarial network (Wang, Chen, Xie, Ma, 2020): GANomaly with a
low-rank constraint on the batch's latent codes.

Nets (DCGAN style, ``trainables.families.nets``): encoder ``G_e``, decoder ``G_d`` (tanh output), an
auxiliary encoder ``G_e'`` of the same shape with its own weights, and an image discriminator ``D``.
Generator objective, for ``z = G_e(x)``, ``x' = G_d(z)``, ``z' = G_e'(x')``:

    w_i * L1(x, x') + w_a * adversarial + w_z * ||z - z'||^2 + w_r * rank(z)

Choices where the paper leaves room (each documented where it is made):
- adversarial (``adversarial``): ``"gan"`` (default) is the standard GAN game of the paper's Eq. 3: D is
  trained with BCE on real ``x`` and reconstructed ``x'``, and the generator's term is the non-saturating
  ``-log D(x')`` (BCE of D's logit on ``x'`` against the "real" label; Goodfellow et al.'s usual form of
  ``log(1 - D(x'))``). ``"feature"`` is GANomaly's feature matching, ``mean (f(x) - f(x'))^2`` over D's
  last feature map (``losses.feature_matching``), kept as an option because the second paper builds on
  GANomaly's code. (The paper's text was not at hand when this was written: the GAN form follows the
  review of issue 13, which reads Eq. 3 as the GAN loss, not feature matching.)
- latent term: the mean squared difference (GANomaly's code computes its ``||.||_2`` term this way, and
  the paper's weights were set with that code); the score ``||z - z'||`` is its per-slice L2 norm.
- rank: the share of centred latent energy beyond ``rank_target`` singular values of the batch's code
  matrix (``losses.rank_energy``, where the reasons for this form are given). ``rank_target`` (r) is ours:
  the paper names a target rank but not its value. The term is computed on the batch gathered from every
  DDP worker (``losses.gather_batch``, gradient kept), so it is the same on 1 worker with batch B and on k
  workers with B/k each. Centred codes of a batch of B span at most B - 1 directions, so the term can act
  only when r < min(B - 1, latent_dim): a larger r raises ``ValueError`` at the first step.
- ablations (Table 4): ``use_zrec`` / ``use_rank`` switch a term off (as does a weight of 0). The term is
  still computed without gradient and reported (G_e' then stays untrained but its BatchNorm statistics
  follow the reconstructions, as they would in a forward pass of the paper's code), so the other nets
  train exactly as without it.
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
columns of the paper's Table 5. Ablations of its Table 4 switch terms off (``use_rank = False`` is GANomaly).

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
from trainables.families.losses import bce_logits, feature_matching, gather_batch, l1_recon, mse, rank_energy
from trainables.families.nets import DCGANDecoder, DCGANDiscriminator, DCGANEncoder
from trainables.families.registry import register_family

SLICE_SCORES = ("latent", "residual")
ADVERSARIAL = ("gan", "feature")


@dataclass
class LRANHparams:
    latent_dim: int = 100  # size of z; GANomaly's default (nz = 100), which the second paper builds on
    channels: int = 64  # channels of the first conv, doubled per stage (DCGAN/GANomaly ngf = ndf = 64)
    w_i: float = 1.0  # weight of L1(x, x'); 1 in the second paper (GANomaly: 50)
    w_a: float = 5.0  # weight of the adversarial term; 5 in the second paper (GANomaly: 1)
    w_z: float = 1.0  # weight of ||z - z'||^2; 1 in the second paper and in GANomaly
    w_r: float = 0.05  # weight of the rank term; 0.05 in the second paper
    use_zrec: bool = True  # False: the ||z - z'||^2 term is off (Table 4 ablation)
    use_rank: bool = True  # False: the rank term is off (Table 4 ablation; = GANomaly with the paper's weights)
    rank_target: int = 8  # r: energy beyond r singular values of the (global) batch's codes is penalised; ours
    adversarial: str = "gan"  # "gan": -log D(x') (the paper's GAN term); "feature": GANomaly's feature matching
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
    # The second paper (Wang et al. 2020): "paper" is its full model, the defaults (w_i 1, w_a 5, w_z 1, w_r 0.05,
    # lr 0.002, GANomaly's latent 100; LRANHparams says where each comes from); the others are its Table 4
    # ablation rows, one term switched off each.
    presets = {
        "paper": {},
        "no-rank": {"use_rank": False},  # irec + adv + zrec: GANomaly with the paper's weights
        "no-zrec": {"use_zrec": False},  # irec + adv + rank
        "irec-adv": {"use_rank": False, "use_zrec": False},  # image reconstruction and adversarial terms only
    }

    def __init__(self, hparams: LRANHparams) -> None:
        super().__init__(hparams)
        if hparams.slice_score not in SLICE_SCORES:
            raise ValueError(f"lran: slice_score must be one of {SLICE_SCORES}, got {hparams.slice_score!r}")
        if hparams.adversarial not in ADVERSARIAL:
            raise ValueError(f"lran: adversarial must be one of {ADVERSARIAL}, got {hparams.adversarial!r}")
        if hparams.rank_target < 1 or hparams.input_scale <= 0:
            raise ValueError(f"lran: rank_target must be >= 1 and input_scale > 0, got {hparams}")

    def weights(self) -> dict[str, float]:
        """Effective weight of each generator term (0 where switched off)."""
        hp = self.hp
        return {"irec": hp.w_i, "adv": hp.w_a, "zrec": hp.w_z * hp.use_zrec, "rank": hp.w_r * hp.use_rank}

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
        """``x'`` and the generator's loss terms for a scaled batch ``xs = x / input_scale``.

        A term whose weight is 0 is computed without gradient (reported, but no net learns from it).
        """
        weights = self.weights()
        z = nets["encoder"](xs)
        xr = nets["decoder"](z)
        terms = {"irec": l1_recon(xs, xr), "adv": self.adversarial_term(nets, xs, xr)}
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights["zrec"] > 0):
            terms["zrec"] = mse(z, nets["encoder2"](xr))
        with torch.set_grad_enabled(torch.is_grad_enabled() and weights["rank"] > 0):
            codes = gather_batch(z)
            if weights["rank"] > 0 and self.hp.rank_target >= min(len(codes) - 1, codes.shape[1]):
                raise ValueError(
                    f"lran: rank_target {self.hp.rank_target} leaves no energy to penalise in a batch of "
                    f"{len(codes)} codes of size {codes.shape[1]} (needs < {min(len(codes) - 1, codes.shape[1])})"
                )
            terms["rank"] = rank_energy(codes, self.hp.rank_target)
        return xr, terms

    def adversarial_term(self, nets: nn.ModuleDict, xs: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial term on ``x'`` (see ``adversarial`` in the module doc)."""
        with local_grads(nets["disc"]):  # D's gradients from the generator's step are discarded: no all-reduce
            fake_logits, fake_features = nets["disc"](xr)
        if self.hp.adversarial == "gan":
            return bce_logits(fake_logits, 1.0)
        with torch.no_grad():  # D's features of x are the target; only x' carries gradient
            _, real_features = nets["disc"](xs)
        # 0 * logits: D's head must take part in this backward, since under DDP (no unused-parameter search)
        # every parameter of a net called with grad enabled has to receive a gradient, zero or not
        return feature_matching(real_features, fake_features) + 0.0 * fake_logits.sum()

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
        loss = sum(w * terms[k] for k, w in self.weights().items() if w > 0)
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
