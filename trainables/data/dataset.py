"""A PyTorch dataset over one split of the slice cache, read a whole batch at a time."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainables.data.cache import SliceArrays, load_split

FIELDS = ("image", "brain", "lesion", "subject", "slice_index", "appearance")
TRAIN_FIELDS = ("image",)  # all the training step reads: the masks are only needed to score
_SOURCE = {"image": ("images", np.float32), "brain": ("brain", np.float32), "lesion": ("lesion", np.float32),
           "subject": ("subject", np.int64), "slice_index": ("slice_index", np.int64)}  # fmt: skip
_DTYPE = {**{key: dtype for key, (_, dtype) in _SOURCE.items()}, "appearance": np.int64}  # as delivered
EVAL_BATCH = 256  # slices per scoring batch (val, test, the baseline): no gradients, so larger than training's
RAM_BUDGET = 64 << 20  # bytes per dataset and process for fields converted once and kept in RAM (see SliceDataset)


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
    ``take`` of the sorted rows per field into a new array that the tensor then owns, instead of a small
    copy per slice and field and a collate. A batch's rows come in ascending position order (sequential
    reads); which rows form a batch is the sampler's choice.

    Where the cache stores a field in another dtype than the one delivered (masks uint8, subject and slice
    index int32; appearance is looked up per subject), the split's column of it is converted once per
    process and kept in RAM, if all such columns together fit ``ram_budget`` bytes (``RAM_BUDGET``:
    64 MiB, each process its own private copy; ``in_ram`` names them); above it every batch converts what
    it reads. Images are float32 in the cache already: they are always read straight from the shared maps
    (a RAM copy reads no faster, and would cost one private copy per process instead of one shared copy in
    the page cache per node).

    Pickling (spawned DataLoader workers, Ray) sends only the path; each process reopens the memory maps.
    """

    def __init__(
        self, cache_dir: Path, split: str, healthy_only: bool = False, fields: Sequence[str] = FIELDS,
        ram_budget: int = RAM_BUDGET,
    ) -> None:  # fmt: skip
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown or not fields:
            raise ValueError(f"fields must be a non-empty subset of {FIELDS}, got {tuple(fields)}")
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.healthy_only = healthy_only
        self.fields = tuple(fields)
        self.ram_budget = ram_budget
        arrays = load_split(self.cache_dir, split)
        self.subject_ids = list(arrays.subject_ids)
        self.lesion_subject = np.asarray(arrays.lesion_subject)
        self.appearances = list(arrays.appearances)
        self.subject_appearance = np.asarray(arrays.subject_appearance)
        if healthy_only:
            self.indices = np.flatnonzero(~self.lesion_subject[np.asarray(arrays.subject)])
        else:
            self.indices = np.arange(len(arrays))
        self._every_row = not healthy_only  # position == cache row: no translation through ``indices``
        self._arrays: SliceArrays | None = arrays
        self._readers: tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...] | None = None
        self._in_ram: tuple[str, ...] = ()

    @property
    def arrays(self) -> SliceArrays:
        """The split's memory maps, opened lazily in each process."""
        if self._arrays is None:
            self._arrays = load_split(self.cache_dir, self.split)
        return self._arrays

    @property
    def in_ram(self) -> tuple[str, ...]:
        """The fields this process reads from its private RAM copy (converted once) rather than the maps."""
        self._open()
        return self._in_ram

    def _open(self) -> tuple[tuple[str, Callable[[np.ndarray], np.ndarray]], ...]:
        """One reader per field, made once per process (see the class doc for which read from RAM)."""
        if self._readers is None:
            self._readers, self._in_ram = _readers(self.arrays, self.fields, self.subject_appearance, self.ram_budget)
        return self._readers

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, index: int | Sequence[int] | np.ndarray) -> dict[str, torch.Tensor]:
        if isinstance(index, int | np.integer):
            rows = self.indices[[int(index)]]
            return {key: torch.from_numpy(read(rows))[0] for key, read in self._readers or self._open()}
        # a new array in both branches: sorting in place never touches the caller's positions
        rows = np.array(index, dtype=np.int64) if self._every_row else self.indices[np.asarray(index, dtype=np.int64)]
        rows.sort()
        # the hot path of every batch (~1 us of Python here is ~10% of reading 64 slices of 32x32): kept flat
        return {key: torch.from_numpy(read(rows)) for key, read in self._readers or self._open()}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = state["_readers"] = None  # a pickled np.memmap would carry the whole array; reopen
        return state


def _take_as(source: np.ndarray, dtype: type, rows: np.ndarray) -> np.ndarray:
    return source.take(rows, axis=0).astype(dtype)


def _column(arrays: SliceArrays, key: str, subject_appearance: np.ndarray) -> np.ndarray:
    """The split's stored column of ``key`` (a plain view of its memory map; appearance: per slice, by
    subject); images and masks with their channel axis (a view)."""
    if key == "appearance":
        return subject_appearance[np.asarray(arrays.subject)]  # small: one int16 per slice
    values = np.asarray(getattr(arrays, _SOURCE[key][0]))  # plain ndarray: np.memmap's subclass hooks are slow
    return values[:, None] if values.ndim == 3 else values


def _readers(arrays: SliceArrays, fields: Sequence[str], subject_appearance: np.ndarray, budget: int) -> tuple:
    """(key, read) for each of ``fields``, ``read(rows)`` a new array of the delivered dtype (the tensor owns
    writable memory), and the keys read from RAM. Fields stored as delivered are read from the maps; the
    others from a converted RAM copy when all of them fit ``budget`` bytes, else converted batch by batch.
    ``ndarray.take`` bound with ``partial``: no Python frame per field and batch (np.take adds ~1 us)."""
    columns = {key: _column(arrays, key, subject_appearance) for key in fields}
    convert = [key for key in fields if columns[key].dtype != _DTYPE[key]]
    in_ram = sum(columns[key].size * np.dtype(_DTYPE[key]).itemsize for key in convert) <= budget
    readers = []
    for key in fields:
        if key in convert and in_ram:
            columns[key] = np.ascontiguousarray(columns[key], dtype=_DTYPE[key])
        if key in convert and not in_ram:
            readers.append((key, functools.partial(_take_as, columns[key], _DTYPE[key])))
        else:
            readers.append((key, functools.partial(columns[key].take, axis=0)))
    return tuple(readers), tuple(convert) if in_ram else ()


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
        self._generator = torch.Generator()  # reseeded each epoch (manual_seed resets its whole state)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _mine(self) -> np.ndarray:
        if self.shuffle:
            order = torch.randperm(self.n, generator=self._generator.manual_seed(self.seed + self.epoch)).numpy()
        else:
            order = np.arange(self.n)
        stop = (self.n // self.world) * self.world if self.drop_last else self.n
        return order[self.rank : stop : self.world]

    def __len__(self) -> int:
        count = self.n // self.world if self.drop_last else len(range(self.rank, self.n, self.world))
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        mine = self._mine()
        whole = len(mine) - len(mine) % self.batch_size
        batches = iter(mine[:whole].reshape(-1, self.batch_size))  # rows of a 2-D view: no per-batch Python slicing
        if self.drop_last or whole == len(mine):
            return batches
        return itertools.chain(batches, (mine[whole:],))


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
    """An iterable of ``dataset[positions]`` for each batch of positions ``batches`` yields (reusable; a
    ``map``, so no generator frame per batch)."""

    def __init__(self, dataset: SliceDataset, batches: Iterable[Sequence[int] | np.ndarray]) -> None:
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return map(self.dataset.__getitem__, self.batches)
