"""The arithmetic and the output of `python -m study.bench`: ratios, medians, budget shares, targets,
the printed table and results/bench.json. Pure functions on numbers (no torch, no Ray), so unit tests
can check that each figure is what it says.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainables.numbers import is_finite

NAN = float("nan")


@dataclass(frozen=True)
class Target:
    """A figure's goal: ``key`` compared with ``bound`` by ``op`` (">=", "<=" or "==")."""

    key: str
    op: str
    bound: float

    def met(self, value: Any) -> bool | None:
        """True/False, or None when the figure was not measured (None or NaN)."""
        if not is_finite(value):
            return None
        if self.op == ">=":
            return value >= self.bound
        if self.op == "<=":
            return value <= self.bound
        return value == self.bound

    @property
    def text(self) -> str:
        return f"{self.op} {self.bound:g}"


# The targets of issue 8; train_ratio_<family> keys share TRAIN_TARGET.
TRAIN_TARGET = Target("train_ratio_*", ">=", 0.90)
TARGETS = {
    "data_ratio": Target("data_ratio", ">=", 0.95),
    "study_overhead": Target("study_overhead", "<=", 1.3),
    "trial_start_s": Target("trial_start_s", "<=", 5.0),  # issue 15's aim (issue 8 asked <= 10)
    "staging_ratio": Target("staging_ratio", ">=", 0.9),
    "restage_bytes": Target("restage_bytes", "==", 0),
    "search_budget_share": Target("search_budget_share", "<=", 0.5),
    # issue 14: the default study's best trial (chosen on val) on the default cohort's test split
    "best_test_pixel_auroc": Target("best_test_pixel_auroc", ">=", 0.95),
    "best_test_pixel_auprc": Target("best_test_pixel_auprc", ">=", 0.5),
    # issue 25: preprocessing spread over CPUs, and a node fetching the shared cache rather than the raw cohort
    "scale_preprocess_speedup": Target("scale_preprocess_speedup", ">=", 1.6),
    "scale_node_bytes_ratio": Target("scale_node_bytes_ratio", "<=", 0.2),
    # issue 25: streamed val metrics (study/bench/metrics.py)
    "val_metrics_s_per_mpixel": Target("val_metrics_s_per_mpixel", "<=", 0.1),
    "val_metrics_max_abs_diff": Target("val_metrics_max_abs_diff", "<=", 1e-3),
}
# Figures shown in the table without a target (context for a reader).
INFO_KEYS = (
    "data_ratio_all_fields",
    "data_train_ratio",
    "rss_mb_1_trial",
    "rss_mb_4_trials",
    "pss_mb_1_trial",
    "pss_mb_4_trials",
    "cache_pss_mb_1_trial",
    "cache_pss_mb_4_trials",
    "study_wall_s",
    "study_inner_s",
    "study_before_first_trial_s",
    "trial_start_to_loop_s",
    "trial_start_to_trainable_s",
    "trial_trainable_to_loop_s",
    "trial_loop_to_first_step_s",
    "trial_in_epochs_overhead_s",
    "trial_tail_s",
    "trial_gap_s",
    "search_budget_share_any_epoch",
    "gpu_skipped",
    "gpu_bf16_speedup_median",
    "scale_hcp_preprocess_s",
    "scale_brats_preprocess_s",
    "scale_full_raw_gb",
    "scale_full_cache_gb_64",
    "scale_full_build_min_4_nodes",
    "val_metrics_exact_s_per_mpixel",
    "val_metrics_max_diff_metric",
    "val_metrics_state_mb",
)
# Detection figures (study/bench/detect.py) shown after those, in this order of prefixes: per metric and
# appearance, the best trial, the threshold baseline and the margin between them.
DETECT_PREFIXES = ("best_test_", "threshold_test_", "detect_margin_")


def ratio(numerator: float | None, denominator: float | None) -> float:
    """``numerator / denominator``; NaN when either is missing or the denominator is not positive."""
    if not (is_finite(numerator) and is_finite(denominator)) or denominator <= 0:
        return NAN
    return numerator / denominator


def median(values: Iterable[float | None]) -> float:
    """Median of the finite values; NaN when there are none."""
    kept = [v for v in values if is_finite(v)]
    return float(statistics.median(kept)) if kept else NAN


def rates(counts: Sequence[float], seconds: Sequence[float]) -> list[float]:
    """Per-repeat throughput ``count / seconds`` (NaN for a repeat without time)."""
    return [ratio(c, s) for c, s in zip(counts, seconds, strict=True)]


def steady(values: Sequence[float], warmup: int = 1) -> list[float]:
    """The values after the first ``warmup`` repeats (allocator, kernel choice and caches warm up), or all
    of them when there are no more."""
    return list(values[warmup:]) if len(values) > warmup else list(values)


def budget_share(curve: Sequence[tuple[float, float]], goal: float, budget: float) -> float | None:
    """Share of ``budget`` spent when the running best of ``curve`` first reaches ``goal``.

    ``curve`` is (cumulative budget spent, value obtained then) in spending order, higher values better.
    None when ``goal`` is never reached within the curve.
    """
    for spent, value in curve:
        if is_finite(value) and value >= goal:
            return spent / budget
    return None


def median_share(shares: Sequence[float | None]) -> float:
    """Median over seeds of budget shares, a seed that never reached the goal counting as infinite."""
    if not shares:
        return NAN
    value = statistics.median([math.inf if s is None else s for s in shares])
    return value


def target_for(key: str) -> Target | None:
    if key.startswith("train_ratio_"):
        return TRAIN_TARGET
    return TARGETS.get(key)


def table_rows(figures: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, met?) for every targeted or informative figure present, targets first."""
    keys = sorted(k for k in figures if k.startswith("train_ratio_"))
    keys += [k for k in TARGETS if k in figures] + [k for k in INFO_KEYS if k in figures]
    keys += sorted(k for k in figures if k.startswith("eval_share_"))  # val eval's share of a Ray epoch
    keys += sorted((k for k in figures if k.startswith(DETECT_PREFIXES) and k not in keys), key=_detect_order)
    rows = []
    for key in keys:
        target = target_for(key)
        met = target.met(figures[key]) if target else None
        verdict = "-" if target is None else {True: "yes", False: "NO", None: "n/a"}[met]
        rows.append((key, _show(figures[key]), target.text if target else "-", verdict))
    return rows


def _detect_order(key: str) -> tuple[str, int]:
    """Detection figures grouped by metric: best, threshold, margin of one metric together."""
    prefix = next(p for p in DETECT_PREFIXES if key.startswith(p))
    return key[len(prefix) :], DETECT_PREFIXES.index(prefix)


def format_table(rows: list[tuple[str, str, str, str]]) -> str:
    """A plain-text table with a header."""
    header = ("figure", "value", "target", "met?")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *rows]]
    return "\n".join(lines)


def _show(value: Any) -> str:
    if isinstance(value, float):
        return "inf" if value == math.inf else f"{value:.4g}"
    return "-" if value is None else str(value)


def json_ready(figures: dict[str, Any]) -> dict[str, Any]:
    """Flat, strict-JSON figures: NaN and infinities become null (JSON has neither)."""
    out = {}
    for key, value in figures.items():
        if isinstance(value, dict | list | tuple):
            raise ValueError(f"bench.json is flat: '{key}' holds a {type(value).__name__}")
        out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    return out


def write_bench_json(
    figures: dict[str, Any], path: Path, *, quick: bool, device: str, commit: str, merge: bool = False
) -> dict[str, Any]:
    """Write the figures with ``device``, ``commit`` and ``quick`` to ``path`` (atomically); return what was
    written. ``merge`` keeps figures of an earlier run that this one did not measure (``--only``)."""
    path = Path(path)
    earlier = json.loads(path.read_text()) if merge and path.is_file() else {}
    record = {**earlier, **json_ready(figures), "device": device, "commit": commit, "quick": bool(quick)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return record


def git_commit(repo: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the repository (read-only), or "unknown" outside one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (how busy the shared machine was)."""
    return os.getloadavg()
