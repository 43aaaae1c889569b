"""Subject-level bootstrap intervals of an AUROC, for the reproduction's tables (trainables/reproduce/train.py).

The seeds' standard deviation measures training noise only; the test split is one fixed draw of a few subjects
(6 lesion subjects in the default cohort). Resampling subjects with replacement, and recomputing the AUROC on
the pixels (or slices) of the drawn subjects, shows how much the number owes to which subjects were drawn.

A resample is a weight per subject (how many times it was drawn), so the AUROC of a resample is the weighted
Mann-Whitney statistic over the values sorted once: each distinct value's positive and negative weights, the
negatives below it, ties counted half. Per resample this is one small matrix product, not a new sort.
"""

from __future__ import annotations

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95


def _counts_by_subject(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives): per subject (rows) and per distinct score value (columns, ascending), counts."""
    _, value_index = np.unique(scores, return_inverse=True)
    subjects, subject_index = np.unique(groups, return_inverse=True)
    n_values = int(value_index.max()) + 1 if value_index.size else 0
    flat = subject_index * n_values + value_index
    size = len(subjects) * n_values
    pos = np.bincount(flat[labels], minlength=size).reshape(len(subjects), n_values).astype(np.float64)
    neg = np.bincount(flat[~labels], minlength=size).reshape(len(subjects), n_values).astype(np.float64)
    return pos, neg


def weighted_auroc(pos: np.ndarray, neg: np.ndarray, weights: np.ndarray) -> float:
    """AUROC of the values with subject ``weights`` (``pos``/``neg`` from ``_counts_by_subject``); NaN if a class
    has no weight."""
    p, n = weights @ pos, weights @ neg
    total_p, total_n = p.sum(), n.sum()
    if total_p <= 0 or total_n <= 0:
        return float("nan")
    below = np.cumsum(n) - n  # negative weight strictly below each value
    return float((p * (below + 0.5 * n)).sum() / (total_p * total_n))


def bootstrap_auroc(
    scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> dict[str, float]:
    """``{"auroc", "lo", "hi", "subjects", "resamples"}``: the AUROC of all values and the central
    ``BOOTSTRAP_LEVEL`` interval of its subject-level bootstrap (``groups`` names each value's subject).

    Resamples in which one class is missing are dropped (``resamples`` counts those kept).
    """
    labels = np.asarray(labels, bool).reshape(-1)
    pos, neg = _counts_by_subject(np.asarray(scores, np.float64).reshape(-1), labels, np.asarray(groups).reshape(-1))
    n_subjects = len(pos)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_subjects, size=(resamples, n_subjects))
    weights = np.stack([np.bincount(d, minlength=n_subjects) for d in draws]).astype(np.float64)
    values = np.array([weighted_auroc(pos, neg, w) for w in weights])
    values = values[np.isfinite(values)]
    tail = (1 - BOOTSTRAP_LEVEL) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail]) if values.size else (float("nan"), float("nan"))
    point = weighted_auroc(pos, neg, np.ones(n_subjects))
    return {"auroc": point, "lo": float(lo), "hi": float(hi), "subjects": n_subjects, "resamples": int(values.size)}


class SubjectValues:
    """Collects, batch by batch, what the two bootstrap intervals of the tables need: pixels inside the brain of
    lesion subjects (the first paper's pixel AUROC) and every slice (the second paper's pooled slice AUROC), each
    value with its subject."""

    def __init__(self) -> None:
        self.pixels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (score, lesion, subject)
        self.slices: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, pixel_map, slice_score, brain, lesion, subject, lesion_subject) -> None:
        """Add a batch: maps and masks (B,1,H,W) tensors, ``subject`` (B,), ``lesion_subject`` (B,) bool."""
        brain_b, lesion_b = brain.numpy() > 0.5, lesion.numpy() > 0.5
        subjects = np.broadcast_to(subject.numpy()[:, None, None, None], brain_b.shape)
        inside = brain_b & lesion_subject.numpy()[:, None, None, None]
        self.pixels.append((pixel_map.detach().numpy()[inside], lesion_b[inside], subjects[inside]))
        labels = lesion_b.reshape(len(lesion_b), -1).any(1)
        self.slices.append((slice_score.detach().numpy().reshape(-1), labels, subject.numpy()))

    def intervals(self) -> dict[str, dict[str, float]]:
        """``{"pixel_auroc_lesion": ..., "slice_auroc_pooled": ...}``, each from ``bootstrap_auroc``."""
        out = {}
        for name, chunks in (("pixel_auroc_lesion", self.pixels), ("slice_auroc_pooled", self.slices)):
            scores, labels, groups = (np.concatenate([c[i] for c in chunks]) for i in range(3))
            out[name] = bootstrap_auroc(scores, labels, groups)
        return out
