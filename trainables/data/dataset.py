"""A PyTorch dataset over one split of the slice cache, read a whole batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainables.data.cache import SliceArrays, load_split

FIELDS = ("image", "brain", "lesion", "subject", "slice_index", "appearance")
TRAIN_FIELDS = ("image",)  # all the training step reads: the masks are only needed to score
_SOURCE = {"image": ("images", np.float32), "brain": ("brain", np.float32), "lesion": ("lesion", np.float32),
           "subject": ("subject", np.int64), "slice_index": ("slice_index", np.int64)}  # fmt: skip


class SliceDataset(Dataset):
    """Slices of one split of a cache entry, read from shared memory maps.

    An item is a dict of tensors: ``image`` (1,S,S) float32 (standardised), ``brain`` (1,S,S) float32 in
    {0, 1}, ``lesion`` (1,S,S) float32 in {0, 1}, ``subject`` int64 scalar (index into ``subject_ids``) and
    ``slice_index`` int64 scalar (axial index in the subject's canonical volume) and ``appearance`` int64
    scalar (the subject's lesion appearance code, see ``SliceArrays``; ``appearances`` names codes 1..k,
    for per-appearance metrics). Masks are float so they
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
        self.appearances = list(arrays.appearances)
        self.subject_appearance = np.asarray(arrays.subject_appearance)
        if healthy_only:
            self.indices = np.flatnonzero(~self.lesion_subject[np.asarray(arrays.subject)])
        else:
            self.indices = np.arange(len(arrays))
        self._arrays: SliceArrays | None = arrays
        self._plain: dict[str, np.ndarray] | None = None

    @property
    def arrays(self) -> SliceArrays:
        """The split's memory maps, opened lazily in each process."""
        if self._arrays is None:
            self._arrays = load_split(self.cache_dir, self.split)
        return self._arrays

    @property
    def _views(self) -> dict[str, np.ndarray]:
        """Plain ndarray views of the memory maps (same pages): indexing an np.memmap goes through its Python
        subclass hooks, about 0.1 ms per call, more than reading a whole batch of 32x32 slices."""
        if self._plain is None:
            a = self.arrays
            self._plain = {key: np.asarray(getattr(a, _SOURCE[key][0])) for key in self.fields if key in _SOURCE}
        return self._plain

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, index: int | Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        if isinstance(index, int | np.integer):
            batch = self._rows(self.indices[[int(index)]])
            return {key: value[0] for key, value in batch.items()}
        return self._rows(np.sort(self.indices[np.asarray(index, dtype=np.int64)]))

    def _rows(self, rows: np.ndarray) -> dict[str, torch.Tensor]:
        """The chosen fields of cache rows ``rows``; images and masks get their channel axis (B,1,S,S)."""
        views, out = self._views, {}
        for key in self.fields:
            if key == "appearance":  # per subject, not stored per slice: looked up from the slices' subjects
                subjects = np.asarray(self.arrays.subject)[rows]
                out[key] = torch.from_numpy(self.subject_appearance[subjects].astype(np.int64))
                continue
            # fancy indexing copies out of the page cache, so each tensor owns writable memory
            values = torch.from_numpy(np.asarray(views[key][rows], dtype=_SOURCE[key][1]))
            out[key] = values[:, None] if values.ndim == 3 else values
        return out

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = state["_plain"] = None  # a pickled np.memmap would carry the whole array; reopen instead
        return state


class ShardBatches:
    """Batches of positions for one DDP rank, as arrays: each epoch a permutation seeded by ``seed + epoch``
    (the same on every rank), this rank's every ``world``-th position from ``rank`` on, cut into batches.

    With ``drop_last`` every rank gets ``n // world`` positions and only whole batches, as DistributedSampler
    with drop_last and a BatchSampler give; without it a rank keeps its remainder (no padding, so in
    evaluation no slice is scored twice). Drawn with one randperm per epoch rather than one Python int per
    slice: for small slices the sampler was the slowest part of reading a batch.
    """

    def __init__(
        self, n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0, rank: int = 0, world: int = 1,
        drop_last: bool = False,
    ) -> None:  # fmt: skip
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world, got {batch_size}, {rank}, {world}")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world, self.drop_last, self.epoch = rank, world, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mine(self) -> np.ndarray:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).numpy()
        else:
            order = np.arange(self.n)
        stop = (self.n // self.world) * self.world if self.drop_last else self.n
        return order[self.rank : stop : self.world]

    def __len__(self) -> int:
        count = self.n // self.world if self.drop_last else len(range(self.rank, self.n, self.world))
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        mine = self._mine()
        stop = len(mine) - len(mine) % self.batch_size if self.drop_last else len(mine)
        for start in range(0, stop, self.batch_size):
            yield mine[start : start + self.batch_size]


def slice_loader(
    dataset: SliceDataset, batches: Iterable[Sequence[int] | np.ndarray], *, pin_memory: bool = False,
    num_workers: int = 0,
) -> Iterable[dict[str, torch.Tensor]]:  # fmt: skip
    """``dataset[positions]`` for each batch of positions ``batches`` yields (e.g. a ShardBatches): whole
    batches read at once.

    ``pin_memory`` and ``num_workers`` are for CUDA: a DataLoader pins each batch (page-locked memory copies
    to the GPU asynchronously) and its workers read ahead. Without them the batches are read right here:
    a DataLoader would add nothing but its per-batch profiler scope and conversion walk, which cost more
    than reading a batch of small slices.
    """
    if not pin_memory and num_workers == 0:
        return InProcessBatches(dataset, batches)
    extra = {"persistent_workers": True, "prefetch_factor": 4} if num_workers > 0 else {}
    return DataLoader(
        dataset, sampler=batches, batch_size=None, pin_memory=pin_memory, num_workers=num_workers, **extra
    )


class InProcessBatches:
    """An iterable of ``dataset[positions]`` for each batch of positions ``batches`` yields (reusable)."""

    def __init__(self, dataset: SliceDataset, batches: Iterable[Sequence[int] | np.ndarray]) -> None:
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for positions in self.batches:
            yield self.dataset[positions]
