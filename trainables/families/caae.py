"""The first paper's proposal, the constrained AAE (Chen & Konukoglu, MIDL 2018): the AAE plus a latent
consistency term ``latent_weight * ||z - Enc(Dec(z))||^2`` (the paper's lambda), which asks a lesion image
and its (healthy-looking) reconstruction to share a code, so the reconstruction stays close to the input
outside the lesion. The term joins the auto-encoder step of the AAE's three-phase schedule, its second
encoder pass in inference mode as in the official code (which hard-codes lambda = 0.5); everything else
is the AAE's (``trainables.families.aae``). ``latent_weight = 0`` reproduces the AAE exactly for the same
seed (the second encoder pass is then skipped, see ``trainables.families.ae.reconstruction_terms``).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainables.families.aae import AAE, AAEHparams
from trainables.families.registry import register_family


@dataclass
class CAAEHparams(AAEHparams):
    latent_weight: float = 1.0  # lambda; the paper reports 0.5 (AUROC 0.906) and 1.0 (0.923, its best)


@register_family("caae")
class CAAE(AAE):
    """AAE with the latent consistency constraint; scores as the AAE (residual map, latent score)."""

    Hparams = CAAEHparams

    def __init__(self, hparams: CAAEHparams) -> None:
        super().__init__(hparams)
        if hparams.latent_weight < 0:
            raise ValueError(f"caae: latent_weight must be >= 0, got {hparams.latent_weight}")

    @property
    def latent_weight(self) -> float:
        """The paper's lambda."""
        return self.hp.latent_weight
