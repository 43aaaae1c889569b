"""Detection metrics shared by the training loop, the study, the CLIs and the tests, streamed over batches.

Definitions (names as in docs/design.md, without the ``val_``/``test_`` prefix):
- a slice is positive if it has any lesion pixel (a lesion subject's lesion-free slices are negatives);
  its score is ``Scores.slice_score``;
- ``pixel_*`` use ``Scores.pixel_map`` on pixels inside the brain mask, a pixel being positive if it
  is in the lesion mask; ``pixel_auroc_all`` uses every pixel of the slice;
- ``healthy_*`` / ``lesion_*``: mean and (population) std of the map on healthy-brain / lesion pixels
  inside the brain;
- ``overlap_pct``: share (in %) of lesion pixels whose value lies inside the 95% interval of the
  healthy-brain values (the first paper's Table 2), taken as the empirical central interval between the
  2.5th and 97.5th percentiles (numpy's linear interpolation), bounds included. Not ``mu +- 1.96 sigma``:
  residual magnitudes ``|x - x'|`` are skewed and bounded below by 0, so a Gaussian interval reaches below 0
  and misplaces its upper end, while the empirical one holds 95% of healthy pixels by construction. The
  Gaussian fits the paper drew (its Figure 5) are drawn by ``trainables.figures``;
- ``best_dice`` / ``best_threshold``: the pooled pixel Dice inside the brain at the threshold that
  maximises it on this same split (an oracle); ``dice``: at a given threshold (chosen on val), a pixel being
  predicted positive when its value is ``>= threshold``.
A metric that is undefined on the data (a single class, no lesion pixel, no data) is NaN.

Per lesion appearance (where the data says each slice's appearance code, see trainables.data.cache): every
metric of ``APPEARANCE_METRICS`` is also computed on the slices of healthy subjects plus those of the lesion
subjects of one appearance, i.e. as if the split held only that kind of lesion, and reported as
``<metric>_<appearance>``. Slices of lesion subjects without a recorded appearance join no subset.

Two accumulators, one name each, the same metric names and definitions:
- ``DetectionMetrics`` (here), exact: keeps every pixel's value and computes with scikit-learn. For what
  needs the values themselves: the figures (``roc_curves``, ``pixel_values``: ``trainables.figures``, so
  the trial's one pass over test, which draws them), ``evaluate`` (the CLIs, the baseline, the tests).
- ``StreamingMetrics`` (``trainables.stream_metrics``), constant memory, one all-reduce over ranks: the
  training loop's val every epoch. Within 1e-3 of this exact path (``overlap_pct`` within 0.1 percentage
  point) on the test fixtures and the bench (``python -m study.bench --only metrics``).

Memory: ``DetectionMetrics`` keeps, on the CPU until ``compute``, one float32 score plus one uint8 mask code
(brain, lesion) per pixel, i.e. 5 bytes per pixel (e.g. 10,000 slices of 128x128: ~0.8 GB), and 5 bytes per
slice; ``compute`` joins the batches once and sorts the scores (inside scikit-learn), which needs transiently
about 25 more bytes per pixel, and takes about 6 s per million pixels on the 2-core machine. Fixed bins
need no range fitting when they are keyed on the float32 bit pattern made order-preserving (its top 18
bits: sign, exponent and 9 mantissa bits, a relative width of at most 2**-9 over the whole float range):
``StreamingMetrics`` keeps per-bin counts and float64 sums, 16 MB per appearance group whatever the number
of pixels; its AUROC/AP errors come only from lesion and healthy values sharing a bin, and the per-bin sums
make single-valued bins (ties) exact (models and error bound: its module docstring).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
from torch import nn

from trainables.families.base import Family, Scores
from trainables.metric_names import APPEARANCE_METRICS

NAN = float("nan")


def _numpy(t: torch.Tensor, dtype: type) -> np.ndarray:
    return t.detach().to("cpu").numpy().astype(dtype, copy=False).reshape(-1)


def _cat(chunks: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype)


def _ranking(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(AUROC, average precision), or NaN for both when ``labels`` has a single class."""
    if labels.size == 0 or labels.all() or not labels.any():
        return NAN, NAN
    return float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores))


def _pixel_ranking(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float, float]:
    """(AUROC, AP, best Dice, its threshold) for the pixels inside the brain."""
    ap, dice, threshold = pr_summary(labels, scores)
    if labels.size == 0 or labels.all() or not labels.any():
        return NAN, NAN, dice, threshold
    return float(roc_auc_score(labels, scores)), ap, dice, threshold


def _moments(values: np.ndarray) -> tuple[float, float]:
    """Mean and population std, accumulated in float64; NaN when empty."""
    if values.size == 0:
        return NAN, NAN
    return float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))


def dice_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Pooled Dice of ``scores >= threshold`` against boolean ``labels``; NaN if both are empty."""
    pred = scores >= threshold
    denom = int(pred.sum()) + int(labels.sum())
    return 2.0 * int((pred & labels).sum()) / denom if denom else NAN


def pr_summary(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    """(average precision, best Dice, its threshold) from one precision-recall curve; NaN if no positive.

    AP is computed as sklearn's ``average_precision_score`` does (equal to it); Dice is the F1 score, so the
    best Dice over all thresholds is read off the same curve, saving a sort of every pixel.
    """
    if not labels.any():
        return NAN, NAN, NAN
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    ap = -float(np.sum(np.diff(recall) * precision[:-1]))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1[:-1]))  # the last PR point (recall 0) has no threshold
    return ap, float(f1[i]), float(thresholds[i])


def overlap_pct(healthy: np.ndarray, lesion: np.ndarray) -> float:
    """Share (%) of lesion values inside ``[q2.5, q97.5]`` of the healthy values (empirical percentiles).

    See the module docstring for why the empirical interval and not a Gaussian ``mu +- 1.96 sigma``.
    NaN when either set is empty.
    """
    if healthy.size == 0 or lesion.size == 0:
        return NAN
    lo, hi = healthy_interval(healthy)
    return float(100.0 * np.mean((lesion >= lo) & (lesion <= hi)))


def healthy_interval(healthy: np.ndarray) -> tuple[float, float]:
    """The 95% interval of healthy values used by ``overlap_pct``: their 2.5th and 97.5th percentiles."""
    lo, hi = np.quantile(healthy, [0.025, 0.975])
    return float(lo), float(hi)


BRAIN, LESION = 1, 2  # bits of the per-pixel mask code kept by DetectionMetrics


class DetectionMetrics:
    """Accumulate scores and masks batch by batch with ``update``; ``compute`` returns every metric.

    ``roc_curves`` and ``pixel_values`` read the same accumulated values (for figures), so one pass over a
    split gives both the metrics and its pictures.
    """

    def __init__(self, appearances: Sequence[str] = ()) -> None:
        self.appearances = list(appearances)  # names of appearance codes 1..k
        self.slice_codes: list[np.ndarray] = []  # int16 per slice: 0 healthy subject, k appearance, -1 unknown
        self.slice_scores: list[np.ndarray] = []
        self.slice_labels: list[np.ndarray] = []
        self.pixel_scores: list[np.ndarray] = []  # float32, every pixel
        self.pixel_codes: list[np.ndarray] = []  # uint8, every pixel: BRAIN | LESION bits

    def update(
        self, scores: Scores, brain: torch.Tensor, lesion: torch.Tensor, appearance: torch.Tensor | None = None
    ) -> None:
        """Add a batch: ``brain`` and ``lesion`` are (B,1,H,W) masks (bool, or float > 0.5 = inside);
        ``appearance`` (B,) the slices' appearance codes (None: unknown, -1)."""
        lesion_b = (lesion > 0.5) if lesion.is_floating_point() else lesion.bool()
        brain_b = (brain > 0.5) if brain.is_floating_point() else brain.bool()
        if scores.pixel_map.shape != lesion_b.shape or brain_b.shape != lesion_b.shape:
            raise ValueError(
                f"shape mismatch: pixel_map {tuple(scores.pixel_map.shape)}, brain {tuple(brain_b.shape)}, "
                f"lesion {tuple(lesion_b.shape)}"
            )
        self.slice_scores.append(_numpy(scores.slice_score, np.float32))
        self.slice_labels.append(_numpy(lesion_b.flatten(1).any(1), bool))
        self.pixel_scores.append(_numpy(scores.pixel_map, np.float32))
        code = _numpy(brain_b, np.uint8) | (_numpy(lesion_b, np.uint8) << 1)
        self.pixel_codes.append(code)
        n = len(self.slice_labels[-1])
        codes = np.full(n, -1, np.int16) if appearance is None else _numpy(appearance, np.int16)
        self.slice_codes.append(codes)

    def update_batch(self, scores: Scores, batch: Any) -> None:
        """``update`` from a loader batch (``unpack_batch``), with its ``appearance`` codes where it has them."""
        _, brain, lesion = unpack_batch(batch)
        appearance = batch.get("appearance") if isinstance(batch, Mapping) else None
        self.update(scores, brain, lesion, appearance)

    @property
    def n_slices(self) -> int:
        """Slices seen so far."""
        return sum(len(chunk) for chunk in self.slice_labels)

    def _slices(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of every slice seen."""
        return _cat(self.slice_labels, bool), _cat(self.slice_scores, np.float32)

    def _pixels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores, brain, lesion) of every pixel seen; batches are joined once and kept joined."""
        if len(self.pixel_scores) > 1:  # later calls (curves, histograms) reuse the joined arrays
            self.pixel_scores = [_cat(self.pixel_scores, np.float32)]
            self.pixel_codes = [_cat(self.pixel_codes, np.uint8)]
        scores, code = _cat(self.pixel_scores, np.float32), _cat(self.pixel_codes, np.uint8)
        return scores, (code & BRAIN).astype(bool), (code & LESION).astype(bool)

    def pixel_values(self) -> tuple[np.ndarray, np.ndarray]:
        """(healthy, lesion) map values of the pixels inside the brain, for histograms."""
        scores, brain, lesion = self._pixels()
        return scores[brain & ~lesion], scores[brain & lesion]

    def roc_curves(self) -> dict[str, tuple[np.ndarray, np.ndarray] | None]:
        """``{"slice": (fpr, tpr), "pixel": (fpr, tpr)}`` (pixels inside the brain); None where one class only."""
        scores, brain, lesion = self._pixels()
        return {"slice": _roc(*self._slices()), "pixel": _roc(lesion[brain], scores[brain])}

    def compute(self, threshold: float | None = None) -> dict[str, float]:
        """All metrics over the batches seen so far; ``dice`` is NaN unless a ``threshold`` is given.

        With appearance names, also every ``APPEARANCE_METRICS`` entry per appearance (module docstring).
        """
        scores, brain, lesion = self._pixels()
        out: dict[str, float] = {}
        out["slice_auroc"], out["slice_auprc"] = _ranking(*self._slices())
        out.update(_pixel_metrics(scores, brain, lesion, threshold))
        if self.appearances and len(scores):
            per_slice = len(scores) // self.n_slices
            codes = np.repeat(_cat(self.slice_codes, np.int16), per_slice)
            for k, name in enumerate(self.appearances, start=1):
                keep = (codes == 0) | (codes == k)
                sub = _pixel_metrics(scores[keep], brain[keep], lesion[keep], threshold)
                out.update({f"{metric}_{name}": sub[metric] for metric in APPEARANCE_METRICS})
        return out


def _pixel_metrics(scores: np.ndarray, brain: np.ndarray, lesion: np.ndarray, threshold: float | None) -> dict:
    """The pixel metrics of ``DetectionMetrics.compute`` on the given pixels."""
    out: dict[str, float] = {}
    in_brain, in_lesion = scores[brain], lesion[brain]
    out["pixel_auroc"], out["pixel_auprc"], out["best_dice"], out["best_threshold"] = _pixel_ranking(
        in_lesion, in_brain
    )
    out["pixel_auroc_all"], _ = _ranking(lesion, scores)
    healthy_vals, lesion_vals = in_brain[~in_lesion], in_brain[in_lesion]
    out["healthy_mu"], out["healthy_sigma"] = _moments(healthy_vals)
    out["lesion_mu"], out["lesion_sigma"] = _moments(lesion_vals)
    out["overlap_pct"] = overlap_pct(healthy_vals, lesion_vals)
    out["dice"] = NAN if threshold is None or math.isnan(threshold) else dice_at(in_lesion, in_brain, threshold)
    return out


def _roc(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, tpr) of scikit-learn's ROC curve (collinear points dropped), or None for a single class."""
    if labels.size == 0 or labels.all() or not labels.any():
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr


def unpack_batch(batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(image, brain, lesion) from a loader batch: a mapping with those keys, or a sequence in that order."""
    if isinstance(batch, Mapping):
        return batch["image"], batch["brain"], batch["lesion"]
    if isinstance(batch, Sequence) and len(batch) >= 3:
        return batch[0], batch[1], batch[2]
    raise TypeError(f"cannot read (image, brain, lesion) from a batch of type {type(batch).__name__}")


def evaluate(
    family: Family,
    nets: nn.ModuleDict,
    loader: Iterable,
    device: torch.device,
    threshold: float | None = None,
) -> dict[str, float]:
    """Score every batch of ``loader`` with ``family`` and return ``DetectionMetrics.compute(threshold)``."""
    metrics = DetectionMetrics(appearances_of(loader))
    for batch in loader:
        image, _, _ = unpack_batch(batch)
        scores = family.score(nets, image.to(device, non_blocking=True))
        metrics.update_batch(scores, batch)
    return metrics.compute(threshold)


def appearances_of(loader: Iterable) -> list[str]:
    """The appearance names of a DataLoader's dataset (``SliceDataset.appearances``); [] when it has none."""
    return list(getattr(getattr(loader, "dataset", None), "appearances", []) or [])
