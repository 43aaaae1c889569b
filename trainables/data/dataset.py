"""A PyTorch dataset over one split of the slice cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from trainables.data.cache import SliceArrays, load_split


class SliceDataset(Dataset):
    """Slices of one split of a cache entry, read from shared memory maps.

    An item is a dict of tensors: ``image`` (1,S,S) float32 (standardised), ``brain`` (1,S,S) float32 in
    {0, 1}, ``lesion`` (1,S,S) float32 in {0, 1}, ``subject`` int64 scalar (index into ``subject_ids``) and
    ``slice_index`` int64 scalar (axial index in the subject's canonical volume) and ``appearance`` int64
    scalar (the subject's lesion appearance code, see ``SliceArrays``; ``appearances`` names codes 1..k,
    for per-appearance metrics). Masks are float so they
    multiply images and losses directly. ``healthy_only`` keeps the slices of healthy-cohort subjects
    (a lesion subject's slices without lesion pixels are not kept: mass effect makes them atypical).

    Pickling (spawned DataLoader workers, Ray) sends only the path; each process reopens the memory maps.
    """

    def __init__(self, cache_dir: Path, split: str, healthy_only: bool = False) -> None:
        self.cache_dir = Path(cache_dir)
        self.split = split
        self.healthy_only = healthy_only
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

    @property
    def arrays(self) -> SliceArrays:
        """The split's memory maps, opened lazily in each process."""
        if self._arrays is None:
            self._arrays = load_split(self.cache_dir, self.split)
        return self._arrays

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = int(self.indices[index])
        a = self.arrays
        # np.array copies the page-cache-backed slice, so the tensor owns writable memory
        return {
            "image": torch.from_numpy(np.array(a.images[i], dtype=np.float32))[None],
            "brain": torch.from_numpy(np.array(a.brain[i], dtype=np.float32))[None],
            "lesion": torch.from_numpy(np.array(a.lesion[i], dtype=np.float32))[None],
            "subject": torch.tensor(int(a.subject[i]), dtype=torch.int64),
            "slice_index": torch.tensor(int(a.slice_index[i]), dtype=torch.int64),
            "appearance": torch.tensor(int(self.subject_appearance[a.subject[i]]), dtype=torch.int64),
        }

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"] = None  # a pickled np.memmap would carry the whole array; reopen instead
        return state
