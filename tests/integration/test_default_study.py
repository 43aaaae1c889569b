"""The embedded default study (study/configs/default.yaml) end to end at a reduced size: every family it names,
its two objectives and Pareto front, the threshold row, and metrics per lesion appearance in trials.csv and
MLflow. Only the sizes are reduced (cohort, trials, epochs); families, objectives, sampler, seeds and the
paper settings tried first are the product's.

Marked slow: it took 230 s on the shared 2-core machine (lock held, load average about 70 from other work),
over the default suite's per-change budget; CI runs it with `python -m pytest -m slow`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from study.config import DEFAULT_CONFIG, load_config
from study.results import read_trials_csv
from trainables.data.lesions import APPEARANCES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_small(tmp_path_factory: pytest.TempPathFactory, data_root: Path, study_on_local_ray: Callable):
    tmp = tmp_path_factory.mktemp("default")
    config = load_config(DEFAULT_CONFIG)
    config.results_dir = str(tmp / "results")
    config.data.root = str(data_root)
    # 8 lesion cases: two per appearance, so val and test each hold every appearance
    config.data.synthetic.healthy, config.data.synthetic.lesion = 8, 8
    config.num_samples = len(config.points_to_evaluate)  # the paper settings, one trial per family
    config.training.epochs = 1
    config.mlflow.tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    outcome = study_on_local_ray(config)
    return config, outcome


def test_default_study_runs_every_family_with_two_objectives(default_small) -> None:
    config, outcome = default_small
    assert {"caae", "lran"} <= set(config.families)
    assert config.objective_names == ["val_pixel_auroc", "val_slice_auroc"]
    rows = read_trials_csv(outcome.study_dir / "trials.csv")
    (baseline,) = [r for r in rows if r["status"] == "baseline"]
    trials = [r for r in rows if r["status"] != "baseline"]
    assert sorted(r["family"] for r in trials) == sorted(p["family"] for p in config.points_to_evaluate)
    assert {r["status"] for r in trials} == {"completed"}
    caae = next(r for r in trials if r["family"] == "caae")
    assert caae["param_latent_weight"] == 1.0  # the first paper's best lambda, tried first
    for row in [baseline, *trials]:
        for name in APPEARANCES:
            value = row[f"test_pixel_auroc_{name}"]
            assert 0.0 <= value <= 1.0, (row["trial_id"], name, value)
    # the threshold sees bright lesions and cannot see dark ones: its map is the image
    assert baseline["test_pixel_auroc_bright"] > 0.9 > 0.3 > baseline["test_pixel_auroc_dark"]
    pareto = read_trials_csv(outcome.study_dir / "pareto.csv")
    assert {r["front"] for r in pareto} >= {"overall"}
    assert (outcome.study_dir / "pareto.png").is_file() and (outcome.study_dir / "pareto.html").is_file()


def test_per_appearance_metrics_reach_mlflow(default_small) -> None:
    config, outcome = default_small
    client = MlflowClient(config.mlflow.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    children = client.search_runs([parent.info.experiment_id], query)
    assert len(children) == config.num_samples + 1  # + the threshold row
    for child in children:
        for name in APPEARANCES:
            wanted = {f"test/pixel_auroc_{name}", f"test/pixel_auprc_{name}", f"chosen/val_pixel_auroc_{name}"}
            assert wanted <= set(child.data.metrics), (child.data.tags.get("role"), name)


# The MLflow walkthrough's filters (docs/reviewing-in-mlflow.md), and the runs each must find (from trials.csv)
README_FILTERS = {
    "tags.family = 'caae' and tags.status = 'completed'": lambda r: (r["family"], r["status"]) == ("caae", "completed"),
    "tags.role = 'trial' and metrics.best_epoch < 6": lambda r: r["status"] != "baseline" and r["best_epoch"] < 6,
    "tags.role = 'baseline'": lambda r: r["status"] == "baseline",
}


def test_readme_walkthrough_matches_the_default_study(default_small) -> None:
    """Every filter README's walkthrough gives finds, in this study's store, the runs it says; the chart keys it
    names exist on every run, and the parent's artifacts hold the Pareto pictures it names."""
    config, outcome = default_small
    section = (Path(__file__).parents[2] / "docs" / "reviewing-in-mlflow.md").read_text()
    assert re.findall(r"^   - `(tags\.[^`]+)`", section, re.MULTILINE) == list(README_FILTERS)
    assert all(f"`{family}`" in section for family in config.families)
    assert all(f"`{metric}`" in section for metric in config.objective_names)
    client = MlflowClient(config.mlflow.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    rows = read_trials_csv(outcome.study_dir / "trials.csv")
    for text, wanted in README_FILTERS.items():
        query = f"tags.mlflow.parentRunId = '{parent.info.run_id}' and {text}"
        found = {run.info.run_id for run in client.search_runs([parent.info.experiment_id], query)}
        assert found and found == {r["mlflow_run_id"] for r in rows if wanted(r)}, text
    assert "**`1_objectives`**" in section  # the chart view's first section: the objectives per epoch
    for row in rows:  # the scatter's axes; a trial's objective curves
        run = client.get_run(row["mlflow_run_id"])
        assert {f"chosen/{metric}" for metric in config.objective_names} <= set(run.data.metrics)
        curves = {f"1_objectives/{metric}" for metric in config.objective_names}
        assert row["status"] == "baseline" or curves <= set(run.data.metrics), row["trial_id"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"pareto.png", "pareto.html", "pareto.csv", "trials.csv", "best.json"} <= artifacts
