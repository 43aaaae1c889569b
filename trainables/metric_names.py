"""Metric names shared by training, Tune, MLflow, results/ and tests (see DESIGN.md, "Metric names")."""

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
VAL_METRICS = tuple(f"val_{name}" for name in DETECTION_METRICS)
TEST_METRICS = tuple(f"test_{name}" for name in DETECTION_METRICS)
# Costs a study may minimise beside detection quality (reported in each trial's final record).
COST_METRICS = ("train_seconds",)
OBJECTIVE_METRICS = VAL_METRICS + COST_METRICS  # model choice never sees test data
# Per-epoch training figures; each loss term of a family is also reported as loss_<term>.
EPOCH_METRICS = ("epoch", "best_epoch", "train_loss", "train_slices", "workers", "time_train_s", "time_eval_s")


def is_reported_metric(key: str) -> bool:
    """True for every metric name the study logs (detection metrics, epoch figures, loss terms)."""
    named = key in VAL_METRICS or key in TEST_METRICS or key in EPOCH_METRICS or key in COST_METRICS
    return named or key.startswith("loss_")
