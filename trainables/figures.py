"""Figures of a detector on one split, as in the first paper: ROC curves, example slices, residual histograms.

- ``<split>_roc.png``: slice-level and pixel-level (inside the brain) ROC curves with their AUROC;
- ``<split>_examples.png``: input / reconstruction / residual / ground truth for the slices with the largest
  lesions (the first paper's Figure 3); with a threshold, the predicted region is outlined on the ground truth;
- ``<split>_histograms.png``: map values of healthy-brain and lesion pixels with Gaussian fits (its Figure 5)
  and the healthy 95% interval that ``overlap_pct`` counts.

One streaming pass scores the split into both accumulators: the numbers come from ``StreamingMetrics`` (as
val's, trainables.stream_metrics), the curves from ``DetectionMetrics``. Memory: the ROC curves and histograms
read the exact accumulator, so they are exact and cost its 5 bytes per pixel (see trainables.metrics);
the example grid keeps only ``n_examples`` slices. Drawing uses matplotlib's Agg canvas on ``Figure``
objects, never pyplot: no global backend or figure registry is touched inside Ray workers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn

from trainables.families.base import Family, Scores
from trainables.metrics import DetectionMetrics, appearances_of, healthy_interval, unpack_batch
from trainables.stream_metrics import StreamingMetrics

N_EXAMPLES = 4  # rows of the example grid
DPI = 110


class ExampleSlices:
    """The ``n`` slices of a stream with the largest lesion area, at most one per subject where batches say
    which subject a slice is from; slices without lesion rank by slice score.

    Keeps at most ``n`` slices (image, reconstruction, map and masks), whatever the stream's length: a
    subject whose best slice leaves the top ``n`` can come back only with a better one, so the result is the
    top ``n`` subjects by their best slice.
    """

    def __init__(self, n: int = N_EXAMPLES) -> None:
        self.n = n
        self._kept: dict[object, tuple[tuple[int, float, int], dict[str, np.ndarray]]] = {}  # group -> (key, arrays)
        self._order = itertools.count()

    def update(
        self,
        image: torch.Tensor,
        scores: Scores,
        brain: torch.Tensor,
        lesion: torch.Tensor,
        subject: torch.Tensor | None = None,
    ) -> None:
        """Offer a batch of (B,1,H,W) slices (``subject``: (B,) ids, optional); only kept slices are copied."""
        areas = (lesion > 0.5).flatten(1).sum(1).tolist()
        slice_scores = scores.slice_score.detach().float().cpu().tolist()
        groups = subject.tolist() if subject is not None else [None] * len(areas)
        for i, (area, score, group) in enumerate(zip(areas, slice_scores, groups, strict=True)):
            order = next(self._order)
            key = (int(area), score if math.isfinite(score) else -math.inf, -order)  # earlier wins ties
            group = ("slice", order) if group is None else group
            if not self._admits(group, key):
                continue
            arrays = {"image": image, "recon": scores.recon, "map": scores.pixel_map, "brain": brain, "lesion": lesion}
            self._kept[group] = (key, {k: v[i, 0].detach().float().cpu().numpy().copy() for k, v in arrays.items()})
            if len(self._kept) > self.n:
                del self._kept[min(self._kept, key=lambda g: self._kept[g][0])]

    def _admits(self, group: object, key: tuple[int, float, int]) -> bool:
        """Whether a slice beats its subject's kept slice, or enters the top ``n`` subjects."""
        if group in self._kept:
            return key > self._kept[group][0]
        return len(self._kept) < self.n or key > min(k for k, _ in self._kept.values())

    def slices(self) -> list[tuple[int, float, dict[str, np.ndarray]]]:
        """(lesion area, slice score, arrays) of the kept slices, largest lesion first."""
        ranked = sorted(self._kept.values(), key=lambda item: item[0], reverse=True)
        return [(key[0], key[1], arrays) for key, arrays in ranked]


@dataclass
class SplitRecord:
    """What one pass over a split keeps: the exact accumulator (its curves and values draw the figures), the
    streamed one where asked for (its ``compute`` gives the numbers, the way val's are computed; its histograms
    take 16 MB per appearance group) and the example slices."""

    metrics: DetectionMetrics = field(default_factory=DetectionMetrics)
    examples: ExampleSlices = field(default_factory=ExampleSlices)
    streamed: StreamingMetrics | None = None


def collect(
    family: Family, nets: nn.ModuleDict, loader: Iterable, device: torch.device, n_examples: int = N_EXAMPLES,
    threshold: float | None = None, stream: bool = False,
) -> SplitRecord:  # fmt: skip
    """Score every batch of ``loader`` once, feeding the exact accumulator, with ``stream`` the streamed one too
    (``threshold``: its ``dice``'s; a trial's test numbers), and the example picker."""
    appearances = appearances_of(loader)
    streamed = StreamingMetrics(appearances, threshold=threshold, device=device) if stream else None
    record = SplitRecord(DetectionMetrics(appearances), ExampleSlices(n_examples), streamed)
    for batch in loader:
        image, brain, lesion = unpack_batch(batch)
        scores = family.score(nets, image.to(device, non_blocking=True))
        record.metrics.update_batch(scores, batch)
        if streamed is not None:
            streamed.update_batch(scores, batch)
        subject = batch.get("subject") if isinstance(batch, Mapping) else None
        record.examples.update(image, scores, brain, lesion, subject)
    return record


def render(
    record: SplitRecord, metrics: dict[str, float], out_dir: Path, split: str, threshold: float | None = None
) -> list[Path]:
    """Draw the three figures of a collected split; nothing when the split had no slice."""
    if record.metrics.n_slices == 0:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {
        "roc": _roc_figure(record.metrics, metrics, split),
        "examples": _examples_figure(record.examples, split, threshold),
        "histograms": _histogram_figure(record.metrics, metrics, split),
    }
    paths = []
    for name, fig in figures.items():
        path = out_dir / f"{split}_{name}.png"
        FigureCanvasAgg(fig)  # attach the Agg canvas: PNG output without pyplot
        fig.savefig(path, dpi=DPI)
        paths.append(path)
    return paths


def _roc_figure(acc: DetectionMetrics, metrics: dict[str, float], split: str) -> Figure:
    """Slice-level and pixel-level ROC curves side by side, with the chance diagonal."""
    fig = Figure(figsize=(8.4, 4.0), layout="constrained")
    curves = acc.roc_curves()
    for ax, level, auc_key in zip(fig.subplots(1, 2), ("slice", "pixel"), ("slice_auroc", "pixel_auroc"), strict=True):
        ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1)
        curve = curves[level]
        if curve is None:
            ax.text(0.5, 0.5, "undefined: one class only", ha="center", va="center")
        else:
            ax.plot(*curve, linewidth=2, label=f"AUROC {metrics[auc_key]:.3f}")
            ax.legend(loc="lower right")
        where = "slices" if level == "slice" else "pixels inside the brain"
        ax.set(title=f"{split}: {where}", xlabel="false positive rate", ylabel="true positive rate")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), aspect="equal")
    return fig


def _show(ax: Axes, array: np.ndarray, **kwargs: object) -> None:
    """A slice as stored (x left-to-right, y posterior-to-anterior) with anterior up."""
    ax.imshow(array.T, origin="lower", interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def _examples_figure(examples: ExampleSlices, split: str, threshold: float | None) -> Figure:
    """Rows of input / reconstruction / residual / ground truth (the first paper's Figure 3)."""
    rows = examples.slices()
    fig = Figure(figsize=(8.0, 2.1 * max(len(rows), 1) + 0.4), layout="constrained")
    axes = np.atleast_2d(fig.subplots(max(len(rows), 1), 4, squeeze=False))
    maps = [arrays["map"][arrays["brain"] > 0.5] for _, _, arrays in rows]
    values = np.concatenate(maps) if maps else np.zeros(1)
    vmin, vmax = np.quantile(values, [0.005, 0.995]) if values.size else (0.0, 1.0)
    for column, title in enumerate(("input", "reconstruction", "residual map", "ground truth")):
        axes[0, column].set_title(title)
    for row, (area, score, arrays) in zip(axes, rows, strict=False):
        inside = arrays["image"][arrays["brain"] > 0.5]
        lo, hi = np.quantile(inside, [0.005, 0.995]) if inside.size else (-1.0, 1.0)
        _show(row[0], arrays["image"], cmap="gray", vmin=lo, vmax=hi)
        _show(row[1], arrays["recon"], cmap="gray", vmin=lo, vmax=hi)
        _show(row[2], arrays["map"], cmap="inferno", vmin=vmin, vmax=max(vmax, vmin + 1e-6))
        _show(row[3], 0.35 * (arrays["brain"] > 0.5) + 0.65 * (arrays["lesion"] > 0.5), cmap="gray", vmin=0, vmax=1)
        predicted = (arrays["map"] >= threshold) & (arrays["brain"] > 0.5) if threshold is not None else None
        if predicted is not None and predicted.any() and not predicted.all():
            row[3].contour(predicted.T.astype(float), levels=[0.5], colors="red", linewidths=1)
        row[0].set_ylabel(f"lesion {area} px" if area else f"score {score:.3g}")
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no slice", ha="center", va="center")
    note = f", red: map >= {threshold:.3g} (val threshold)" if threshold is not None else ""
    fig.suptitle(f"{split}: slices with the largest lesions{note}")
    return fig


def _histogram_figure(acc: DetectionMetrics, metrics: dict[str, float], split: str) -> Figure:
    """Healthy and lesion map values (density) with Gaussian fits and the healthy 95% interval."""
    fig = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = fig.subplots()
    healthy, lesion = acc.pixel_values()
    if healthy.size + lesion.size == 0:
        ax.text(0.5, 0.5, "no brain pixel", ha="center", va="center")
        return fig
    # per-class 0.1% tails left out of the axes: a few extreme pixels would squash every bin into one
    ends = np.array([np.quantile(v, [0.001, 0.999]) for v in (healthy, lesion) if v.size])
    lo, hi = float(ends[:, 0].min()), float(ends[:, 1].max())
    bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 81)
    grid = np.linspace(bins[0], bins[-1], 400)
    for name, values, colour in (("healthy", healthy, "tab:blue"), ("lesion", lesion, "tab:red")):
        if values.size == 0:
            continue
        ax.hist(values, bins=bins, density=True, alpha=0.45, color=colour, label=name)
        mu, sigma = metrics[f"{name}_mu"], metrics[f"{name}_sigma"]
        if math.isfinite(mu) and math.isfinite(sigma) and sigma > 0:
            pdf = np.exp(-0.5 * ((grid - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
            ax.plot(grid, pdf, color=colour, linewidth=2, label=f"{name} fit: mu {mu:.3g}, sigma {sigma:.3g}")
    if healthy.size:
        ax.axvspan(*healthy_interval(healthy), color="tab:blue", alpha=0.08, label="healthy 95% interval")
    overlap = metrics.get("overlap_pct", math.nan)
    ax.set(xlabel="anomaly map value", ylabel="density", title=f"{split}: overlap {overlap:.1f}% of lesion pixels")
    ax.legend(fontsize="small")
    return fig
