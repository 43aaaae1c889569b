"""Detector families, registered by name. Importing this package registers every family module below."""

from trainables.families import vae  # noqa: F401  (registers "vae"; add new family modules here)
from trainables.families.base import Family, Scores, unwrap
from trainables.families.registry import create_family, family_hparams, family_names, register_family

__all__ = ["Family", "Scores", "create_family", "family_hparams", "family_names", "register_family", "unwrap"]
