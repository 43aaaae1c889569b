"""Loss terms shared by families. Each returns a scalar tensor; weights are applied by the caller."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def l2_recon(x: torch.Tensor, xr: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Batch mean of each image's L2 norm ``||x - xr||_2``, as in the first paper's official code.

    The norm (not its square, not a per-pixel mean) is what that code minimises; it grows with the
    image side, so weights on other terms are relative to it. ``eps`` keeps the sqrt differentiable at 0.
    """
    return torch.sqrt((x - xr).square().flatten(1).sum(1) + eps).mean()


def l2_squared_recon(x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Batch mean of each image's squared L2 norm ``||x - xr||^2``, as the first paper's text writes its loss
    (its official code minimises the unsquared norm, ``l2_recon``)."""
    return (x - xr).square().flatten(1).sum(1).mean()


def gaussian_recon(x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``1/2 ||x - xr||^2`` per image: the negative log-likelihood of ``x`` under
    ``N(xr, I)`` up to a constant, the reconstruction term of the VAE's ELBO (unit decoder variance)."""
    return 0.5 * (x - xr).square().flatten(1).sum(1).mean()


def mse(x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element."""
    return (x - xr).square().mean()


def l1_recon(x: torch.Tensor, xr: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every element (the second paper's image reconstruction term)."""
    return (x - xr).abs().mean()


def latent_l2(z: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Batch mean of the squared latent distance ``||z - z2||^2`` (the constrained AAE's consistency term)."""
    return (z - z2).square().flatten(1).sum(1).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, exp(logvar)) || N(0, I))`` summed over latent dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp())).sum(1).mean()


class _GatherBatch(torch.autograd.Function):
    """All-gather along the batch whose backward returns to each rank the gradient of its own rows, summed over
    every rank's graph: one all_reduce of the whole gradient, then this rank's slice. ``torch.distributed.nn``'s
    all_gather does the same but is deprecated, and on gloo emulates all_to_all with one scatter per rank."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(z) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, z)
        ctx.rows = slice(dist.get_rank() * len(z), (dist.get_rank() + 1) * len(z))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce is in place; autograd may hold `grad`
        dist.all_reduce(grad)
        return grad[ctx.rows]


def gather_batch(z: torch.Tensor) -> torch.Tensor:
    """``z`` (B,...) of every worker of the default process group, concatenated in rank order, with the
    gradient kept; ``z`` itself when no group is initialised. Every worker's B must be equal (training
    batches drop the remainder).

    Used for terms that are not sums over samples (the rank term): computed on the gathered batch, they
    equal the single-worker value for the same global batch. Each rank computes the same term, so the
    gradient reaching its own ``z`` is ``world`` times its share; DDP's average over ranks divides by
    ``world`` again, so the parameter gradient is that of the single-worker term.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return z
    return _GatherBatch.apply(z.contiguous())


def gradient_penalty(scores: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty ``mean((||d score / d input||_2 - 1)^2)`` over a batch (Gulrajani et al. 2017).

    ``scores`` (B,) or (B,1) are a critic's outputs on ``inputs`` (B,...) that require grad (points
    between real and fake samples). The graph is kept so the penalty itself can be back-propagated.
    Only ``inputs`` receive this gradient (no ``.grad`` of any parameter is touched), which keeps it
    compatible with DistributedDataParallel.
    """
    (grad,) = torch.autograd.grad(scores.sum(), inputs, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square().mean()


def wasserstein_estimate(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """The critic's estimate of the Wasserstein-1 distance: ``mean(C(real)) - mean(C(fake))``."""
    return real_scores.mean() - fake_scores.mean()


def bce_logits(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of ``logits`` against a constant label (1 real, 0 fake), stable in logit space."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def feature_matching(real_features: torch.Tensor, fake_features: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of discriminator features of real and reconstructed images (GANomaly's
    adversarial loss for its generator; Salimans et al. 2016)."""
    return (real_features - fake_features).square().mean()


def rank_energy(z: torch.Tensor, rank: int, eps: float = 1e-8) -> torch.Tensor:
    """Share of the batch's latent energy outside its ``rank`` leading singular directions, in [0, 1].

    ``z`` (B,D) is centred over the batch, then ``sum_{i>rank} s_i^2 / sum_i s_i^2`` of its singular
    values ``s``: zero exactly when the codes lie in an affine subspace of dimension ``rank``.
    Why this form rather than the nuclear norm ``sum_i s_i``: the nuclear norm also shrinks the
    leading directions, so an encoder lowers it by scaling every code down (which also shrinks
    ``||z - z'||`` and the anomaly score with it) instead of becoming low-rank. The ratio is invariant
    to that scale and, thanks to centring, to a common offset (which would otherwise inflate the
    first singular value and hide the tail), so only the shape of the code cloud is penalised.
    ``svdvals`` has numerically stable gradients even for repeated singular values (unlike ``svd``).
    A ``rank`` at or above ``min(B, D)`` leaves no tail: the term is 0.
    """
    zc = z - z.mean(0, keepdim=True)
    if not torch.isfinite(zc).all():  # svdvals raises on NaN/inf; a NaN term lets the loop report divergence
        return zc.sum() * float("nan")
    s2 = torch.linalg.svdvals(zc).square()
    return s2[rank:].sum() / (s2.sum() + eps)
