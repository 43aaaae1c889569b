"""python -m study.run: the hyperparameter study (Ray Tune + Optuna over Ray Train DDP trials, MLflow).

With no arguments it runs the embedded default: a small real study on a synthetic cohort, local Ray,
MLflow in results/mlflow.db. `--config` names another study YAML; `--resume` continues an interrupted one;
`--dry-run` checks everything that can be checked without training and writes nothing.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from mlflow.entities import DatasetInput, RunStatus
from ray._private.services import find_bootstrap_address  # the reader ray.init itself uses for Ray's address file

from search_spaces import family_space
from study.cluster.block import (
    BOOTSTRAP_CONFIG,
    ClusterStudy,
    cluster_settings,
    default_cluster_yaml,
    mlflow_ui_hint,
    read_study_block,
)
from study.cluster.dryrun import dry_run
from study.cluster.storage import RayStorage, ray_storage
from study.config import ConfigError, StudyConfig, load_config
from study.progress import ProgressPrinter
from study.results import TrialRecorder, best_trial, format_table
from study.tracking.runs import MlflowTrialLogger, TrackingError, check_reachable, open_parent_run, tracking_uri
from trainables.data.errors import DataError
from trainables.data.s3 import StageError

if TYPE_CHECKING:
    from study.trial import TrialSetup

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
STATE_FILE = "study.json"  # the study's MLflow parent run, for --resume
# What a fresh run of a study replaces (MLflow keeps earlier runs; the data cache is shared and kept).
STUDY_STATE = ("tune", "train", "optuna.db", "trials.jsonl", STATE_FILE)


@dataclass
class StudyOutcome:
    rows: list[dict[str, Any]]  # one per finished trial, as in trials.csv
    study_dir: Path  # results/<study>/
    parent_run_id: str  # MLflow parent run of the study
    interrupted: bool  # the study stopped before all trials finished (resume with --resume)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.run", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="study YAML (default: study/configs/default.yaml)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--cluster",
        default=None,
        metavar="YAML",
        help="cluster YAML whose metadata.study names the S3 data, Ray storage and MLflow (default on a head "
        "that `ray up` started and whose Ray runs: ~/ray_bootstrap_config.yaml)",
    )
    where.add_argument("--no-cluster", action="store_true", help="ignore ~/ray_bootstrap_config.yaml: a local study")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted study of this config")
    parser.add_argument(
        "--dry-run", action="store_true", help="check config, cluster, storage, MLflow; print the plan; train nothing"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray's own worker and controller logs and Tune's own output"
    )
    return parser.parse_args(argv)


def choose_cluster_yaml(args: argparse.Namespace) -> Path | None:
    """The cluster YAML this run uses, said first: everything after depends on it."""
    chosen = None if args.no_cluster else Path(args.cluster) if args.cluster else default_cluster_yaml()
    left_over = BOOTSTRAP_CONFIG.expanduser()
    if chosen is not None:
        why = " (Ray's copy on this head, whose Ray `ray up` started; --no-cluster to ignore it)"
        print(f"cluster: {chosen}{why if args.cluster is None else ''}", flush=True)
    elif left_over.is_file() and not args.no_cluster:
        print(f"cluster: none ({left_over} is there, but no Ray started from it runs on this machine)", flush=True)
    else:
        print("cluster: none (this machine)", flush=True)
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster_yaml = choose_cluster_yaml(args)
    if args.dry_run:
        return dry_run(args.config, cluster_yaml)
    try:
        config = load_config(args.config)
        cluster = None
        if cluster_yaml is not None:
            cluster = read_study_block(cluster_yaml)
            config = cluster_settings(config, cluster)  # MLflow, Ray and Optuna storage from the YAML
        outcome = run_study(config, resume=args.resume, verbose=args.verbose, cluster=cluster)
    except (ConfigError, TrackingError, DataError, StageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 130 if outcome.interrupted else 0


def run_study(
    config: StudyConfig, resume: bool = False, verbose: bool = False, cluster: ClusterStudy | None = None
) -> StudyOutcome:
    """Run (or resume) the whole study: data, MLflow parent run, Tune over Train trials, results files."""
    # torch comes with these (as with every local import below): --help and --dry-run do not load it
    from study.data import prepare_caches
    from study.tracking.baseline import baseline_row
    from study.tracking.datasets import split_inputs, study_cohort
    from study.tuning import trial_setup

    quiet_libraries(verbose)
    study_dir = config.study_dir.resolve()
    check_reachable(tracking_uri(config))  # seconds, before any staging, cache building or state reset
    storage = ray_storage(config, cluster)
    previous = _resume_state(config, study_dir, storage) if resume else None
    started_ray = connect_ray(config, verbose)  # before the data: the slice cache is built by Ray tasks
    try:
        # bad data fails here: before the previous run's state is replaced, any MLflow run or any trial
        caches = prepare_caches(config, cluster)  # one slice cache per image size
        if not resume:
            _fresh_state(config, study_dir, storage)
        print(f"study '{config.name}': {config.num_samples} trials of {', '.join(config.families)}", flush=True)
        if config.ray_storage:
            print(f"Ray storage (Tune state, Train checkpoints): {storage.uri(storage.root)}", flush=True)
        space_source = "\n\n".join(inspect.getsource(inspect.getmodule(family_space(f))) for f in config.families)
        client, parent_run_id = open_parent_run(config, space_source, previous)
        (study_dir / STATE_FILE).write_text(json.dumps({"parent_run_id": parent_run_id}))
        try:
            cohort = study_cohort(config, cluster)
            inputs = {size: split_inputs(cohort, entry) for size, (entry, _) in caches.items()}  # what runs record
            reference = config.data.reference_size  # the threshold baseline is scored at the first listed size
            baseline_row(study_dir, caches[reference][0], client, parent_run_id, inputs[reference])
            setup = trial_setup(config, caches, cluster, storage)
            rows = _tune(config, setup, parent_run_id, resume, verbose, inputs)
            outcome = _finish(config, rows, study_dir, client, parent_run_id, cluster)
        except BaseException as err:
            status = RunStatus.KILLED if isinstance(err, KeyboardInterrupt) else RunStatus.FAILED
            client.set_terminated(parent_run_id, RunStatus.to_string(status))
            raise
    finally:
        if started_ray:  # a Ray this study started goes with it; an attached cluster stays up
            ray.shutdown()
    status = RunStatus.KILLED if outcome.interrupted else RunStatus.FINISHED
    client.set_terminated(parent_run_id, RunStatus.to_string(status))
    return outcome


def quiet_libraries(verbose: bool) -> None:
    """Keep the console to our progress lines: MLflow's INFO lines (tables created, each run's system-metrics
    monitor started and stopped, an input example validated) and its artifact download bars only bury them.
    ``--verbose`` keeps everything."""
    if verbose:
        return
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _resume_state(config: StudyConfig, study_dir: Path, storage: RayStorage) -> str:
    """For --resume: the parent run to continue (ConfigError, and nothing touched, when there is none)."""
    from study.tuning import can_resume  # torch: see run_study

    state = study_dir / STATE_FILE
    if not (state.is_file() and can_resume(config, storage)):
        raise ConfigError(f"{config.source}: nothing to resume in {study_dir} (run without --resume to start)")
    return json.loads(state.read_text())["parent_run_id"]


def _fresh_state(config: StudyConfig, study_dir: Path, storage: RayStorage) -> None:
    """For a fresh run: clear the study's previous state (its data is ready by now) and make its folder."""
    existing = [study_dir / name for name in STUDY_STATE if (study_dir / name).exists()]
    if existing:
        print(f"starting '{config.name}' afresh: replacing the previous run's state in {study_dir}", flush=True)
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    storage.clear()  # the study's Tune/Train state on S3 (ray_storage), as the folders above are locally
    study_dir.mkdir(parents=True, exist_ok=True)


def connect_ray(config: StudyConfig, verbose: bool) -> bool:
    """Attach to the configured Ray, or to one started to be shared, else start a private local one.

    Shared means named (``ray_address``, RAY_ADDRESS) or started with ``ray start`` (a cluster's head, or local
    debugging), which records its address for later drivers. Another study's private Ray is never joined:
    ``address="auto"`` would find it too, wait for its CPUs and die with it. Token auth stays as it is set up.
    Returns True when this call started Ray (the study then shuts it down at its end).
    """
    if ray.is_initialized():
        return False
    address = config.ray_address or os.environ.get("RAY_ADDRESS")
    shared = address is None and shared_ray_address()
    if shared:
        try:
            ray.init(address=shared, log_to_driver=verbose)
            print(f"attached to the Ray cluster started with `ray start` at {shared}: {ray.cluster_resources()}")
            return False
        except ConnectionError:
            print(f"the Ray that `ray start` recorded at {shared} does not answer: starting a private one")
    ray.init(address=address or "local", log_to_driver=verbose)
    print(f"Ray: {ray.cluster_resources()}", flush=True)
    return address in (None, "local")


def shared_ray_address() -> str | None:
    """The address the last ``ray start`` on this machine recorded (Ray's ``ray_current_cluster`` file), if any.

    Private ``ray.init()`` instances record none, which is what tells the two apart."""
    return find_bootstrap_address(None)


def _tune(
    config: StudyConfig,
    setup: TrialSetup,
    parent_run_id: str,
    resume: bool,
    verbose: bool,
    inputs: dict[int, list[DatasetInput]],
) -> list[dict]:
    from study.tuning import fit, make_tuner  # torch: see run_study

    run_ids: dict[str, str] = {}
    recorder = TrialRecorder(config.study_dir.resolve(), run_ids, config.data.reference_size)
    callbacks = [
        MlflowTrialLogger(tracking_uri(config), parent_run_id, config.training.epochs, run_ids, inputs, setup.storage),
        recorder,
        ProgressPrinter(config.num_samples, config.training.epochs, already_done=len(recorder.trial_rows)),
    ]
    if resume:
        print(f"resuming: {len(recorder.trial_rows)} of {config.num_samples} trials already finished", flush=True)
    fit(make_tuner(config, setup, callbacks, resume), verbose)
    return recorder.rows


def _finish(
    config: StudyConfig,
    rows: list[dict],
    study_dir: Path,
    client: Any,
    parent_run_id: str,
    cluster: ClusterStudy | None = None,
) -> StudyOutcome:
    from study.tracking.report import log_study_report, write_study_report  # torch: see run_study

    files = write_study_report(config, rows, study_dir)
    log_study_report(client, parent_run_id, config, rows, files)
    trials = [r for r in rows if r["status"] != "baseline"]
    interrupted = len(trials) < config.num_samples
    print("\n" + format_table(rows, SUMMARY_COLUMNS))
    for objective in config.objectives:
        row = best_trial(rows, objective)
        chosen = f"trial {row['trial_id']} ({row['family']})" if row else "no completed trial"
        print(f"best by {objective.metric} ({objective.mode}, chosen on val): {chosen}")
    _register(config, rows, client)
    if interrupted:
        print(f"\ninterrupted after {len(trials)} of {config.num_samples} trials; continue with:")
        where = f" --cluster {cluster.source}" if cluster else ""
        print(f"  python -m study.run --config {config.source}{where} --resume")
    print(f"\nresults: {study_dir}/ (trials.csv, best.json, pareto.csv, plots)")
    print(f"MLflow:  {mlflow_ui_hint(config.mlflow.tracking_uri, cluster.source if cluster else None)}")
    return StudyOutcome(rows=rows, study_dir=study_dir, parent_run_id=parent_run_id, interrupted=interrupted)


def _register(config: StudyConfig, rows: list[dict], client: Any) -> None:
    """Register the winners in MLflow's Model Registry; a registry error is printed, the study's results stand."""
    from study.tracking.models import register_winners, registered_model_name  # torch: see run_study

    name = registered_model_name(config)
    try:
        registered = register_winners(client, config, rows)
    except Exception as err:  # MLflow raises many types; the trials, their models and the report are logged
        print(f"warning: winners not registered as '{name}': {type(err).__name__}: {err}")
        return
    for alias, version in registered.items():
        print(f"registered: models:/{name}@{alias} (version {version})")


if __name__ == "__main__":
    sys.exit(main())
