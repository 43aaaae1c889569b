"""A few fixed val slices and their anomaly maps after each epoch, as one small PNG, so MLflow's image grid
compares trials and epochs.

Rank 0 scores the same ``SLICES`` val slices every epoch (those with the most lesion pixels, spread over the
split's lesion subjects), tiles image / anomaly map / lesion outline into a grey PNG of a few kilobytes and
puts it, base64-encoded, in the epoch's report under ``RESULT_KEY``; the driver's MLflow callback logs it with
``MlflowClient.log_image(key=IMAGE_KEY, step=epoch)`` (workers never talk to MLflow).
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where maps are drawn (a worker): the driver only decodes PNGs
    import torch
    from torch import nn

SLICES = 4  # columns of the grid: cheap to score (one batch) and enough to see what a detector flags
RESULT_KEY = "val_maps_png"  # the epoch report's entry (base64 PNG); not a metric
IMAGE_KEY = "val_anomaly_maps"  # MLflow's image key: one image per epoch (step)
SCALE = 2  # pixels per slice pixel in the PNG: 32x32 slices are too small to read at 1:1


def fixed_val_slices(cache_dir: Path) -> dict[str, np.ndarray]:
    """The val slices shown every epoch: the slice with the most lesion pixels of each of the first ``SLICES``
    lesion subjects (the largest lesion slices overall where fewer subjects), as image (n,S,S) and lesion."""
    from trainables.data.dataset import SliceDataset

    data = SliceDataset(cache_dir, "val", fields=("image", "lesion", "subject"))
    every = data[np.arange(len(data))]
    area = every["lesion"].flatten(1).sum(1).numpy()
    subjects = every["subject"].numpy()
    best_per_subject = [int(np.flatnonzero(subjects == s)[np.argmax(area[subjects == s])]) for s in np.unique(subjects)]
    chosen = sorted((i for i in best_per_subject if area[i] > 0), key=lambda i: -area[i])[:SLICES]
    if len(chosen) < SLICES:  # few lesion subjects: fill with the next largest lesion slices
        chosen += [int(i) for i in np.argsort(-area) if int(i) not in chosen][: SLICES - len(chosen)]
    rows = np.asarray(sorted(chosen))
    return {"image": every["image"][rows, 0].numpy(), "lesion": every["lesion"][rows, 0].numpy()}


def val_maps_png(family: object, nets: nn.ModuleDict, shown: dict[str, np.ndarray], device: torch.device) -> str:
    """The base64 PNG of the slices (top), their anomaly maps scaled to the maps' joint 99th percentile
    (middle) and the lesion masks (bottom)."""
    import torch
    from PIL import Image

    with torch.no_grad():
        batch = torch.from_numpy(shown["image"][:, None]).to(device)
        maps = family.score(nets, batch).pixel_map[:, 0].float().cpu().numpy()
    top = max(float(np.percentile(maps, 99)), 1e-12)
    rows = [_grey(shown["image"]), _grey(np.clip(maps / top, 0.0, 1.0), 0.0, 1.0), _grey(shown["lesion"], 0.0, 1.0)]
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    grid = np.kron(grid, np.ones((SCALE, SCALE), dtype=np.uint8))
    buffer = io.BytesIO()
    Image.fromarray(grid, mode="L").save(buffer, format="PNG", optimize=True)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    """The grey image (H, W) uint8 of a ``val_maps_png`` string (on the driver, before logging it)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def _grey(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    return (np.clip((values - low) / max(high - low, 1e-12), 0.0, 1.0) * 255).astype(np.uint8)
