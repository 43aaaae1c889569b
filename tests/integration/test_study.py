"""The smoke study end to end: Ray Tune trials, each a 2-worker Ray Train DDP run, tracked in MLflow."""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from mlflow.tracking import MlflowClient

from study.data import prepare_data
from study.results import read_trials_csv
from trainables.checkpoint import load_model
from trainables.data.dataset import SliceDataset


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, data_root: Path, smoke_study: Callable):
    """Run the smoke study once for every test in this module (its console read back by test_console_is_quiet)."""
    return smoke_study(tmp_path_factory.mktemp("smoke"), data_root)


def test_trials_csv_has_every_trial_with_metrics(smoke) -> None:
    config, outcome = smoke
    with (outcome.study_dir / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    (baseline,) = [r for r in rows if r["status"] == "baseline"]  # every study reports the threshold row
    # The default mix holds dark (hypo-intense) lesions, which a brightness threshold ranks below healthy tissue:
    # the threshold is worse than chance overall (measured 0.06 on this cohort), as the cohort is meant to show.
    assert baseline["family"] == "threshold" and 0.0 <= float(baseline["test_pixel_auroc"]) < 0.5
    rows = [r for r in rows if r["status"] != "baseline"]
    assert len(rows) == config.num_samples
    assert {r["status"] for r in rows} == {"completed"}
    for row in rows:
        for key in ("val_slice_auroc", "val_pixel_auroc", "test_slice_auroc", "test_pixel_auroc"):
            assert 0.0 <= float(row[key]) <= 1.0, (key, row[key])
        assert row["param_lr"] and row["param_latent_dim"]
        assert 1 <= int(row["best_epoch"]) <= config.training.epochs
        assert float(row["duration_s"]) > 0
    best = json.loads((outcome.study_dir / "best.json").read_text())
    chosen = best["val_pixel_auroc"]["overall"]
    assert best["val_pixel_auroc"]["by_family"]["vae"]["trial_id"] == chosen["trial_id"]
    assert chosen["val_pixel_auroc"] == max(float(r["val_pixel_auroc"]) for r in rows)


def test_two_ddp_workers_each_train_their_share(smoke) -> None:
    config, outcome = smoke
    cache_dir, _ = prepare_data(config)  # reuses the cache the study built
    train_size = len(SliceDataset(cache_dir, "train"))
    client = MlflowClient(config.mlflow.tracking_uri)
    for row in [r for r in outcome.rows if r["status"] != "baseline"]:
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.params["workers"] == "2" and "workers" not in run.data.metrics  # a setting, not a metric
        per_worker_batch = int(row["param_batch_size"]) // 2
        # DistributedSampler gives each worker floor(N/2) slices; each drops its last partial batch.
        expected = 2 * (train_size // 2 // per_worker_batch) * per_worker_batch
        history = client.get_metric_history(run.info.run_id, "train/slices")
        assert [m.value for m in history] == [expected] * config.training.epochs


def test_mlflow_has_parent_and_child_runs_with_epoch_metrics(smoke) -> None:
    config, outcome = smoke
    client = MlflowClient(config.mlflow.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["families"] == "vae"
    experiment_id = parent.info.experiment_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'")
    assert sorted(c.data.tags["role"] for c in children) == ["baseline"] + ["trial"] * config.num_samples
    children = [c for c in children if c.data.tags["role"] == "trial"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["status"] == "completed"
        assert {"lr", "kl_weight", "latent_dim", "batch_size"} <= set(child.data.params)
        curve = client.get_metric_history(child.info.run_id, "1_objectives/val_pixel_auroc")  # the first section
        history = {m.step: m.value for m in curve}
        assert sorted(history) == list(range(1, config.training.epochs + 1))  # real epochs only
        assert all(0.0 <= v <= 1.0 for v in history.values())
        best_epoch = int(child.data.metrics["best_epoch"])
        # the chosen checkpoint's val_* under its own key, at the step of the epoch it came from
        (chosen,) = client.get_metric_history(child.info.run_id, "chosen/val_pixel_auroc")
        assert chosen.step == best_epoch and chosen.value == history[best_epoch] == max(history.values())
        assert 0.0 <= child.data.metrics["test/pixel_auroc"] <= 1.0
        # test_* is scored once, after the epochs, with the checkpoint chosen on val
        assert [m.step for m in client.get_metric_history(child.info.run_id, "test/pixel_auroc")] == [best_epoch]
        for key in child.data.metrics:  # system/* are MLflow's 5 s samples, stepped by sample, not by epoch
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            assert key.startswith("system/") or max(steps) <= config.training.epochs, (key, steps)
        # a few fixed val slices' anomaly maps per epoch, for MLflow's image grid (mlflow.log_image key and step)
        images = [a.path for a in client.list_artifacts(child.info.run_id, "images") if a.path.endswith(".png")]
        steps = sorted(int(re.search(r"val_anomaly_maps\+step\+(\d+)\+", path)[1]) for path in images)
        assert steps == list(range(1, config.training.epochs + 1)), images
        figures = {a.path for a in client.list_artifacts(child.info.run_id, "figures")}
        assert {"figures/test_roc.png", "figures/test_examples.png", "figures/test_histograms.png"} <= figures
        assert math.isfinite(child.data.metrics["train/loss"])
        # MLflow's keys are grouped by `/` (study.tracking.keys); only the step and best_epoch stay flat
        assert {k for k in child.data.metrics if "/" not in k} == {"epoch", "best_epoch"}, sorted(child.data.metrics)
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id)}
    assert {"trials.csv", "best.json", "config.yaml", "search_space.py", "pareto.csv", "best_so_far.png"} <= artifacts
    assert "optuna_history_val_pixel_auroc.png" in artifacts


def test_every_run_has_one_logged_model_and_the_registry_points_at_it(smoke) -> None:
    """MLflow 3 logged models: one per completed trial and for the baseline, with a signature and the test metrics
    logged against it (the Models tab compares them); the registered winner's source is its logged model."""
    from mlflow.models import Model

    config, outcome = smoke
    client = MlflowClient(config.mlflow.tracking_uri)
    experiment_id = client.get_run(outcome.parent_run_id).info.experiment_id
    for row in outcome.rows:  # every completed trial, and the threshold baseline
        (logged,) = client.search_logged_models([experiment_id], f"source_run_id = '{row['mlflow_run_id']}'")
        assert logged.model_id.startswith("m-") and logged.name == "model" and logged.status == "READY"
        assert client.get_run(row["mlflow_run_id"]).data.tags["model_uri"] == f"models:/{logged.model_id}"
        mlmodel = Model.load(str(Path(urlparse(logged.artifact_location).path) / "MLmodel"))
        assert mlmodel.model_id == logged.model_id and mlmodel.signature is not None
        on_model = {m.key: m.value for m in logged.metrics}
        assert on_model["test/pixel_auroc"] == float(row["test_pixel_auroc"])
        assert on_model["chosen/val_pixel_auroc"] == float(row["val_pixel_auroc"])
    winner = json.loads((outcome.study_dir / "best.json").read_text())["val_pixel_auroc"]["overall"]
    (logged,) = client.search_logged_models([experiment_id], f"source_run_id = '{winner['mlflow_run_id']}'")
    champion = client.get_model_version_by_alias(f"{config.name}-detector", "champion")
    assert champion.source == f"models:/{logged.model_id}" and champion.run_id == winner["mlflow_run_id"]


def test_checkpoint_is_a_usable_detector(smoke) -> None:
    config, outcome = smoke
    models = sorted((outcome.study_dir / "train").rglob("model.pt"))
    assert len(models) == config.num_samples  # num_to_keep=1: one checkpoint per trial
    family, nets, record = load_model(models[0])
    assert record["family"] == "vae" and record["image_size"] == config.data.reference_size
    assert record["preprocess"]["image_size"] == config.data.reference_size
    assert 1 <= record["epoch"] <= config.training.epochs
    x = torch.randn(3, 1, 32, 32)
    scores = family.score(nets, x)
    assert scores.pixel_map.shape == x.shape and scores.slice_score.shape == (3,)


def test_mlflow_shows_a_training_experiment_with_data_and_a_summary(smoke, tmp_path: Path) -> None:
    config, outcome = smoke
    client = MlflowClient(config.mlflow.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on the runs
    cache_dir, _ = prepare_data(config)
    query = f"tags.mlflow.parentRunId = '{outcome.parent_run_id}'"
    digests, names, numbers = set(), set(), set()
    for run in client.search_runs([experiment.experiment_id], query):
        inputs = {t.value: i.dataset for i in run.inputs.dataset_inputs for t in i.tags}
        trained = run.data.tags["role"] == "trial"
        assert sorted(inputs) == (["test", "training"] if trained else ["test"]) + ["validation"]
        for context, dataset in inputs.items():
            split = {"training": "train", "validation": "val"}.get(context, context)
            assert dataset.name == f"synthetic-h8-l4-s0:{split}" and len(dataset.digest) == 12
            assert json.loads(dataset.profile)["slice_cache"] == cache_dir.name
            digests.add((context, dataset.digest))
        assert re.fullmatch(r"[0-9a-f]{40}", run.data.tags["mlflow.source.git.commit"])  # the project's commit
        assert run.data.tags["config_file"] == str(config.source)
        if trained:  # the run's short name tells trials apart; every setting is in its params and description
            params = run.data.params
            shown = re.fullmatch(r"(\d\d) vae β=(\S+) lr=(\S+)", run.info.run_name)
            assert shown, run.info.run_name  # values rounded to 3 digits
            assert float(shown[2]) == pytest.approx(float(params["kl_weight"]), rel=0.01, abs=0.005)
            assert float(shown[3]) == pytest.approx(float(params["lr"]), rel=0.01)
            numbers.add(int(shown[1]))
            note = run.data.tags["mlflow.note.content"]
            assert all(f"`{key}` = `{value}`" in note for key, value in params.items() if key != "workers")
            assert run.data.tags["family"] == "vae" and run.data.tags["status"] == "completed"
            names.add(run.info.run_name)
    assert len(digests) == 3  # one digest per split, the same on every run
    assert len(names) == config.num_samples  # no two trials share a name
    assert numbers == set(range(1, config.num_samples + 1))  # numbered in the order Tune made them
    names_csv = {r["mlflow_run_id"]: r["run_name"] for r in read_trials_csv(outcome.study_dir / "trials.csv")}
    trial_runs = client.search_runs([experiment.experiment_id], f"{query} and tags.role = 'trial'")
    named = {run_id: name for run_id, name in names_csv.items() if name}  # the baseline's row has none
    assert named == {r.info.run_id: r.info.run_name for r in trial_runs}
    best = json.loads((outcome.study_dir / "best.json").read_text())
    for metric in config.objective_names:
        assert parent.data.metrics[f"best/{metric}"] == best[metric]["overall"][metric]
    for appearance, entry in best.get("by_appearance", {}).items():  # chosen on its val, its test logged
        logged = parent.data.metrics.get(f"best_{appearance}/test_pixel_auroc")
        expected = entry["best"][f"test_pixel_auroc_{appearance}"]  # NaN (not logged) where test has no such lesion
        assert logged == expected if math.isfinite(expected) else logged is None, (appearance, logged, expected)
    (baseline,) = [r for r in outcome.rows if r["status"] == "baseline"]
    assert parent.data.metrics["threshold/val_pixel_auroc"] == baseline["val_pixel_auroc"]
    summary = Path(client.download_artifacts(outcome.parent_run_id, "summary.md", str(tmp_path))).read_text()
    assert parent.data.tags["mlflow.note.content"] == summary  # shown as the run's description
    winner = best["val_pixel_auroc"]["overall"]
    assert parent.data.tags["winner_run_id"] == winner["mlflow_run_id"]
    winner_name = client.get_run(winner["mlflow_run_id"]).info.run_name
    assert f"**Winner** by `val_pixel_auroc`: trial `{winner['trial_id']}`, **{winner_name}**" in summary
    assert f"python -m study.score --model {winner['mlflow_run_id']} --tracking-uri" in summary
    assert f"| baseline | {baseline['trial_id']} | baseline-threshold |" in summary  # named as its run


def test_console_is_quiet(smoke) -> None:
    config, outcome = smoke
    console = (Path(config.results_dir).parent / "console.txt").read_text()
    assert "Configuration for experiment" not in console and "tensorboard" not in console.lower()
    progress = [line for line in console.splitlines() if re.match(r"\[ *\d+s\] trial \d+/\d+ ", line)]
    # per trial: started, one line per epoch, the chosen epoch with its test scores, completed
    assert len(progress) == config.num_samples * (config.training.epochs + 3)
    assert sum(" started vae batch_size=" in line for line in progress) == config.num_samples
    assert re.search(r"^trial_id +family +status", console, re.MULTILINE)  # the closing table
