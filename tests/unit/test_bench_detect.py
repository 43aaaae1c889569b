"""The bench's detect section: compared metric names, margins, and their rows in the bench table."""

from __future__ import annotations

from study.bench.detect import compared_metrics, margins
from study.bench.report import table_rows


def test_compared_metrics_cover_each_appearance() -> None:
    names = compared_metrics(["bright", "dark"])
    assert names[:4] == ["pixel_auroc", "pixel_auprc", "dice", "slice_auroc"]
    assert {"pixel_auroc_dark", "pixel_auprc_dark", "pixel_auroc_bright", "pixel_auprc_bright"} <= set(names)
    assert compared_metrics([]) == ["pixel_auroc", "pixel_auprc", "dice", "slice_auroc"]


def test_margins_and_table_rows() -> None:
    figures = {
        "best_test_pixel_auroc": 0.96,
        "threshold_test_pixel_auroc": 0.34,
        "best_test_pixel_auprc": 0.4,
        "threshold_test_pixel_auprc": 0.02,
        "best_test_pixel_auroc_dark": None,  # not measured: no margin
        "threshold_test_pixel_auroc_dark": 0.02,
    }
    got = margins(figures, ["pixel_auroc", "pixel_auprc", "pixel_auroc_dark"])
    assert got.keys() == {"detect_margin_pixel_auroc", "detect_margin_pixel_auprc"}
    assert abs(got["detect_margin_pixel_auroc"] - 0.62) < 1e-12
    rows = {r[0]: r for r in table_rows({**figures, **got})}
    assert rows["best_test_pixel_auroc"][2:] == (">= 0.95", "yes")
    assert rows["best_test_pixel_auprc"][2:] == (">= 0.5", "NO")
    order = [r[0] for r in table_rows({**figures, **got})]
    # targets first, then per metric: best, threshold, margin together
    assert order.index("threshold_test_pixel_auroc") + 1 == order.index("detect_margin_pixel_auroc")
