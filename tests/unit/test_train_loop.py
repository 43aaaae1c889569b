"""The training loop's collective parts with 2 real gloo ranks (spawned processes, no Ray): validation
sharded across ranks and all-reduced equals one process scoring the whole split (and the exact path within
1e-3); the epoch's loss
terms, summed on the device and all-reduced once, equal the mean over both ranks' steps; a non-finite
step is named at the end of its epoch; the same epoch function runs without a process group."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from gloo_kit import join_group, leave_group, run_ranks

from trainables.data.dataset import TRAIN_FIELDS, ShardBatches, SliceDataset, slice_loader
from trainables.epoch import EpochLosses, NonFiniteLossError, train_epoch
from trainables.families import create_family
from trainables.metrics import evaluate
from trainables.stream_metrics import differences
from trainables.train_loop import _loss_metrics, _validate, _wrap_ddp

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def cache(tiny_cache: Path) -> Path:
    return tiny_cache


def _rank_main(rank: int, world: int, store: str, cache: str, out: dict) -> None:
    join_group(rank, world, store)
    torch.manual_seed(0)
    family = create_family("vae", {})
    family.device_terms = True
    nets = _wrap_ddp(family.build(32), CPU)
    opts = family.optimizers(nets)
    val = SliceDataset(Path(cache), "val")
    scored = _validate(family, nets, slice_loader(val, ShardBatches(len(val), 16, rank=rank, world=world)), CPU)
    train = SliceDataset(Path(cache), "train", fields=TRAIN_FIELDS)
    batches = ShardBatches(len(train), 8, shuffle=True, rank=rank, world=world, drop_last=True)
    losses = _loss_metrics(train_epoch(family, nets, opts, slice_loader(train, batches), CPU, 0), 0)
    bad = torch.full((8, 1, 32, 32), float("nan"))
    try:
        train_epoch(family, nets, opts, [{"image": bad}], CPU, 1)
        error = ""
    except NonFiniteLossError as err:
        error = str(err)
    out[rank] = {"val": scored, "losses": losses, "error": error, "steps": len(batches)}
    leave_group()


def test_sharded_validation_and_epoch_sums_over_two_gloo_ranks(cache: Path, tmp_path: Path) -> None:
    with mp.Manager() as manager:
        out = manager.dict()
        run_ranks(_rank_main, (2, str(tmp_path / "store"), str(cache), out))
        results = dict(out)
    torch.manual_seed(0)
    family = create_family("vae", {})
    val = SliceDataset(cache, "val")
    nets = family.build(32)
    alone = _validate(family, nets, slice_loader(val, ShardBatches(len(val), 16)), CPU)  # no process group
    exact = evaluate(family, nets, slice_loader(val, ShardBatches(len(val), 16)), CPU)
    assert results[1]["val"] is None  # only rank 0 computes
    gathered = results[0]["val"]
    assert gathered.keys() == alone.keys() == exact.keys()
    for key, value in alone.items():  # pooled histograms: the sharding does not change them
        assert (math.isnan(value) and math.isnan(gathered[key])) or gathered[key] == pytest.approx(value, rel=1e-9), key
    gaps = differences(exact, gathered)  # the streamed metrics against the exact (scikit-learn) path
    del gaps["best_threshold"]  # an argmax (see tests/unit/test_stream_metrics.py); best_dice is compared
    assert max(gaps.values()) <= 1e-3, max(gaps, key=gaps.get)
    train = len(SliceDataset(cache, "train"))
    for rank in (0, 1):
        losses = results[rank]["losses"]
        assert losses["workers"] == 2 and losses["train_slices"] == 2 * results[rank]["steps"] * 8
        assert losses["train_slices"] == (train // 2 // 8) * 16
        assert math.isfinite(losses["train_loss"]) and losses["train_loss"] > 0
        assert {"loss_recon", "loss_kl"} <= set(losses) and "first_step_at" in losses
    assert results[0]["losses"]["train_loss"] == results[1]["losses"]["train_loss"]  # all-reduced: one value
    assert "non-finite loss at epoch 2, step 1" in results[0]["error"]


def test_epoch_without_a_process_group() -> None:
    """The reproduction's case: one process, no process group; float terms (``device_terms`` unset) are summed
    like device ones, and a non-finite step is named at the end of its epoch."""
    torch.manual_seed(0)
    family = create_family("vae", {})
    nets = family.build(32)
    opts = family.optimizers(nets)
    batches = [{"image": torch.randn(4, 1, 32, 32)} for _ in range(3)]
    losses = train_epoch(family, nets, opts, batches, CPU, 0)
    assert (losses.workers, losses.steps, losses.slices) == (1, 3, 12) and losses.first_step_at is not None
    assert set(losses.means) == {"loss", "recon", "kl"} and all(math.isfinite(v) for v in losses.means.values())
    assert train_epoch(family, nets, opts, [], CPU, 1) == EpochLosses({}, 0, 0, 1, None)
    with pytest.raises(NonFiniteLossError, match="epoch 3, step 2"):
        train_epoch(family, nets, opts, [batches[0], {"image": torch.full((4, 1, 32, 32), math.nan)}], CPU, 2)


def test_precision_and_device_terms() -> None:
    """auto trains in fp32 on CPUs (bf16 only where asked or on CUDA); a family's terms stay tensors when the
    loop asks, floats otherwise."""
    from trainables.train_loop import _autocast

    with _autocast("auto", CPU)():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with _autocast("bf16", CPU)():
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        _autocast("fp16", CPU)
    family = create_family("vae", {})
    nets, x = family.build(32), torch.randn(4, 1, 32, 32)
    opts = family.optimizers(nets)
    assert all(isinstance(v, float) for v in family.train_step(nets, opts, x).values())
    family.device_terms = True
    terms = family.train_step(nets, opts, x)
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad for v in terms.values())
