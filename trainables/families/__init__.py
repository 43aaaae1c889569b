"""Detector families, registered by name. Importing this package imports every module in it, so a family module
(one that applies ``@register_family``) registers itself by being here: found as search_spaces/ finds its
spaces, with nothing to list by hand (tests/unit/test_presets.py checks each family has a space and a preset)."""

import importlib
import pkgutil

from trainables.families.base import Family, Scores, unwrap
from trainables.families.registry import (
    create_family,
    family_hparams,
    family_names,
    family_presets,
    preset_names,
    preset_setting,
    register_family,
    searchable_family_names,
)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Family",
    "Scores",
    "create_family",
    "family_hparams",
    "family_names",
    "family_presets",
    "preset_names",
    "preset_setting",
    "register_family",
    "searchable_family_names",
    "unwrap",
]
