"""python -m study.run: the hyperparameter study (Ray Tune + Optuna over Ray Train DDP trials, MLflow).

With no arguments it runs the embedded default: a small real study on a synthetic cohort, local Ray,
MLflow in results/mlflow.db. `--config` names another study YAML.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.config import ConfigError, StudyConfig, load_config
from study.tracking import TrackingError
from trainables.data.errors import DataError

SUMMARY_COLUMNS = (
    "trial_id",
    "family",
    "status",
    "best_epoch",
    "val_slice_auroc",
    "val_pixel_auroc",
    "test_slice_auroc",
    "test_pixel_auroc",
    "duration_s",
)


@dataclass
class StudyOutcome:
    rows: list[dict[str, Any]]  # one per finished trial, as in trials.csv
    best: dict[str, Any]  # objective -> best trial row (chosen on val)
    study_dir: Path  # results/<study>/
    parent_run_id: str  # MLflow parent run of the study


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="study YAML (default: study/configs/default.yaml)")
    parser.add_argument("--verbose", action="store_true", help="show Ray's own worker and controller logs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        run_study(config, verbose=args.verbose)
    except (ConfigError, TrackingError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run_study(config: StudyConfig, verbose: bool = False) -> StudyOutcome:
    """Run the whole study: data, MLflow parent run, Tune over Train trials, results files."""
    # Heavy imports here so `--help` and config errors answer instantly.
    from mlflow.entities import RunStatus

    from search_spaces import define_by_run, family_space
    from study.data import prepare_data
    from study.tracking import start_parent_run

    study_dir = config.study_dir.resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    space_source = "\n\n".join(inspect.getsource(inspect.getmodule(family_space(f))) for f in config.families)
    print(f"study '{config.name}': {config.num_samples} trials of {', '.join(config.families)}", flush=True)
    cache_dir, preprocess = prepare_data(config)  # bad data fails here, before any MLflow run or trial
    client, parent_run_id = start_parent_run(config, space_source)
    try:
        connect_ray(config, verbose)
        rows = _tune(config, define_by_run(config.families), cache_dir, preprocess, client, parent_run_id)
        outcome = _finish(config, rows, study_dir, client, parent_run_id)
    except BaseException:
        client.set_terminated(parent_run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    client.set_terminated(parent_run_id, RunStatus.to_string(RunStatus.FINISHED))
    return outcome


def connect_ray(config: StudyConfig, verbose: bool) -> None:
    """Attach to the configured or a running Ray cluster (token auth as it is set up); else start a local one."""
    import ray

    if ray.is_initialized():
        return
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    if address is None:
        try:
            ray.init(address="auto", log_to_driver=verbose)
            print(f"attached to the running Ray cluster: {ray.cluster_resources()}", flush=True)
            return
        except ConnectionError:
            pass  # no cluster running: start a local one below
    ray.init(address=address, log_to_driver=verbose)
    print(f"Ray: {ray.cluster_resources()}", flush=True)


def _tune(config, space_fn, cache_dir, preprocess, client, parent_run_id) -> list[dict[str, Any]]:  # noqa: ANN001
    from ray import tune

    from study.progress import ProgressPrinter
    from study.results import TrialRecorder
    from study.search import make_scheduler, make_searcher
    from study.tracking import MlflowTrialLogger
    from study.trial import TrialSetup, run_trial

    objective = config.objectives[0]
    setup = TrialSetup(
        study=config.name,
        storage_path=str((config.study_dir / "train").resolve()),
        cache_dir=str(cache_dir),
        image_size=config.data.image_size,
        preprocess=preprocess,
        epochs=config.training.epochs,
        objective=objective.metric,
        objective_mode=objective.mode,
        seed=config.seed,
        workers=config.training.workers_per_trial,
        cpus_per_worker=config.training.cpus_per_worker,
        gpus_per_worker=config.training.gpus_per_worker,
        threads=config.training.threads_per_worker,
        max_failures=config.training.max_failures,
    )
    logger = MlflowTrialLogger(client, parent_run_id, config.training.epochs)
    recorder = TrialRecorder()
    printer = ProgressPrinter(config.num_samples, config.training.epochs, objective.metric)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, setup=setup), {"cpu": config.training.cpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(config, space_fn),
            scheduler=make_scheduler(config),
            num_samples=config.num_samples,
            max_concurrent_trials=config.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=config.name,
            storage_path=str((config.study_dir / "tune").resolve()),
            callbacks=[logger, recorder, printer],
            verbose=0,
        ),
    )
    tuner.fit()
    for row in recorder.rows:
        row["mlflow_run_id"] = logger.finished_runs.get(row["trial_id"], "")
    return recorder.rows


def _finish(config: StudyConfig, rows, study_dir: Path, client, parent_run_id: str) -> StudyOutcome:  # noqa: ANN001
    from study.results import format_table, write_best_json, write_trials_csv

    write_trials_csv(rows, study_dir / "trials.csv")
    best = write_best_json(rows, config.objectives, study_dir / "best.json")
    for name in ("trials.csv", "best.json"):
        client.log_artifact(parent_run_id, str(study_dir / name))
    print("\n" + format_table(rows, SUMMARY_COLUMNS))
    for metric, row in best.items():
        chosen = f"trial {row['trial_id']} ({row['family']})" if row else "no completed trial"
        print(f"best by {metric}: {chosen}")
    print(f"\nresults: {study_dir}/ (trials.csv, best.json)")
    print(f"MLflow:  mlflow ui --backend-store-uri {config.mlflow.tracking_uri}")
    return StudyOutcome(rows=rows, best=best, study_dir=study_dir, parent_run_id=parent_run_id)


if __name__ == "__main__":
    sys.exit(main())
