"""The `threshold` baseline row every study gets: no training, the same evaluation, its own MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.entities import DatasetInput, Metric, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from study.results import append_row, load_rows, trial_row
from study.tracking.datasets import evaluation_inputs
from study.tracking.keys import mlflow_key
from study.tracking.models import log_baseline_model
from study.tracking.runs import SOURCE_TAGS, TRIAL_ID_TAG
from trainables.baseline import evaluate_untrained
from trainables.data.cache import read_meta

BASELINE_FAMILY = "threshold"
BASELINE_ID = f"baseline-{BASELINE_FAMILY}"


def baseline_row(
    study_dir: Path, cache_dir: Path, client: MlflowClient, parent_run_id: str, inputs: list[DatasetInput]
) -> dict[str, Any]:
    """Evaluate the baseline once per study (kept across --resume), journal its row and log its child run."""
    done = [r for r in load_rows(study_dir) if r["trial_id"] == BASELINE_ID]
    if done:
        return done[0]
    metrics = evaluate_untrained(BASELINE_FAMILY, cache_dir)
    size = int(read_meta(cache_dir)["preprocess"]["image_size"])
    row = trial_row(BASELINE_ID, {"family": BASELINE_FAMILY, "image_size": size}, metrics, "baseline")
    parent = client.get_run(parent_run_id)
    experiment_id = parent.info.experiment_id
    tags = {MLFLOW_PARENT_RUN_ID: parent_run_id, TRIAL_ID_TAG: BASELINE_ID, "role": "baseline"}
    tags.update({k: v for k, v in parent.data.tags.items() if k in SOURCE_TAGS})  # the commit and config file
    tags.update({MLFLOW_RUN_NAME: BASELINE_ID, "status": "baseline", "family": BASELINE_FAMILY})
    run = client.create_run(experiment_id, tags=tags)
    client.log_inputs(run.info.run_id, datasets=evaluation_inputs(inputs))  # no training: val and test only
    model_id = log_baseline_model(client, run.info.run_id, BASELINE_FAMILY, cache_dir, metrics)  # models:/<id>
    finite = {k: v for k, v in metrics.items() if v == v}  # NaN where a split lacks a class
    # under the keys of a trial's chosen checkpoint (chosen/val_*, test/*), logged against the model
    values = [Metric(mlflow_key(k, final=True), float(v), 0, 0, model_id=model_id) for k, v in finite.items()]
    client.log_batch(run.info.run_id, metrics=values)
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    row["mlflow_run_id"] = run.info.run_id
    append_row(study_dir, row)
    shown = " ".join(f"{k}={metrics[k]:.4f}" for k in ("val_slice_auroc", "val_pixel_auroc", "test_pixel_auroc"))
    print(f"baseline {BASELINE_FAMILY} (no training): {shown}", flush=True)
    return row
