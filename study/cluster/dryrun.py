"""``python -m study.run --dry-run``: everything about a study that can be checked without training it.

The study config; the cluster YAML through Ray's own validator (what `ray up` runs first) and its
``metadata.study`` block; one draw of each family's search space (an in-memory Optuna study); the S3 data
prefixes listed; MLflow reachable; Optuna's storage usable; Ray's storage writable (a probe object written and
deleted); the resources one trial asks against what the cluster has now and what it can scale to. Then the plan.

It writes no study state: no results/ folder, MLflow run, Optuna study, staged data or checkpoint. Exit 0 when
every check passed, else 2 with each problem named.
"""

from __future__ import annotations

import copy
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from study.cluster.block import ClusterConfigError, ClusterStudy, cluster_settings, read_study_block
from study.config import ConfigError, StudyConfig, load_config
from trainables.data.s3 import parse_s3_uri

HEAD = "head"  # how the plan names the trial process's place (trials_on_head)


class Problem(Exception):
    """One failed check; the message names the check and what is wrong."""


@dataclass
class DryRun:
    config: StudyConfig
    cluster: ClusterStudy | None = None
    ray_yaml: dict[str, Any] | None = None  # the cluster YAML as Ray prepared it (defaults filled in)
    problems: list[str] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)  # plan lines found by the checks

    def run(self, name: str, check: Any) -> None:
        try:
            check(self)
        except Problem as err:
            self.problems.append(f"{name}: {err}")


def dry_run(config_path: str | None, cluster_yaml: Path | None) -> int:
    """Run every check, print the plan and the problems; 0 when none, else 2."""
    try:
        config = load_config(config_path)
    except ConfigError as err:
        return _verdict([f"study config: {err}"])
    dry = DryRun(config)
    if cluster_yaml is not None:
        dry.run("cluster YAML", lambda d: _read_cluster(d, Path(cluster_yaml)))
    if dry.problems:
        return _verdict(dry.problems)
    for name, check in CHECKS:
        dry.run(name, check)
    _print_plan(dry)
    return _verdict(dry.problems)


def _verdict(problems: list[str]) -> int:
    if not problems:
        print("\ndry run: every check passed; nothing was written")
        return 0
    print(f"\ndry run: {len(problems)} problem(s); nothing was written")
    for problem in problems:
        print(f"  - {problem}")
    return 2


def ray_checked_yaml(path: Path) -> dict[str, Any]:
    """The cluster YAML after Ray's own preparation and schema check (what `ray up` does before any cloud call)."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(path.read_text())
    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "top level"
        raise Problem(f"{path}: Ray's schema refuses it at '{where}': {err.message}") from err
    except (ValueError, KeyError, RuntimeError, AssertionError, TypeError) as err:
        raise Problem(f"{path}: Ray's validator refuses it: {type(err).__name__}: {err}") from err
    return prepared


def _read_cluster(dry: DryRun, path: Path) -> None:
    try:
        dry.cluster = read_study_block(path)
    except ClusterConfigError as err:
        raise Problem(str(err)) from err
    dry.ray_yaml = ray_checked_yaml(path)
    dry.config = cluster_settings(dry.config, dry.cluster)


def _draw_spaces(dry: DryRun) -> None:
    """One draw of each family's define-by-run space, in an in-memory Optuna study (nothing stored)."""
    import optuna

    from search_spaces import define_by_run

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    drawn = []
    for family in dry.config.families:
        trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
        try:
            define_by_run([family], dry.config.data.image_size)(trial)
        except Exception as err:  # a broken space fails in many ways; name the family
            raise Problem(f"family '{family}': {type(err).__name__}: {err}") from err
        drawn.append(f"{family} ({len(trial.params)} params)")
    dry.facts["search"] = ", ".join(drawn)


def _check_data(dry: DryRun) -> None:
    """The cluster's data prefixes list (buckets exist, keys work, objects are there); local folders exist."""
    data = dry.config.data
    if dry.cluster is None:
        where = f"{data.healthy} and {data.lesion}" if data.healthy else f"synthetic cohort under {data.root}"
        dry.facts["data"] = f"{where} (this machine)"
        return
    from trainables.data.s3 import StageError, check_buckets, list_prefix, s3_client

    source = dry.cluster.data
    uris = (source.healthy_uri, source.lesion_uri)
    try:
        check_buckets(source, [parse_s3_uri(uri)[0] for uri in uris])
        client = s3_client(source, probe=True)
        listed = [(uri, list_prefix(client, source, uri)) for uri in uris]
    except StageError as err:
        raise Problem(str(err)) from err
    sizes = ", ".join(f"{uri} ({len(objs)} files, {sum(o.size for o in objs) / 1e6:.1f} MB)" for uri, objs in listed)
    dry.facts["data"] = f"{sizes} on {source.label}, staged into {dry.cluster.cache_dir} on every node"


def _check_mlflow(dry: DryRun) -> None:
    uri = dry.config.mlflow.tracking_uri
    dry.facts["MLflow"] = f"{uri} (experiment '{dry.config.mlflow.experiment or dry.config.name}')"
    if uri.startswith(("http://", "https://")):
        from mlflow.tracking import MlflowClient

        from study.tracking.runs import TrackingError, check_reachable

        try:
            check_reachable(uri)
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)  # a read: it is an MLflow server
        except TrackingError as err:
            raise Problem(str(err)) from err
        except Exception as err:  # MLflow raises many kinds (HTTP, REST, JSON)
            raise Problem(f"'{uri}' answers but not as an MLflow server: {type(err).__name__}: {err}") from err
    else:
        _check_database(uri, "mlflow.tracking_uri")


def _check_optuna(dry: DryRun) -> None:
    from study.search import optuna_storage_url

    url = dry.config.optuna_storage or optuna_storage_url(dry.config)
    dry.facts["Optuna"] = url
    if "://" not in url:  # a journal file
        _check_writable(Path(url).parent, "optuna_storage")
    else:
        _check_database(url, "optuna_storage")


def _check_database(url: str, key: str) -> None:
    """SQLite: its folder can be written (the file is not created). Other databases: a connection opens."""
    if url.startswith("sqlite:///"):
        _check_writable(Path(url[len("sqlite:///") :]).expanduser().parent, key)
        return
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(url)
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # a missing driver, DNS, refused connection, bad password: all named
        raise Problem(f"{key} '{url}' cannot be opened: {type(err).__name__}: {err}") from err


def _check_writable(folder: Path, key: str) -> None:
    """The folder, or the nearest existing folder above it, may be written by this user (nothing is created)."""
    probe = folder.resolve()
    while not probe.exists():
        probe = probe.parent
    if not (probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)):
        raise Problem(f"{key}: cannot create or write {folder} ({probe} is not a writable folder)")


def _check_ray_storage(dry: DryRun) -> None:
    """Where Tune and Train keep state, opened as the study opens it: a probe file written and deleted there."""
    from study.cluster.storage import ray_storage

    config = dry.config
    try:
        storage = ray_storage(config, dry.cluster)
    except ConfigError as err:
        raise Problem(str(err)) from err
    dry.facts["checkpoints"] = f"{storage.uri(storage.path('train'))} (Tune: {storage.uri(storage.path('tune'))})"
    if config.ray_storage is None and _worker_node_types(dry):
        raise Problem(
            "ray_storage is unset, so checkpoints go to the head's disk, which Train workers on other nodes "
            "cannot reach: set metadata.study.ray_storage (s3://bucket/prefix) in the cluster YAML"
        )
    if storage.on_s3:
        _probe(storage, dry.cluster)
    else:
        _check_writable(Path(storage.root).expanduser(), "ray_storage" if config.ray_storage else "results_dir")


def _probe(storage: Any, cluster: ClusterStudy | None) -> None:
    """Write and delete one small object below the study's root.

    With boto3 on the same endpoint and credentials as Ray's pyarrow filesystem: pyarrow would leave a folder
    marker object behind after the delete, and the dry run writes nothing.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from trainables.data.s3 import explain_error

    bucket, _, prefix = storage.root.partition("/")
    key = f"{prefix}/.dry-run-probe-{uuid.uuid4().hex}"
    if cluster is not None:
        from trainables.data.s3 import s3_client

        client = s3_client(cluster.data, probe=True)
    else:  # ray_storage from the study config alone: boto3 reads AWS_ENDPOINT_URL, the profile or the role
        import boto3

        client = boto3.client("s3")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=b"dry run")
        client.delete_object(Bucket=bucket, Key=key)
    except (BotoCoreError, ClientError) as err:
        raise Problem(f"ray_storage {storage.uri(storage.root)} is not writable: {explain_error(err, bucket)}") from err


def _worker_node_types(dry: DryRun) -> list[str]:
    """Nodes besides the head the cluster can have: node types (cloud) or worker_ips (local provider)."""
    if dry.ray_yaml is None:
        return []
    provider = dry.ray_yaml.get("provider", {})
    if provider.get("type") == "local":
        return list(provider.get("worker_ips") or [])
    head = dry.ray_yaml.get("head_node_type")
    types = dry.ray_yaml.get("available_node_types", {})
    return [name for name, t in types.items() if name != head and t.get("max_workers", 0) > 0]


def _check_resources(dry: DryRun) -> None:
    from study.cluster.resources import check_resources

    try:
        dry.facts.update(check_resources(dry.config, dry.ray_yaml))
    except ValueError as err:
        raise Problem(str(err)) from err


def _print_plan(dry: DryRun) -> None:
    config = dry.config
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in config.objectives)
    lines = {
        "study": f"{config.name} ({config.source})",
        "trials": f"{config.num_samples}, at most {config.max_concurrent_trials} at once; sampler {config.sampler}; "
        f"objectives {objectives}",
        "families": ", ".join(config.families),
        "training": f"{config.training.epochs} epochs per trial, "
        + " or ".join(f"{size}x{size}" for size in config.data.image_size)
        + (" slices (searched)" if len(config.data.image_size) > 1 else " slices"),
        **dry.facts,
    }
    print("\nplan:")
    for name, text in lines.items():
        print(f"  {name + ':':<13}{text}")


CHECKS = (
    ("search space", _draw_spaces),
    ("data", _check_data),
    ("MLflow", _check_mlflow),
    ("Optuna storage", _check_optuna),
    ("Ray storage", _check_ray_storage),
    ("resources", _check_resources),
)
