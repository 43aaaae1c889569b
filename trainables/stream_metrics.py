"""Detection metrics in constant memory: ``StreamingMetrics``, the same names and definitions as
``trainables.metrics.DetectionMetrics`` (see that module's docstring), from fixed histograms that ranks sum
with one all-reduce.

Bins: a float32 score's bit pattern made order-preserving (negative: every bit flipped; positive: the sign
bit flipped; -0.0 is folded onto +0.0 first) is an unsigned 32-bit key that sorts as the values do. Its top
``BITS`` bits are the bin: 1 sign bit, 8 exponent bits and ``BITS - 9`` mantissa bits, so the whole float
range is covered with no range to fit, every rank has the same bins, and a bin is ``2**-(BITS - 9)`` of its
values' magnitude wide or less. Per group of pixels (per appearance code: inside/outside the brain, healthy/
lesion) the accumulator keeps the count per bin, and inside the brain also the float64 sum and sum of
squares of the values per bin, so every subset of the module docstring is a sum of groups.

From them, each bin's healthy and lesion values are modelled as uniform over ``mean +- sqrt(3) std`` of
that class in that bin (a point where the bin holds one value: ties and constant maps are then exact, as
scikit-learn counts them). AUROC is the Mann-Whitney statistic, pairs inside one bin compared through those
models (a half tie outside the brain, where no value sums are kept: ``pixel_auroc_all``); AP sums each
lesion value's precision, counting the healthy values of its bin at or above it through the models; the best
Dice is taken over bin edges and lesion positions inside bins (its threshold: the estimated smallest value
of its bin, or that position); moments are exact float64 sums (of offsets from each bin's lower edge, so a
bin's spread is known to its width's precision); ``dice`` at a threshold known up front is counted exactly
per batch; the overlap's percentiles and the lesion share inside them read the same models.
Error: AUROC/AP are off by at most the share of (lesion, healthy) pairs sharing a bin, and far less for
smooth densities; ``overlap_pct`` by at most the lesion values in the two bins at the percentiles (in
practice about their square root); ``best_dice`` is a maximum over a noisy curve, which bins smooth a little
on small subsets (hundreds of lesion pixels); ``best_threshold`` is an argmax, which may pick another
threshold of the same Dice. Measured against scikit-learn: within 1e-3 (``overlap_pct`` as a share)
(tests/unit/test_stream_metrics.py; ``python -m study.bench --only metrics``: 1.3e-4 on 21 M pixels).

Memory: ``groups * (8 * 2**BITS + 2)`` float64 per rank, on the scores' device, whatever the number of
pixels; groups = appearances + 2 (healthy subjects, unknown appearance), or 1 without appearances: 16 MB per
group at ``BITS = 18`` (96 MB with 4 appearances). Slice-level metrics stay exact: slices are few, their
scores are kept and gathered to rank 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from trainables.families.base import Scores
from trainables.metric_names import APPEARANCE_METRICS

BITS = 18
NAN = float("nan")
# Histograms kept per group, each 2**BITS bins: counts (brain x lesion), then per-bin sum and sum of squares
# of the values inside the brain (healthy, lesion).
IN_NEG, IN_POS, OUT_NEG, OUT_POS, SUM_NEG, SUM_POS, SQ_NEG, SQ_POS = range(8)
N_HIST = 8
N_EXTRA = 2  # per group: pixels inside the brain at or above the threshold, of them lesion (exact Dice)


def order_keys(values: torch.Tensor) -> torch.Tensor:
    """Int32 keys of float32 ``values`` that sort as the values do (the module docstring's unsigned key
    minus 2**31: ``(key >> s) + 2**(31 - s)`` is the unsigned key's top ``32 - s`` bits)."""
    bits = (values.float() + 0.0).view(torch.int32)  # + 0.0 folds -0.0 onto +0.0
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative: flip all but the sign bit; signed order = float order


def lower_edges(bins: torch.Tensor, bits: int = BITS) -> torch.Tensor:
    """The smallest float32 of each bin (``order_keys(v) >> (32 - bits)``, as in ``update``)."""
    keys = bins << (32 - bits)
    return (keys ^ ((keys >> 31) & 0x7FFFFFFF)).view(torch.float32)  # order_keys is its own inverse


def bin_edges(bits: int = BITS) -> np.ndarray:
    """Float64 lower edges of the ``2**bits`` bins and the top edge (``2**bits + 1`` values, increasing;
    the outermost bins reach the infinities and beyond, NaN patterns)."""
    keys = np.arange(2**bits + 1, dtype=np.uint64) << np.uint64(32 - bits)
    keys = np.minimum(keys, 0xFFFFFFFF)
    positive = keys >= 0x80000000
    raw = np.where(positive, keys ^ 0x80000000, ~keys & 0xFFFFFFFF).astype(np.uint32)
    with np.errstate(invalid="ignore"):  # the NaN patterns, replaced below
        edges = raw.view(np.float32).astype(np.float64)
    return np.where(np.isnan(edges), np.where(positive, np.inf, -np.inf), edges)


class StreamingMetrics:
    """Accumulate batches with ``update``/``update_batch``; ``all_reduce`` sums the ranks (one collective on
    the histograms, a gather of the slice scores to rank 0); ``compute`` returns every metric.

    ``threshold`` (for ``dice``) must be given up front: it is counted per batch.
    """

    def __init__(
        self, appearances: Sequence[str] = (), threshold: float | None = None, device: Any = "cpu", bits: int = BITS
    ) -> None:
        self.appearances = list(appearances)
        self.threshold = None if threshold is None or math.isnan(threshold) else float(threshold)
        self.bits, self.n_bins = bits, 2**bits
        self.n_groups = len(self.appearances) + 2 if self.appearances else 1
        size = self.n_groups * (N_HIST * self.n_bins + N_EXTRA)
        self.state = torch.zeros(size, dtype=torch.float64, device=device)
        self.slice_scores: list[np.ndarray] = []
        self.slice_labels: list[np.ndarray] = []

    def update(
        self, scores: Scores, brain: torch.Tensor, lesion: torch.Tensor, appearance: torch.Tensor | None = None
    ) -> None:
        """Add a batch: (B,1,H,W) masks (bool, or float > 0.5 = inside); ``appearance`` (B,) codes or None.
        Nothing is read back to the host here (no device sync): NaN scores are found by ``compute``."""
        device = self.state.device
        lesion_b = ((lesion > 0.5) if lesion.is_floating_point() else lesion.bool()).to(device)
        brain_b = ((brain > 0.5) if brain.is_floating_point() else brain.bool()).to(device)
        values = scores.pixel_map.detach()
        if values.shape != lesion_b.shape or brain_b.shape != lesion_b.shape:
            raise ValueError(
                f"shape mismatch: pixel_map {tuple(values.shape)}, brain {tuple(brain_b.shape)}, "
                f"lesion {tuple(lesion_b.shape)}"
            )
        self.slice_scores.append(scores.slice_score.detach().float().reshape(-1))
        self.slice_labels.append(lesion_b.flatten(1).any(1))
        values = values.to(device, torch.float32).flatten(1)
        lesion_b, brain_b = lesion_b.flatten(1), brain_b.flatten(1)
        groups = self._groups(appearance, values.shape[0]).to(device)
        stride = N_HIST * self.n_bins + N_EXTRA
        # one int32 index per pixel: its group's block + its bin (+ which histogram, added per use)
        start = (groups * stride + self.n_bins // 2).int()[:, None]  # + n_bins / 2: the unsigned key's bin
        bins = order_keys(values) >> (32 - self.bits)
        base = bins + start + lesion_b.int() * self.n_bins
        outside = (~brain_b).int() * (OUT_NEG * self.n_bins)
        self.state.index_add_(0, (base + outside).reshape(-1), self._ones(base.numel()))
        # sums of the offsets from the bin's lower edge (exact in float32): a bin's spread is then known to
        # float64 precision of its width, not of the values' magnitude; outside the brain: adds 0
        weights = ((values - lower_edges(bins, self.bits)).double() * brain_b).reshape(-1)
        self.state.index_add_(0, (base + SUM_NEG * self.n_bins).reshape(-1), weights)
        self.state.index_add_(0, (base + SQ_NEG * self.n_bins).reshape(-1), weights * weights)
        if self.threshold is not None:  # exact Dice: per slice, predicted healthy / lesion pixels, added per group
            hit = brain_b & (values >= self.threshold)
            counts = torch.stack([(hit & ~lesion_b).sum(1), (hit & lesion_b).sum(1)], 1).double()
            extra = (groups * stride + N_HIST * self.n_bins)[:, None] + torch.arange(N_EXTRA, device=device)
            self.state.index_add_(0, extra.reshape(-1), counts.reshape(-1))

    def _ones(self, n: int) -> torch.Tensor:
        return torch.ones(1, dtype=torch.float64, device=self.state.device).expand(n)

    def _groups(self, appearance: torch.Tensor | None, n: int) -> torch.Tensor:
        """Group per slice: 0 unknown appearance, 1 healthy subject, 1 + k appearance k (0 without names)."""
        if not self.appearances or appearance is None:
            return torch.zeros(n, dtype=torch.long)
        codes = appearance.detach().cpu().long().reshape(-1)
        if codes.numel() and (int(codes.min()) < -1 or int(codes.max()) > len(self.appearances)):
            raise ValueError(f"appearance codes {sorted(set(codes.tolist()))} outside -1..{len(self.appearances)}")
        return codes + 1

    def update_batch(self, scores: Scores, batch: Any) -> None:
        """``update`` from a loader batch, with its ``appearance`` codes where it has them."""
        from trainables.metrics import unpack_batch

        _, brain, lesion = unpack_batch(batch)
        appearance = batch.get("appearance") if isinstance(batch, Mapping) else None
        self.update(scores, brain, lesion, appearance)

    def all_reduce(self) -> bool:
        """Sum every rank's histograms (one all-reduce) and gather the slice scores to rank 0; True on rank 0.
        Without a process group (or one rank) nothing moves."""
        if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
            return True
        dist.all_reduce(self.state)
        mine = self._slices()
        parts: list | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
        dist.gather_object(mine, parts, dst=0)
        if parts is None:
            return False
        self.slice_labels, self.slice_scores = (
            [torch.from_numpy(p[0]) for p in parts],
            [torch.from_numpy(p[1]) for p in parts],
        )
        return True

    def _slices(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, scores) of the slices seen, on the host."""
        if not self.slice_labels:
            return np.zeros(0, bool), np.zeros(0, np.float32)
        return torch.cat(self.slice_labels).cpu().numpy(), torch.cat(self.slice_scores).cpu().numpy()

    def compute(self) -> dict[str, float]:
        """Every metric of ``DetectionMetrics.compute(threshold)`` (per appearance too) from the histograms."""
        out: dict[str, float] = {}
        out["slice_auroc"], out["slice_auprc"] = slice_ranking(*self._slices())
        per_group = self.state.cpu().numpy().reshape(self.n_groups, -1)
        self._refuse_nan(per_group)
        hists = per_group[:, : N_HIST * self.n_bins].reshape(self.n_groups, N_HIST, self.n_bins)
        held = np.flatnonzero(hists[:, :SUM_NEG].any(axis=(0, 1)))  # compute on the bins that hold values
        first, last = (int(held[0]), int(held[-1]) + 1) if held.size else (0, 1)
        hists, extra = hists[..., first:last], per_group[:, N_HIST * self.n_bins :]
        edges = bin_edges(self.bits)[first : last + 1]
        out.update(_pixel_metrics(hists.sum(0), extra.sum(0), edges, self.threshold))
        for k, name in enumerate(self.appearances, start=1):
            sub = _pixel_metrics(hists[1] + hists[1 + k], extra[1] + extra[1 + k], edges, self.threshold)
            out.update({f"{metric}_{name}": sub[metric] for metric in APPEARANCE_METRICS})
        return out

    def _refuse_nan(self, per_group: np.ndarray) -> None:
        """NaN scores sort above +inf or below -inf: refuse them as scikit-learn does (NaN payloads that share
        the infinities' bins pass unseen; torch's NaN does not)."""
        counts = per_group[:, : N_HIST * self.n_bins].reshape(self.n_groups, N_HIST, self.n_bins)[:, :SUM_NEG]
        shift = 32 - self.bits
        above, below = counts[..., (0xFF800000 >> shift) + 1 :], counts[..., : 0x007FFFFF >> shift]
        if above.any() or below.any():
            raise ValueError(f"pixel_map held {int(above.sum() + below.sum())} NaN value(s): metrics are undefined")


def _pixel_metrics(hist: np.ndarray, extra: np.ndarray, edges: np.ndarray, threshold: float | None) -> dict:
    """The pixel metrics of one subset from its summed histograms (N_HIST rows) and Dice counts."""
    neg, pos = hist[IN_NEG], hist[IN_POS]
    neg_span = _bin_spans(neg, hist[SUM_NEG], hist[SQ_NEG], edges[:-1], edges[1:])
    pos_span = _bin_spans(pos, hist[SUM_POS], hist[SQ_POS], edges[:-1], edges[1:])
    out: dict[str, float] = {}
    out["pixel_auroc"] = auroc(neg, pos, _within_auroc(neg, pos, neg_span, pos_span))
    out["pixel_auroc_all"] = auroc(neg + hist[OUT_NEG], pos + hist[OUT_POS])  # no value sums outside the brain
    one_class = not (neg.sum() and pos.sum())
    ap, best, at = pr_summary(neg, pos, neg_span, pos_span)
    out["pixel_auprc"] = NAN if one_class else ap
    out["best_dice"], out["best_threshold"] = best, at
    out["healthy_mu"], out["healthy_sigma"] = _moments(neg, hist[SUM_NEG], hist[SQ_NEG], edges[:-1])
    out["lesion_mu"], out["lesion_sigma"] = _moments(pos, hist[SUM_POS], hist[SQ_POS], edges[:-1])
    out["overlap_pct"] = _overlap(neg, pos, neg_span, pos_span)
    false_hits, hits = extra
    denom = false_hits + hits + pos.sum()
    out["dice"] = NAN if threshold is None or not denom else float(2.0 * hits / denom)
    return out


def slice_ranking(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """Exact (AUROC, AP) of few values, as scikit-learn's: each distinct value a bin holding one value;
    NaN for both with a single class."""
    if labels.size == 0 or labels.all() or not labels.any():
        return NAN, NAN
    values, where = np.unique(scores.astype(np.float64), return_inverse=True)
    neg = np.bincount(where[~labels], minlength=values.size).astype(np.float64)
    pos = np.bincount(where[labels], minlength=values.size).astype(np.float64)
    ap, _, _ = pr_summary(neg, pos, (values, values), (values, values))  # each bin one value
    return auroc(neg, pos), ap


def auroc(neg: np.ndarray, pos: np.ndarray, within: np.ndarray | float = 0.5) -> float:
    """Mann-Whitney AUROC from per-bin counts (increasing values); ``within``: per bin, the share of its
    (lesion, healthy) pairs won by the lesion value (0.5: a shared bin counts as a tie)."""
    n_neg, n_pos = neg.sum(), pos.sum()
    if not n_neg or not n_pos:
        return NAN
    below = np.cumsum(neg) - neg
    return float(np.sum(pos * (below + within * neg)) / (n_neg * n_pos))


def _bin_spans(count, offsets, squares, lower, upper) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001 (arrays)
    """Each bin's values modelled as uniform over ``mean +- sqrt(3) std``, inside the bin: (low, high); a bin
    whose spread is below float64 noise (1e-7 of its width) holds one value: low == high."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        mean_offset = offsets / count
        variance = squares / count - mean_offset * mean_offset
        half = np.where(variance > 1e-14 * (upper - lower) ** 2, np.sqrt(3.0 * np.maximum(variance, 0.0)), 0.0)
        mean = lower + mean_offset
    low = np.clip(mean - half, lower, upper)
    return low, np.clip(mean + half, low, upper)


def pr_summary(neg, pos, neg_span, pos_span) -> tuple[float, float, float]:  # noqa: ANN001 (arrays)
    """(average precision, best Dice, its threshold) from per-bin counts and value spans (``_bin_spans``);
    NaN if no positive.

    AP as scikit-learn defines it (thresholds decreasing, each positive adds its precision / P): inside a bin,
    each positive's precision counts the healthy values at or above it under the bins' value models
    (``_inside``), so a bin holding one value is one threshold (a tie, as scikit-learn's) and a bin of spread
    values is not read as if all its lesion values came last. Best Dice over the bin edges (threshold: the
    estimated smallest value of the bin) and those positions inside bins (threshold: the position).
    """
    n_pos = pos.sum()
    if not n_pos:
        return NAN, NAN, NAN
    used = np.flatnonzero((neg + pos) > 0)[::-1]  # thresholds from the highest bin down
    a, b = pos[used], neg[used]
    tp, seen = np.cumsum(a), np.cumsum(a + b)
    x, share = _inside(pos_span[0][used], pos_span[1][used])
    at_or_above = np.nan_to_num(_share_of(neg_span[0][used], neg_span[1][used], x, at_or_above=True))
    tp_k = (tp - a)[:, None] + a[:, None] * share
    fp_k = (seen - tp - b)[:, None] + b[:, None] * at_or_above
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 in bins above the first lesion value: unused
        precision = np.mean(tp_k / (tp_k + fp_k), axis=1)
    ap = float(np.sum(np.where(a > 0, a * precision, 0.0)) / n_pos)
    dice = 2.0 * tp / (seen + n_pos)
    best = int(np.flatnonzero(dice == dice.max())[-1])  # ties: the lowest threshold, as scikit-learn's argmax
    inner = np.where(a[:, None] > 0, 2.0 * tp_k / (tp_k + fp_k + n_pos), -1.0)  # at lesion values inside bins
    i, k = np.unravel_index(int(np.argmax(inner)), inner.shape)
    if inner[i, k] > dice[best] * (1 + 1e-12):  # lesion values above the healthy ones of their bin
        return ap, float(inner[i, k]), float(x[i, k])
    return ap, float(dice[best]), float(np.fmin(neg_span[0], pos_span[0])[used[best]])


K_INSIDE = 16  # positions per bin at which a bin's lesion values are compared with its healthy values


def _inside(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(positions, share of the bin's lesion values at or above them), K_INSIDE per bin, from the top down;
    a bin holding one value: that value, all of its values (tied)."""
    u = (np.arange(K_INSIDE) + 0.5) / K_INSIDE
    point = (high <= low)[:, None]
    return high[:, None] - u * (high - low)[:, None], np.where(point, 1.0, u)


def _share_of(low, high, x, at_or_above: bool) -> np.ndarray:  # noqa: ANN001 (arrays)
    """Share of each bin's values at or above ``x`` (``at_or_above``), else below it with ties counted half."""
    low, high = low[:, None], high[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        spread = np.clip((high - x) / (high - low), 0.0, 1.0)
    point = np.where(low >= x, 1.0, 0.0) if at_or_above else np.where(low > x, 1.0, 0.0) + 0.5 * (low == x)
    above = np.where(high <= low, point, spread)
    return above if at_or_above else 1.0 - above


def _within_auroc(neg, pos, neg_span, pos_span) -> np.ndarray:  # noqa: ANN001 (arrays)
    """Per bin, the share of (lesion, healthy) pairs of the bin where the lesion value is higher (ties half)."""
    held = (neg > 0) & (pos > 0)
    out = np.full(neg.shape, 0.5)
    x, _ = _inside(pos_span[0][held], pos_span[1][held])
    out[held] = np.mean(_share_of(neg_span[0][held], neg_span[1][held], x, at_or_above=False), axis=1)
    return out


def _moments(count, offsets, squares, lower) -> tuple[float, float]:  # noqa: ANN001 (arrays)
    """Mean and population std from the per-bin float64 offset sums (centred: no cancellation); NaN if empty."""
    n = count.sum()
    if not n:
        return NAN, NAN
    held = count > 0
    count, offsets, squares, lower = count[held], offsets[held], squares[held], lower[held]
    mean = (np.sum(count * lower) + offsets.sum()) / n
    shift = lower - mean  # each value is lower + offset; sum of (shift + offset)**2 over the bin:
    spread = np.sum(squares + 2.0 * shift * offsets + count * shift * shift) / n
    return float(mean), float(math.sqrt(max(spread, 0.0)))


def _quantile(count: np.ndarray, low: np.ndarray, high: np.ndarray, q: float) -> float:
    """numpy's linear-interpolation quantile, each bin's values spread evenly over (low, high)."""
    cum = np.cumsum(count)
    h = (cum[-1] - 1) * q  # position in the sorted values, 0-based
    b = int(np.searchsorted(cum, h, side="right"))
    before = cum[b] - count[b]
    return float(low[b] + min(max((h - before + 0.5) / count[b], 0.0), 1.0) * (high[b] - low[b]))


def _overlap(neg, pos, neg_span, pos_span) -> float:  # noqa: ANN001 (arrays)
    """Share (%) of lesion values inside the healthy [q2.5, q97.5], each bin's values spread over its span."""
    if not neg.sum() or not pos.sum():
        return NAN
    lo, hi = _quantile(neg, *neg_span, 0.025), _quantile(neg, *neg_span, 0.975)
    p_low, p_high = pos_span
    width = p_high - p_low
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.clip((np.minimum(p_high, hi) - np.maximum(p_low, lo)) / width, 0.0, 1.0)
    point = width <= 0  # a bin holding one value: inside or not
    share = np.nan_to_num(np.where(point, (p_low >= lo) & (p_low <= hi), share))  # empty bins: NaN -> 0
    return float(100.0 * np.sum(pos * share) / pos.sum())


def differences(exact: Mapping[str, float], streamed: Mapping[str, float]) -> dict[str, float]:
    """``|exact - streamed|`` per metric of ``exact`` (0 where both are NaN, inf where one is), ``overlap_pct``
    as a share like the other rates (its percent divided by 100)."""
    out = {}
    for key, value in exact.items():
        other = streamed[key]
        scale = 100.0 if key.startswith("overlap_pct") else 1.0
        if math.isnan(value) or math.isnan(other):
            out[key] = 0.0 if math.isnan(value) and math.isnan(other) else math.inf
        else:
            out[key] = abs(value - other) / scale
    return out
