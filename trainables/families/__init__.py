"""Detector families, registered by name. Importing this package registers every family module below."""

# Importing a family module registers it; add new family modules here.
from trainables.families import aae, ae, caae, dae, lran, threshold, vae  # noqa: F401
from trainables.families.base import Family, Scores, unwrap
from trainables.families.registry import (
    create_family,
    family_hparams,
    family_names,
    register_family,
    searchable_family_names,
)

__all__ = [
    "Family",
    "Scores",
    "create_family",
    "family_hparams",
    "family_names",
    "register_family",
    "searchable_family_names",
    "unwrap",
]
