"""MLflow's metric keys (study.tracking.keys): DESIGN.md's names grouped by `/`, the objectives' section first."""

from __future__ import annotations

from study.tracking.keys import mlflow_key, objective_names
from trainables.metric_names import EPOCH_METRICS, TEST_METRICS, VAL_METRICS

OBJECTIVES = ("val_pixel_auroc", "val_slice_auroc")


def section(key: str) -> str:
    """The chart-view section MLflow 3.17 puts a key in: what comes before its last `/` ('' = 'Model metrics')."""
    return key.rpartition("/")[0]


def test_per_epoch_keys_are_grouped_and_the_objectives_come_first() -> None:
    assert mlflow_key("val_pixel_auroc", OBJECTIVES) == "1_objectives/val_pixel_auroc"
    assert mlflow_key("val_dice", OBJECTIVES) == "val/dice"
    assert mlflow_key("val_pixel_auroc_dark", OBJECTIVES) == "val/pixel_auroc_dark"
    assert mlflow_key("train_loss", OBJECTIVES) == "train/loss"
    assert mlflow_key("loss_kl", OBJECTIVES) == "train/loss_kl"
    assert mlflow_key("time_eval_s", OBJECTIVES) == "time/eval_s"
    assert mlflow_key("train_seconds", ("val_pixel_auroc", "train_seconds")) == "1_objectives/train_seconds"
    assert mlflow_key("system/cpu_utilization_percentage", OBJECTIVES) == "system/cpu_utilization_percentage"
    assert mlflow_key("epoch", OBJECTIVES) == "epoch"  # the step itself, read by the resume tests
    # the parent's sections (best/, best_<family>/, threshold/) and the trials' sort after the objectives', in
    # both orders MLflow's UI uses: JS sort() (code units, as Python's) and localeCompare (digits before letters)
    keys = [mlflow_key(k, OBJECTIVES) for k in (*VAL_METRICS, *EPOCH_METRICS, "loss_kl")]
    keys += [mlflow_key(k, final=True) for k in (*VAL_METRICS, *TEST_METRICS)]
    keys += ["best/val_pixel_auroc", "best_caae/test_pixel_auroc", "threshold/val_pixel_auroc"]  # the parent's
    named = sorted({section(k) for k in keys} - {""})
    assert named[0] == "1_objectives" and all(not name[0].isdigit() for name in named[1:]), named


def test_final_keys_are_not_read_as_another_epoch() -> None:
    assert mlflow_key("val_pixel_auroc", OBJECTIVES, final=True) == "chosen/val_pixel_auroc"
    assert mlflow_key("test_pixel_auroc", final=True) == "test/pixel_auroc"
    assert mlflow_key("best_epoch", final=True) == "best_epoch"
    per_epoch = {mlflow_key(k, OBJECTIVES) for k in VAL_METRICS}
    assert not per_epoch & {mlflow_key(k, final=True) for k in VAL_METRICS}


def test_objective_names_read_the_parent_param() -> None:
    assert objective_names("val_pixel_auroc:max,train_seconds:min") == ("val_pixel_auroc", "train_seconds")
    assert objective_names("") == ()


def test_the_trial_logger_logs_grouped_keys_and_a_final_record_once(tmp_path) -> None:
    """The Tune callback against a real SQLite store: per-epoch keys grouped, `workers` a param, and a final
    record reported twice (a trial restarted after it) logged once."""
    from mlflow.tracking import MlflowClient
    from ray.tune.experiment import Trial

    from study.tracking.runs import MlflowTrialLogger

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("keys", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    client.log_param(parent, "objectives", "val_pixel_auroc:max,val_slice_auroc:max")  # as open_parent_run logs
    logger = MlflowTrialLogger(uri, parent, epochs=1, run_ids={}, inputs={32: []})  # one size, no data inputs
    trial = Trial("keys", config={"family": "ae", "lr": 0.001}, stub=True)
    logger.on_trial_start(0, [trial], trial)
    epoch = {"epoch": 1, "val_pixel_auroc": 0.7, "val_dice": 0.2, "train_loss": 1.5, "workers": 2, "timestamp": 1}
    logger.on_trial_result(0, [trial], trial, epoch)
    final = {"final": True, "best_epoch": 1, "val_pixel_auroc": 0.7, "test_pixel_auroc": 0.6, "timestamp": 2}
    for _ in range(2):
        logger.on_trial_result(0, [trial], trial, final)
    run = client.get_run(logger.run_ids[trial.trial_id])
    assert set(run.data.metrics) == {
        *("epoch", "1_objectives/val_pixel_auroc", "val/dice", "train/loss"),
        *("best_epoch", "chosen/val_pixel_auroc", "test/pixel_auroc"),
    }
    assert run.data.params["workers"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "chosen/val_pixel_auroc")) == 1
