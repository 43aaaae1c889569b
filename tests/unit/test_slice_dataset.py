"""Unit tests of trainables.data.dataset: SliceDataset, whole-batch reads, the RAM copy of converted fields and
the per-rank batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from data_kit import make_cohort

from trainables.data.cache import SplitConfig, load_split, prepare_slice_cache
from trainables.data.dataset import SliceDataset
from trainables.data.preprocess import PreprocessConfig


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cohort(tmp_path_factory.mktemp("cohort"))


# ---------------------------------------------------------------- dataset


def test_slice_dataset(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    entry = prepare_slice_cache(*cohort, tmp_path, PreprocessConfig(), SplitConfig())
    val = SliceDataset(entry, "val")
    arrays = load_split(entry, "val")
    assert len(val) == len(arrays)
    item = val[len(val) - 1]
    assert item["image"].shape == item["brain"].shape == item["lesion"].shape == (1, 32, 32)
    assert item["image"].dtype == item["brain"].dtype == item["lesion"].dtype == torch.float32
    np.testing.assert_array_equal(item["image"][0].numpy(), arrays.images[-1])
    assert int(item["subject"]) == int(arrays.subject[-1])
    healthy = SliceDataset(entry, "val", healthy_only=True)
    assert 0 < len(healthy) < len(val)
    assert all(not val.lesion_subject[int(healthy[i]["subject"])] for i in range(len(healthy)))
    assert sum(float(healthy[i]["lesion"].sum()) for i in range(len(healthy))) == 0.0
    clone = pickle.loads(pickle.dumps(healthy))
    assert clone._arrays is None and len(clone) == len(healthy)
    torch.testing.assert_close(clone[0]["image"], healthy[0]["image"])
    batch = next(iter(torch.utils.data.DataLoader(val, batch_size=4)))
    assert batch["image"].shape == (4, 1, 32, 32)


def test_slice_loader_reads_whole_batches(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """A batch read at once equals the same slices read one by one, in ascending position order; the
    training loader reads only the images; rank shards cover a split once, as DistributedSampler would."""
    from torch.utils.data import BatchSampler, DistributedSampler

    from trainables.data.dataset import TRAIN_FIELDS, ShardBatches, slice_loader

    entry = prepare_slice_cache(*cohort, tmp_path, PreprocessConfig(), SplitConfig())
    val = SliceDataset(entry, "val", healthy_only=True)
    positions = [5, 0, 3]
    batch = val[positions]
    for row, position in enumerate(sorted(positions)):
        for key, value in val[position].items():
            torch.testing.assert_close(batch[key][row], value)
    assert set(batch) == {"image", "brain", "lesion", "subject", "slice_index", "appearance"}
    train = SliceDataset(entry, "train", fields=TRAIN_FIELDS)
    for rank in (0, 1):  # the same batches as DistributedSampler(drop_last) + BatchSampler, epoch by epoch
        ours = ShardBatches(len(train), 8, shuffle=True, seed=3, rank=rank, world=2, drop_last=True)
        theirs = DistributedSampler(range(len(train)), num_replicas=2, rank=rank, shuffle=True, seed=3, drop_last=True)
        for epoch in (0, 1):
            ours.set_epoch(epoch), theirs.set_epoch(epoch)
            assert [list(b) for b in ours] == list(BatchSampler(theirs, 8, drop_last=True))
        assert len(ours) == len(train) // 2 // 8
    seen = list(slice_loader(train, ours))
    assert set(seen[0]) == {"image"} and all(b["image"].shape == (8, 1, 32, 32) for b in seen)
    shards = [list(slice_loader(val, ShardBatches(len(val), 4, rank=r, world=2))) for r in (0, 1)]
    keys = torch.cat([b["slice_index"] * 1000 + b["subject"] for s in shards for b in s])
    assert len(keys) == len(val) == len(set(keys.tolist()))
    with pytest.raises(ValueError, match="fields"):
        SliceDataset(entry, "val", fields=("image", "mask"))


def test_converted_fields_in_ram_give_the_rows_of_the_memory_maps(cohort: tuple[Path, Path], tmp_path: Path) -> None:
    """Within the RAM budget the converted fields (masks, subject, slice index, appearance) come from one
    private copy per process; with a budget of 0 every batch converts from the maps: the same batches, bit
    for bit, dtypes and shapes; images are never copied; a pickled dataset reopens and decides again."""
    from trainables.data.dataset import FIELDS

    entry = prepare_slice_cache(*cohort, tmp_path, PreprocessConfig(), SplitConfig())
    in_ram, from_maps = SliceDataset(entry, "val"), SliceDataset(entry, "val", ram_budget=0)
    assert in_ram.in_ram == ("brain", "lesion", "subject", "slice_index", "appearance") and from_maps.in_ram == ()
    positions = np.array([7, 2, len(in_ram) - 1, 0, 5])
    before = positions.copy()
    a, b = in_ram[positions], from_maps[positions]
    np.testing.assert_array_equal(positions, before)  # the caller's positions are not sorted in place
    assert list(a) == list(b) == list(FIELDS)
    for key in FIELDS:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert a["image"].shape == (5, 1, 32, 32) and a["image"].dtype == torch.float32
    assert a["subject"].shape == (5,) and a["subject"].dtype == torch.int64
    arrays = load_split(entry, "val")
    np.testing.assert_array_equal(a["image"][:, 0].numpy(), arrays.images[np.sort(positions)])
    np.testing.assert_array_equal(a["lesion"][:, 0].numpy(), arrays.lesion[np.sort(positions)].astype(np.float32))
    expected = in_ram.subject_appearance[arrays.subject[np.sort(positions)]]
    np.testing.assert_array_equal(a["appearance"].numpy(), expected)
    a["image"] += 1  # each batch owns writable memory: the cache and later batches are untouched
    torch.testing.assert_close(in_ram[positions]["image"], b["image"], rtol=0, atol=0)
    single = in_ram[3]
    assert single["brain"].shape == (1, 32, 32) and single["slice_index"].shape == ()
    assert SliceDataset(entry, "val", fields=("image",)).in_ram == ()  # float32 already: read from the maps
    just_fits = sum(len(in_ram) * n for n in (2 * 32 * 32 * 4, 3 * 8))
    assert SliceDataset(entry, "val", ram_budget=just_fits).in_ram
    assert SliceDataset(entry, "val", ram_budget=just_fits - 1).in_ram == ()
    clone = pickle.loads(pickle.dumps(in_ram))
    assert clone._readers is None and clone.in_ram == in_ram.in_ram


def test_shard_batches_keep_the_remainder_without_drop_last() -> None:
    from trainables.data.dataset import ShardBatches

    for n, size, world in ((10, 4, 1), (11, 3, 2), (8, 4, 1), (3, 5, 1), (0, 2, 1)):
        seen = []
        for rank in range(world):
            batches = ShardBatches(n, size, shuffle=True, seed=1, rank=rank, world=world)
            got = [[int(p) for p in b] for b in batches]
            assert len(got) == len(batches) and all(len(b) == size for b in got[:-1])
            seen += sum(got, [])
            again = ShardBatches(n, size, shuffle=True, seed=1, rank=rank, world=world)
            again.set_epoch(1), batches.set_epoch(1)
            assert [list(b) for b in again] == [list(b) for b in batches]  # same seed and epoch, same order
        assert sorted(seen) == list(range(n))  # every position once over the ranks, none padded
