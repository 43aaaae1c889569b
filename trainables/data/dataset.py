"""A PyTorch dataset over one split of the slice cache, read a whole batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from trainables.data.cache import SliceArrays, load_split

FIELDS = ("image", "brain", "lesion", "subject", "slice_index")
TRAIN_FIELDS = ("image",)  # all the training step reads: the masks are only needed to score
_SOURCE = {"image": ("images", np.float32), "brain": ("brain", np.float32), "lesion": ("lesion", np.float32),
           "subject": ("subject", np.int64), "slice_index": ("slice_index", np.int64)}  # fmt: skip


class SliceDataset(Dataset):
    """Slices of one split of a cache entry, read from shared memory maps.

    An item is a dict of tensors: ``image`` (1,S,S) float32 (standardised), ``brain`` (1,S,S) float32 in
    {0, 1}, ``lesion`` (1,S,S) float32 in {0, 1}, ``subject`` int64 scalar (index into ``subject_ids``) and
    ``slice_index`` int64 scalar (axial index in the subject's canonical volume). Masks are float so they
    multiply images and losses directly. ``healthy_only`` keeps the slices of healthy-cohort subjects
    (a lesion subject's slices without lesion pixels are not kept: mass effect makes them atypical).
    ``fields`` limits what is read (training reads ``TRAIN_FIELDS`` only).

    Indexed with a list of positions (as ``slice_loader`` does), it returns the whole batch at once: one
    sorted fancy index per memory-mapped field instead of a small copy per slice and field, then a
    collate. A batch's rows come in ascending position order (sequential reads); which rows form a batch
    is the sampler's choice.

    Pickling (spawned DataLoader workers, Ray) sends only the path; each process reopens the memory maps.
    """

    def __init__(
        self, cache_dir: Path, split: str, healthy_only: bool = False, fields: Sequence[str] = FIELDS
    ) -> None:
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown or not fields:
            raise ValueError(f"fields must be a non-empty subset of {FIELDS}, got {tuple(fields)}")
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.healthy_only = healthy_only
        self.fields = tuple(fields)
        arrays = load_split(self.cache_dir, split)
        self.subject_ids = list(arrays.subject_ids)
        self.lesion_subject = np.asarray(arrays.lesion_subject)
        if healthy_only:
            self.indices = np.flatnonzero(~self.lesion_subject[np.asarray(arrays.subject)])
        else:
            self.indices = np.arange(len(arrays))
        self._arrays: SliceArrays | None = arrays

    @property
    def arrays(self) -> SliceArrays:
        """The split's memory maps, opened lazily in each process."""
        if self._arrays is None:
            self._arrays = load_split(self.cache_dir, self.split)
        return self._arrays

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, index: int | Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        if isinstance(index, int | np.integer):
            batch = self._rows(self.indices[[int(index)]])
            return {key: value[0] for key, value in batch.items()}
        return self._rows(np.sort(self.indices[np.asarray(index, dtype=np.int64)]))

    def _rows(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The chosen fields of cache rows ``rows``; images and masks get their channel axis (B,1,S,S)."""
        a, out = self.arrays, {}
        for key in self.fields:
            name, dtype = _SOURCE[key]
            # fancy indexing copies out of the page cache, so each tensor owns writable memory
            values = torch.from_numpy(np.asarray(getattr(a, name)[rows], dtype=dtype))
            out[key] = values[:, None] if values.ndim == 3 else values
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None  # a pickled np.memmap would carry the whole array; reopen instead
        return state


def slice_loader(
    dataset: SliceDataset,
    batch_size: int,
    *,
    sampler: Sampler[int] | Iterable[int] | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """Batches of ``dataset`` read whole: a BatchSampler over ``sampler`` (default: in order) hands the
    dataset lists of positions, and the loader does no collation of its own (``batch_size=None``).

    ``pin_memory`` and ``num_workers`` are for CUDA (page-locked batches copy to the GPU asynchronously,
    and workers read ahead); on the CPU the batch is read in the training process, which is faster than
    handing it over from a worker process.
    """
    batches = BatchSampler(sampler if sampler is not None else SequentialSampler(dataset), batch_size, drop_last)
    extra = {"persistent_workers": True, "prefetch_factor": 4} if num_workers > 0 else {}
    return DataLoader(
        dataset, sampler=batches, batch_size=None, pin_memory=pin_memory, num_workers=num_workers, **extra
    )
