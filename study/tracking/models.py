"""Detectors in MLflow's model format, on the driver side.

- Each trial's chosen detector, and the threshold baseline, is an MLflow 3 logged model ``models:/<model_id>``
  named ``model``, an output of its run (so ``runs:/<run_id>/model`` names it too): trainables.mlflow_model's
  pyfunc with a signature and an input example, the self-contained model.pt inside, whether the trial's
  checkpoint is a local folder or objects on S3 (fetched with Ray's Checkpoint API). Its test metrics (and the
  chosen val ones) are logged against the model (``model_id``), so the experiment's Models tab compares them.
- The winner per objective (chosen on val: study.results.best_trial) is registered in the Model Registry
  under ``mlflow.registered_model`` (default ``<study>-detector``), its version's source being the logged model:
  the first objective's winner gets the alias ``champion``, and every objective's winner ``best_<metric>``.
- ``--model`` of study.score / study.evaluate: a run id, ``runs:/ID/...``, ``models:/<model_id>`` or
  ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) becomes a local model.pt.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.inference import ModelError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from study.cluster.storage import RayStorage
    from study.config import StudyConfig

MODEL_PATH = "model"  # runs:/<id>/model
CHAMPION = "champion"  # alias of the first objective's winner
RUN_ID = re.compile(r"[0-9a-f]{32}")  # MLflow run ids are uuid4 hex strings
RUNS_URI = re.compile(r"runs:/([0-9a-f]{32})(/[^\s]*)?")
MODELS_URI = re.compile(r"models:/([^/@\s]+)(@[\w\-]+|/[0-9]+)")
LOGGED_MODEL_URI = re.compile(r"models:/(m-[0-9a-f]{32})")  # MLflow 3 logged model ids: m-<uuid4 hex>
MODEL_FILES = ("artifacts/model.pt", "model.pt")  # inside an MLflow model folder; a bare model.pt artifact


def log_trial_model(
    client: MlflowClient, run_id: str, checkpoint_path: str | None, storage: RayStorage | None
) -> str | None:
    """Log a trial's chosen detector (a logged model) and its figures with its run, from its final checkpoint.

    Returns the model's id. A failure is printed and tagged on the run (``model_error``), not raised (None):
    the trial's metrics are logged all the same.
    """
    if not checkpoint_path:
        return None
    from ray.train import Checkpoint

    where = storage.uri(checkpoint_path) if storage is not None else checkpoint_path
    client.set_tag(run_id, "checkpoint_path", where)
    checkpoint = storage.checkpoint(checkpoint_path) if storage is not None else Checkpoint(checkpoint_path)
    try:
        with tempfile.TemporaryDirectory(prefix="study-checkpoint-") as scratch:
            folder = Path(checkpoint.to_directory(scratch))  # a copy, downloaded when the checkpoint is on S3
            model_id = log_model_file(client, run_id, folder / "model.pt")
            if (folder / "figures").is_dir():
                client.log_artifacts(run_id, str(folder / "figures"), "figures")
            return model_id
    except Exception as err:  # S3, MLflow and torch errors alike: the trial is done, its metrics are logged
        message = f"detector not logged from {where}: {type(err).__name__}: {err}"
        print(f"warning: MLflow run {run_id}: {message}", flush=True)
        client.set_tag(run_id, "model_error", message[:5000])
        return None


def log_model_file(client: MlflowClient, run_id: str, model_pt: Path) -> str:
    """Log ``model_pt`` as the logged model ``model`` of the run ``run_id`` (``models:/<model_id>``); return its id.

    Once per run: a run that already has its READY model (a trial restarted after its final record, which it
    reports again, or a resumed study) keeps it and gets no second one.
    mlflow.pyfunc.log_model is fluent only (the active run, the global tracking URI): both are set for the call,
    and the run's status (ended by the fluent run) is put back, since the trial's callback ends it later.
    """
    import mlflow

    from trainables.mlflow_model import log_detector_model  # mlflow.pyfunc and torch: only when a model is logged

    run = client.get_run(run_id)
    mine = f"source_run_id = '{run_id}' and name = '{MODEL_PATH}'"  # (MLflow 3.17 filters no logged model status)
    for logged in client.search_logged_models([run.info.experiment_id], mine):
        if logged.status == "READY":  # a failed attempt's PENDING or FAILED model is not the run's model
            return logged.model_id
    quiet = contextlib.redirect_stdout(io.StringIO())  # the fluent run's end prints its URL when on a server
    with quiet, global_tracking_uri(client.tracking_uri), mlflow.start_run(run_id=run_id):
        info = log_detector_model(model_pt, MODEL_PATH, tags={"run_name": run.info.run_name or run_id})
    client.update_run(run_id, status=run.info.status)
    client.set_tag(run_id, "model_uri", f"models:/{info.model_id}")
    return info.model_id


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global (fluent) tracking URI set to ``uri`` for the block, then put back as it was.

    mlflow.set_tracking_uri also sets (or, given None, unsets) the MLFLOW_TRACKING_URI environment variable, so
    both the URI MLflow resolves and the user's variable are restored afterwards.
    """
    import mlflow
    from mlflow.environment_variables import MLFLOW_TRACKING_URI

    before, variable = mlflow.get_tracking_uri(), os.environ.get(MLFLOW_TRACKING_URI.name)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # back to MLflow's own resolution (the variable, else its default)
        if variable is not None:
            os.environ[MLFLOW_TRACKING_URI.name] = variable
        if mlflow.get_tracking_uri() != before:  # it had been set in this process: set it again
            mlflow.set_tracking_uri(before)
            if variable is not None:
                os.environ[MLFLOW_TRACKING_URI.name] = variable


def logged_model_id(client: MlflowClient, run_id: str) -> str | None:
    """The id of the last logged model the run ``run_id`` output, or None (a run of an older study, or none)."""
    outputs = client.get_run(run_id).outputs
    found = [o.model_id for o in (outputs.model_outputs if outputs else [])]
    return found[-1] if found else None


def log_baseline_model(client: MlflowClient, run_id: str, family: str, cache_dir: Path, metrics: dict) -> str:
    """Log an untrained baseline (e.g. threshold) as a logged model, like a trial's detector; return its id."""
    from trainables.baseline import write_untrained_model

    with tempfile.TemporaryDirectory(prefix="study-baseline-") as scratch:
        model_pt = write_untrained_model(family, cache_dir, metrics, Path(scratch) / "model.pt")
        return log_model_file(client, run_id, model_pt)


def registered_model_name(config: StudyConfig) -> str:
    return config.mlflow.registered_model or f"{config.name}-detector"


def aliases(index: int, metric: str) -> list[str]:
    """Aliases of the objective at ``index``'s winner: ``champion`` for the first, ``best_<metric>`` for each."""
    return ([CHAMPION] if index == 0 else []) + [f"best_{metric}"]


def register_winners(client: MlflowClient, config: StudyConfig, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Register each objective's winner (chosen on val) and point its aliases at it; return alias -> version.

    A winner already registered (a resumed study) keeps its version: only the aliases move.
    """
    from study.results import best_trial

    name = registered_model_name(config)
    done: dict[str, str] = {}
    for index, objective in enumerate(config.objectives):
        row = best_trial(rows, objective)
        run_id = (row or {}).get("mlflow_run_id")
        if not run_id:
            continue
        model_id = logged_model_id(client, run_id)
        if model_id is None:
            print(f"warning: winner by {objective.metric} (run {run_id}) has no logged model; not registered")
            continue
        version = _version_of(client, name, run_id, model_id)
        for alias in aliases(index, objective.metric):
            client.set_registered_model_alias(name, alias, version)
            done[alias] = version
    return done


def _version_of(client: MlflowClient, name: str, run_id: str, model_id: str) -> str:
    """The registered version of the logged model ``model_id`` under ``name``, created (with the model) if need be."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="Winners of the study, chosen on val")
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        return str(version.version)
    with global_tracking_uri(client.tracking_uri):  # MLflow resolves the models:/ source in the global store
        version = client.create_model_version(name, f"models:/{model_id}", run_id=run_id, model_id=model_id)
    return str(version.version)


def model_uri(model: str) -> str | None:
    """The MLflow URI a ``--model`` value names, or None when it is not one (then it is a path).

    A bare run id means ``runs:/<id>/model``. Raises ModelError for a runs:/ or models:/ URI of the wrong shape.
    """
    if RUN_ID.fullmatch(model):
        return f"runs:/{model}/{MODEL_PATH}"
    if model.startswith("runs:/"):
        match = RUNS_URI.fullmatch(model)
        if match is None:
            raise ModelError(f"{model}: expected runs:/<32-hex run id>/model")
        return model if match.group(2) not in (None, "/") else f"runs:/{match.group(1)}/{MODEL_PATH}"
    if model.startswith("models:/"):
        if MODELS_URI.fullmatch(model) is None and LOGGED_MODEL_URI.fullmatch(model) is None:
            raise ModelError(f"{model}: expected models:/<model_id>, models:/NAME@ALIAS or models:/NAME/VERSION")
        return model
    return None


def fetch_model_file(uri: str, tracking_uri: str, scratch: Path) -> Path:
    """Download the MLflow model (or model.pt artifact) ``uri`` names into ``scratch``; return its model.pt."""
    from mlflow.artifacts import download_artifacts  # slow import: only for MLflow references

    try:
        where = _source(uri, tracking_uri)
        local = Path(download_artifacts(artifact_uri=where, dst_path=str(scratch), tracking_uri=tracking_uri))
    except Exception as err:  # MlflowException, OSError, HTTP errors: all mean the same to the user
        raise ModelError(f"{uri} at {tracking_uri}: cannot fetch the model ({type(err).__name__}: {err})") from err
    if local.is_file():
        return local
    found = next((local / name for name in MODEL_FILES if (local / name).is_file()), None)
    if found is None:
        raise ModelError(f"{uri} at {tracking_uri}: no model.pt in it (expected {' or '.join(MODEL_FILES)})")
    return found


def _source(uri: str, tracking_uri: str) -> str:
    """Where the model ``uri`` names lives in ``tracking_uri``'s store: a logged model's artifacts (named by
    ``models:/<model_id>``, by its run's ``runs:/<run_id>/model``, or by a registered version
    ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``), or a run's artifacts (a study before logged models).

    download_artifacts would look these up in the default (global) store, not in ``tracking_uri``: ask it here.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if (logged := LOGGED_MODEL_URI.fullmatch(uri)) is not None:
        return client.get_logged_model(logged.group(1)).artifact_location
    if (run := RUNS_URI.fullmatch(uri)) is not None:
        rest = (run.group(2) or "").strip("/")
        model_id = logged_model_id(client, run.group(1)) if rest.split("/")[0] == MODEL_PATH else None
        inside = rest[len(MODEL_PATH) :]
        return f"{client.get_logged_model(model_id).artifact_location}{inside}" if model_id else uri
    name, ref = MODELS_URI.fullmatch(uri).groups()
    version = client.get_model_version_by_alias(name, ref[1:]).version if ref.startswith("@") else ref[1:]
    return client.get_model_version_download_uri(name, version)


def reference_name(model: str) -> str:
    """A short, file-name-safe name of an MLflow reference, for output folders (run id, NAME@ALIAS, NAME-v3)."""
    match = RUNS_URI.fullmatch(model)
    if match is not None:
        return match.group(1)
    if model.startswith("models:/"):
        return model[len("models:/") :].replace("/", "-v")
    return model
