"""Image size as a searched dimension: a smoke-sized study over 32 and 64, one trial at each size, each trained
and scored on its own size's slice cache, the size in trials.csv, MLflow params, run names and logged models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from study.data import prepare_caches
from study.results import read_trials_csv
from trainables.data.cache import read_meta


@pytest.fixture(scope="module")
def sized(tmp_path_factory: pytest.TempPathFactory, data_root: Path, smoke_study: Callable):
    """The smoke study over sizes 32 and 64, its two points one at each size (the first listed is the reference)."""

    def over_two_sizes(text: str) -> str:
        text = text.replace("image_size: 32", "image_size: [32, 64]")
        return text + "points_to_evaluate:\n  - {family: vae, image_size: 64}\n  - {family: vae, image_size: 32}\n"

    return smoke_study(tmp_path_factory.mktemp("sizes"), data_root, over_two_sizes)


def test_each_trial_trains_at_its_size_on_that_sizes_cache(sized) -> None:
    config, outcome = sized
    rows = read_trials_csv(outcome.study_dir / "trials.csv")
    (baseline,) = [r for r in rows if r["status"] == "baseline"]
    assert int(baseline["param_image_size"]) == 32  # the threshold row at the first listed size
    trials = [r for r in rows if r["status"] != "baseline"]
    assert sorted(int(r["param_image_size"]) for r in trials) == [32, 64]
    assert {r["status"] for r in trials} == {"completed"}, trials
    caches = prepare_caches(config)  # reuses the caches the study built
    assert [int(read_meta(entry)["preprocess"]["image_size"]) for entry, _ in caches.values()] == [32, 64]
    client = MlflowClient(config.mlflow.tracking_uri)
    experiment_id = client.get_run(outcome.parent_run_id).info.experiment_id
    for row in trials:
        size = int(row["param_image_size"])
        run = client.get_run(row["mlflow_run_id"])
        assert run.data.params["image_size"] == str(size)
        assert f" {size}px" in run.data.tags["mlflow.runName"] and row["run_name"] == run.data.tags["mlflow.runName"]
        profiles = [json.loads(i.dataset.profile) for i in run.inputs.dataset_inputs]  # study.tracking.datasets
        assert {p["slice_cache"] for p in profiles} == {caches[size][0].name}  # its size's cache, every split
        (logged,) = client.search_logged_models([experiment_id], f"source_run_id = '{row['mlflow_run_id']}'")
        mlmodel = Model.load(str(Path(urlparse(logged.artifact_location).path) / "MLmodel"))
        (spec,) = mlmodel.signature.inputs.inputs
        assert tuple(spec.shape) == (-1, 1, size, size)
        assert 0.0 <= float(row["test_pixel_auroc"]) <= 1.0 and 0.0 <= float(row["val_pixel_auroc"]) <= 1.0
    assert client.get_run(outcome.parent_run_id).data.params["image_size"] == "32,64"
