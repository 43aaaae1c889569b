"""The names metrics have in MLflow: DESIGN.md's names (trials.csv, Tune, best.json) grouped by ``/``.

MLflow 3.17's chart view (and a run's "Model metrics" tab) makes one section per prefix before the last ``/``
and orders the sections by name (``sort()`` at first, ``localeCompare`` when runs are unfolded later), then puts
the unprefixed "Model metrics" and "System metrics" sections last; the charts in a section are ordered by name
too (read in mlflow/server/js's RunsCharts.common getBaseChartAndSectionConfigs/updateChartAndSectionConfigs).
So the objectives' per-epoch val curves get a section whose name starts with a digit, which sorts before every
lowercase name in both orders (the parent's ``best/``, ``best_<family>/``, ``threshold/``, the trials'
``chosen/``), and are what a reviewer sees first.

Renamed here only, at the MLflow boundary: ``trials.csv``, Tune's results and ``best.json`` keep DESIGN.md's names.
"""

from __future__ import annotations

OBJECTIVES_SECTION = "1_objectives/"  # the study's objectives per epoch (e.g. 1_objectives/val_pixel_auroc)
CHOSEN_PREFIX = "chosen/"  # the chosen checkpoint's val_* (their own section, not another epoch)
# DESIGN.md prefix -> MLflow section; a name none of them starts (epoch, best_epoch, system/*) is kept
_SECTIONS = (
    ("val_", "val/"),
    ("test_", "test/"),
    ("train_", "train/"),  # train_loss, train_slices, train_seconds
    ("loss_", "train/loss_"),  # a family's loss terms beside its total
    ("time_", "time/"),  # time_train_s, time_eval_s
)


def mlflow_key(name: str, objectives: tuple[str, ...] = (), final: bool = False) -> str:
    """The MLflow key of the metric ``name`` (a DESIGN.md name) in a per-epoch record, or a final one (``final``).

    Per epoch, the ``objectives`` are ``1_objectives/<name>``; in the final record, the chosen checkpoint's val_*
    are ``chosen/<name>`` (logged at the chosen epoch's step, not read as another epoch). Otherwise the name's
    prefix becomes a section: ``val_dice`` -> ``val/dice``, ``test_pixel_auroc`` -> ``test/pixel_auroc``.
    """
    if final and name.startswith("val_"):
        return f"{CHOSEN_PREFIX}{name}"
    if not final and name in objectives:
        return f"{OBJECTIVES_SECTION}{name}"
    for prefix, section in _SECTIONS:
        if name.startswith(prefix):
            return f"{section}{name[len(prefix) :]}"
    return name


def objective_names(objectives_param: str) -> tuple[str, ...]:
    """The metric names in the parent run's ``objectives`` param (``val_pixel_auroc:max,val_slice_auroc:max``)."""
    return tuple(item.split(":")[0] for item in objectives_param.split(",") if item)
