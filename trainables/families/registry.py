"""Name -> family class registry (timm style): ``@register_family("vae")`` on a ``Family`` subclass."""

from __future__ import annotations

import dataclasses
import numbers
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from trainables.families.base import Family
from trainables.numbers import is_real

_FAMILIES: dict[str, type[Family]] = {}

T = TypeVar("T", bound=type[Family])
PRESET_SEPARATOR = "/"  # a preset is named "<family>/<preset>", e.g. "caae/paper-lambda-1.0"


def register_family(name: str) -> Callable[[T], T]:
    """Class decorator: register a ``Family`` subclass under ``name`` and set its ``name`` attribute."""

    def decorator(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, Family)):
            raise TypeError(f"@register_family({name!r}) expects a Family subclass, got {cls!r}")
        if not dataclasses.is_dataclass(getattr(cls, "Hparams", None)):
            raise TypeError(f"family {name!r}: {cls.__name__}.Hparams must be a dataclass")
        _check_presets(name, cls)
        known = _FAMILIES.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"family {name!r} is already registered by {known.__module__}.{known.__qualname__}")
        cls.name = name
        _FAMILIES[name] = cls
        return cls

    return decorator


def _check_presets(name: str, cls: type[Family]) -> None:
    """A preset's keys are fields of the family's Hparams (a typo fails at import, not in a trial)."""
    fields = {f.name for f in dataclasses.fields(cls.Hparams)}
    for preset, values in vars(cls).get("presets", {}).items():
        unknown = sorted(set(values) - fields)
        if unknown or PRESET_SEPARATOR in preset:
            problem = unknown or "a name with '/'"
            expected = f"a name without '/' and overrides of: {', '.join(sorted(fields))}"
            raise TypeError(f"family {name!r}: preset {preset!r} names {problem}; a preset is {expected}")


def family_names() -> list[str]:
    """The registered family names, sorted."""
    return sorted(_FAMILIES)


def searchable_family_names() -> list[str]:
    """Families a study may search: those with learned weights (the threshold is every study's baseline row)."""
    return [name for name in family_names() if _FAMILIES[name].trainable]


def family_class(name: str) -> type[Family]:
    """The class registered under ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown family {name!r}; known families: {', '.join(family_names())}") from None


def family_hparams(name: str) -> dict[str, Any]:
    """The default hyperparameters of family ``name``."""
    return dataclasses.asdict(family_class(name).Hparams())


def create_family(name: str, params: Mapping[str, Any] | None = None) -> Family:
    """Instantiate family ``name`` with defaults overridden by ``params`` (e.g. an Optuna trial's params).

    Raises ``ValueError`` naming an unknown family, an unknown hyperparameter key or a value of the wrong type.
    Numbers are coerced to the field's type (Optuna may give an int for a float field).
    """
    cls = family_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls.Hparams)}
    types = typing.get_type_hints(cls.Hparams)
    unknown = sorted(set(params or {}) - set(fields))
    if unknown:
        raise ValueError(
            f"family {name!r}: unknown hyperparameter(s) {', '.join(map(repr, unknown))}; "
            f"valid keys: {', '.join(fields)}"
        )
    values = {k: _coerce(name, k, v, types[k]) for k, v in (params or {}).items()}
    return cls(cls.Hparams(**values))


def _coerce(family: str, key: str, value: Any, typ: Any) -> Any:
    """Convert ``value`` to the field type ``typ`` where that loses nothing; raise ``ValueError`` otherwise."""
    ok = True
    if typ is bool:
        ok = isinstance(value, (bool, numbers.Integral)) and value in (0, 1)
        value = bool(value) if ok else value
    elif typ is int:
        ok = is_real(value) and float(value).is_integer()
        value = int(value) if ok else value
    elif typ is float:
        ok = is_real(value)
        value = float(value) if ok else value
    elif typ is str:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"family {family!r}: hyperparameter {key!r} expects {typ.__name__}, got {value!r}")
    return value


def family_presets(name: str) -> dict[str, dict[str, Any]]:
    """The published settings family ``name`` declares (its own ``presets``, not a parent class's): preset name ->
    overrides of its default hyperparameters."""
    return {preset: dict(values) for preset, values in vars(family_class(name)).get("presets", {}).items()}


def preset_names() -> list[str]:
    """Every preset as ``<family>/<preset>``, families sorted, each family's presets in declared order."""
    return [f"{name}{PRESET_SEPARATOR}{preset}" for name in family_names() for preset in family_presets(name)]


def preset_setting(ref: str) -> tuple[str, dict[str, Any]]:
    """The family and the hyperparameter overrides of preset ``ref`` (``"caae/paper-lambda-1.0"``);
    ``ValueError`` listing the known presets otherwise."""
    family, _, preset = str(ref).partition(PRESET_SEPARATOR)
    presets = family_presets(family) if family in _FAMILIES else {}
    if preset not in presets:
        raise ValueError(f"unknown preset {ref!r}; known presets: {', '.join(preset_names())}")
    return family, presets[preset]
