"""Bench section `metrics`: what the per-epoch val metrics cost, streamed (``trainables.stream_metrics``, what
the training loop runs) against the exact scikit-learn path (``trainables.metrics.DetectionMetrics``), on the
same synthetic maps: 5,120 slices of 64 x 64 with 4 lesion appearances (--quick: 1,024).

- ``val_metrics_s_per_mpixel``: seconds per million val pixels for every metric together (accumulating the
  batches and computing, overall and per appearance, Dice at a threshold included), streamed; target <= 0.1;
- ``val_metrics_exact_s_per_mpixel``: the same on the exact path (the figure before issue 25);
- ``val_metrics_max_abs_diff``: the largest ``|exact - streamed|`` over every metric (``overlap_pct`` as a
  share, see ``stream_metrics.differences``), named by ``val_metrics_max_diff_metric``; target <= 1e-3.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from study.bench.common import BenchPlan, say
from trainables.data.dataset import EVAL_BATCH

SIDE = 64
APPEARANCES = ("bright", "dark", "ring", "spots")
THRESHOLD = 0.3  # a Dice threshold as val would choose on these maps (their best is near it)


def synthetic_maps(n_slices: int, seed: int = 0) -> Iterator[tuple]:
    """(Scores, brain, lesion, appearance codes) batches like a detector's on val: a brain disk, healthy values
    |N(0, 0.1)|, on two thirds of the lesion subjects' slices a disk lesion whose values rise with its
    appearance (N(0.2 + 0.05 k, 0.15)); codes -1 (unknown), 0 (healthy subject), 1..4."""
    import torch

    from trainables.families import Scores

    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
    for start in range(0, n_slices, EVAL_BATCH):
        n = min(EVAL_BATCH, n_slices - start)
        brain = ((yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 < (0.4 * SIDE) ** 2).expand(n, 1, SIDE, SIDE)
        codes = torch.randint(-1, len(APPEARANCES) + 1, (n,), generator=g)
        centre = torch.randint(SIDE // 3, 2 * SIDE // 3, (n, 2), generator=g)
        radius = torch.randint(2, 9, (n,), generator=g)
        dist2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
        sick = (codes > 0) & (torch.rand(n, generator=g) < 2 / 3)
        lesion = ((dist2 < radius[:, None, None] ** 2) & sick[:, None, None])[:, None]
        healthy = torch.randn(n, 1, SIDE, SIDE, generator=g).abs() * 0.1
        level = 0.2 + 0.05 * codes.clamp(min=0).float()
        values = level[:, None, None, None] + 0.15 * torch.randn(n, 1, SIDE, SIDE, generator=g)
        pixel_map = torch.where(lesion, values, healthy)
        yield Scores(recon=None, pixel_map=pixel_map, slice_score=pixel_map.flatten(1).amax(1)), brain, lesion, codes


def _timed(metrics: Any, batches: list[tuple], compute: Any) -> tuple[dict[str, float], float]:
    """(metrics, seconds) of feeding every batch then computing."""
    started = time.perf_counter()
    for batch in batches:
        metrics.update(*batch)
    out = compute()
    return out, time.perf_counter() - started


def run(plan: BenchPlan, n_slices: int | None = None) -> dict[str, Any]:
    """Section figures: streamed and exact seconds per million pixels, the largest difference between them
    (``n_slices``: the plan's size unless given, for the unit test)."""
    from trainables.metrics import DetectionMetrics
    from trainables.stream_metrics import StreamingMetrics, differences

    n_slices = n_slices or (1024 if plan.quick else 5120)
    batches = list(synthetic_maps(n_slices))
    mpixels = n_slices * SIDE * SIDE / 1e6
    streaming = StreamingMetrics(APPEARANCES, threshold=THRESHOLD)
    streamed, stream_s = _timed(streaming, batches, lambda: streaming.compute() if streaming.all_reduce() else {})
    exact_metrics = DetectionMetrics(APPEARANCES)
    exact, exact_s = _timed(exact_metrics, batches, lambda: exact_metrics.compute(THRESHOLD))
    gaps = differences(exact, streamed)
    worst = max(gaps, key=gaps.get)
    figures = {
        "val_metrics_s_per_mpixel": stream_s / mpixels,
        "val_metrics_exact_s_per_mpixel": exact_s / mpixels,
        "val_metrics_max_abs_diff": gaps[worst],
        "val_metrics_max_diff_metric": worst,
        "val_metrics_mpixels": mpixels,
        "val_metrics_state_mb": streaming.state.numel() * streaming.state.element_size() / 2**20,
    }
    say(f"metrics: {mpixels:.1f} M pixels, streamed {stream_s:.1f} s, exact {exact_s:.1f} s, "
        f"largest difference {gaps[worst]:.2e} ({worst})")  # fmt: skip
    return figures
