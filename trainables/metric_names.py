"""Metric names shared by training, Tune, MLflow, results/ and tests (see docs/design.md, "Metric names")."""

import re

# Detection metrics, each reported as val_<name> after every epoch and test_<name> once at the end.
# `best_dice` picks its threshold on the same split (an oracle); `dice` uses the threshold chosen on val.
DETECTION_METRICS = (
    "slice_auroc",
    "slice_auprc",
    "pixel_auroc",
    "pixel_auprc",
    "pixel_auroc_all",
    "dice",
    "best_dice",
    "best_threshold",
    "overlap_pct",
    "healthy_mu",
    "healthy_sigma",
    "lesion_mu",
    "lesion_sigma",
)
# Where a cohort records lesion appearances, each pixel metric is also reported per appearance as
# <split>_<metric>_<appearance> (e.g. test_pixel_auroc_dark), computed on the split's healthy subjects plus
# the lesion subjects of that appearance (trainables.metrics).
APPEARANCE_METRICS = (
    "pixel_auroc",
    "pixel_auprc",
    "pixel_auroc_all",
    "dice",
    "best_dice",
    "overlap_pct",
    "healthy_mu",
    "healthy_sigma",
    "lesion_mu",
    "lesion_sigma",
)
APPEARANCE_NAME = re.compile(r"^[a-z][a-z0-9]*$")  # 'all' excluded: pixel_auroc_all is a metric of its own
VAL_METRICS = tuple(f"val_{name}" for name in DETECTION_METRICS)
TEST_METRICS = tuple(f"test_{name}" for name in DETECTION_METRICS)
# Costs a study may minimise beside detection quality (reported in each trial's final record).
COST_METRICS = ("train_seconds",)
OBJECTIVE_METRICS = VAL_METRICS + COST_METRICS  # model choice never sees test data
# Per-epoch training figures; each loss term of a family is also reported as loss_<term>.
EPOCH_METRICS = ("epoch", "best_epoch", "train_loss", "train_slices", "workers", "time_train_s", "time_eval_s")


def is_appearance_metric(key: str) -> bool:
    """True for ``val_``/``test_`` + a pixel metric + ``_`` + an appearance name."""
    for split in ("val_", "test_"):
        if key.startswith(split):
            rest = key[len(split) :]
            for metric in APPEARANCE_METRICS:
                name = rest[len(metric) + 1 :]
                if rest.startswith(f"{metric}_") and APPEARANCE_NAME.match(name) and name != "all":
                    return True
    return False


def is_reported_metric(key: str) -> bool:
    """True for every metric name the study logs (detection metrics, per appearance too, epoch figures, losses)."""
    named = key in VAL_METRICS or key in TEST_METRICS or key in EPOCH_METRICS or key in COST_METRICS
    # system/*: the Train worker's node, sampled by trainables.system_metrics and reported with each epoch
    return named or key.startswith(("loss_", "system/")) or is_appearance_metric(key)
