"""The surface every detector family implements, and small helpers shared by families.

A family owns its hyperparameters (a dataclass with the paper defaults), builds its networks as an
``nn.ModuleDict`` (one entry per separately optimised net, so the training loop can wrap each in
``DistributedDataParallel``), creates its optimisers, runs one training step and scores a batch.
The training loop, evaluation, checkpointing and reporting are shared and live elsewhere.

DDP rules for family code:
- call networks only as ``nets[key](...)``: DDP syncs gradients in the wrapper's ``forward``;
- reach attributes of a network only through ``unwrap(nets[key])``;
- ``score`` must not leave the networks in eval mode: decorate it with ``@scoring``;
- a net whose gradients a step throws away (a critic's during the generator's step) is called inside
  ``local_grads(nets[key])``, so DDP does not all-reduce gradients nobody uses;
- ``train_step`` returns ``self.terms({...})``: floats, or device tensors when the training loop asks.
"""

from __future__ import annotations

import abc
import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel


@dataclass
class Scores:
    """What a family says about a batch of slices; every tensor is detached."""

    recon: torch.Tensor  # (B,1,H,W) reconstruction
    pixel_map: torch.Tensor  # (B,1,H,W) anomaly map, higher = more anomalous
    slice_score: torch.Tensor  # (B,) one score per slice, higher = more anomalous
    latent_score: torch.Tensor | None = None  # (B,) ||z - z'|| where the family has z'


class Family(abc.ABC):
    """One detector family. Subclasses are registered with ``@register_family(name)``.

    Conventions the shared code relies on:
    - ``Hparams`` is a dataclass of int/float/bool/str fields with defaults; the main learning
      rate is called ``lr`` where there is one (tests raise it to train fast).
    - ``train_step`` returns python floats: the total under ``"loss"``, each term under its name
      (the training loop reports them as ``loss_<term>``).
    - ``trainable = False`` marks a family without learned weights (e.g. an intensity threshold):
      ``build`` may return an empty ModuleDict, ``optimizers`` ``{}``, and ``train_step`` ``{"loss": 0.0}``.
    - ``presets`` names the family's published settings: preset name -> ``Hparams`` overrides of the defaults,
      each value with its source. Study YAMLs name them (``caae/paper-lambda-1.0``) in ``points_to_evaluate``
      and the reproduction's runs are built from them (trainables/reproduce/runs.py). Declared on the class
      itself: a subclass does not inherit its parent's published settings.
    """

    name: ClassVar[str]
    Hparams: ClassVar[type]
    trainable: ClassVar[bool] = True
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    device_terms: bool = False  # set by the training loop: train_step's terms stay on the device (no host sync)

    def __init__(self, hparams) -> None:
        self.hp = hparams
        self.epoch = 0  # 0-based epoch being trained, set by the training loop (schedules such as a warm-up)
        self.epochs = 1  # the run's epoch budget, set with it (a schedule may be a share of the run)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by the training loop before each epoch's steps with the 0-based epoch and the run's budget
        (also after a restart)."""
        self.epoch, self.epochs = epoch, epochs

    @abc.abstractmethod
    def build(self, image_size: int) -> nn.ModuleDict:
        """Create the networks for square slices of side ``image_size``, one entry per optimised net."""

    @abc.abstractmethod
    def optimizers(self, nets: nn.ModuleDict) -> dict[str, torch.optim.Optimizer]:
        """Create the optimisers, keyed by name (names appear in checkpoints)."""

    @abc.abstractmethod
    def train_step(
        self, nets: nn.ModuleDict, opts: dict[str, torch.optim.Optimizer], x: torch.Tensor
    ) -> dict[str, float]:
        """One optimisation step on a batch ``x`` (B,1,H,W); returns the loss terms as floats."""

    @abc.abstractmethod
    def score(self, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        """Score a batch ``x`` (B,1,H,W) in eval mode without gradients (decorate with ``@scoring``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hp})"

    def terms(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        """What ``train_step`` returns for its loss terms: python floats read in one host sync, or (with
        ``device_terms`` set) detached float32 tensors left on the device, which the training loop sums
        there and reads once per epoch, so a GPU never waits for the host between steps."""
        detached = {key: value.detach().float() for key, value in values.items()}
        if self.device_terms:
            return detached  # type: ignore[return-value]
        return dict(zip(detached, torch.stack(list(detached.values())).tolist(), strict=True))


def unwrap(module: nn.Module) -> nn.Module:
    """The network inside a (Distributed)DataParallel wrapper, or the module itself."""
    return module.module if isinstance(module, (DistributedDataParallel, DataParallel)) else module


def local_grads(net: nn.Module) -> contextlib.AbstractContextManager:
    """Context for a forward whose gradients this step discards: DDP's ``no_sync`` (no all-reduce in the
    backward that follows), nothing for a plain module. The next optimiser step of ``net`` must be preceded
    by ``zero_grad``, since the local gradients stay in ``.grad``."""
    return net.no_sync() if isinstance(net, DistributedDataParallel) else contextlib.nullcontext()


@contextlib.contextmanager
def eval_mode(nets: nn.Module) -> Iterator[None]:
    """Put ``nets`` in eval mode for the block and restore each submodule's previous mode after."""
    modes = [(m, m.training) for m in nets.modules()]
    nets.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


F = TypeVar("F", bound=Callable[..., Scores])


def scoring(fn: F) -> F:
    """Decorator for ``Family.score``: runs it under ``torch.no_grad`` with the nets in eval mode, then restores."""

    @functools.wraps(fn)
    def wrapper(self: Family, nets: nn.ModuleDict, x: torch.Tensor) -> Scores:
        with torch.no_grad(), eval_mode(nets):
            return fn(self, nets, x)

    return wrapper  # type: ignore[return-value]


def parameters(nets: nn.ModuleDict, *keys: str) -> list[nn.Parameter]:
    """The parameters of the named nets (all nets if no key), for building an optimiser."""
    keys = keys or tuple(nets.keys())
    return [p for k in keys for p in nets[k].parameters()]
