"""MLflow bookkeeping: one experiment per study, a parent run for the study, a child run per trial.

Everything goes through `MlflowClient` with explicit run ids (no fluent "active run" state), so the
Tune callback can log several concurrent trials from the driver. Workers never talk to MLflow.
"""

from __future__ import annotations

import math
import numbers
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml
from mlflow.entities import DatasetInput, Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_PARENT_RUN_ID,
    MLFLOW_RUN_NAME,
    MLFLOW_RUN_NOTE,
    MLFLOW_SOURCE_NAME,
)
from ray.tune import Callback
from ray.tune.experiment import Trial

from study.config import StudyConfig
from study.results import failure_reason
from study.tracking.keys import mlflow_key, objective_names
from study.tracking.names import RUN_NAME_LIMIT, run_name, trial_number
from trainables.metric_names import is_reported_metric
from trainables.val_maps import IMAGE_KEY, decode_png
from trainables.val_maps import RESULT_KEY as VAL_MAPS

TRIAL_ID_TAG = "trial_id"
# The experiment's kind for MLflow 3: model training, not GenAI traces. (MLflow 3.17's UI nevertheless picks its
# pages by its own "GenAI | Model training" switch; README, "Reviewing a study in MLflow".)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
SETTINGS = ("workers",)  # reported by every epoch, logged as params: settings, not measurements
EPOCH_ONLY = ("train_seconds",)  # a final record's copy of the last epoch's value, already on its curve
PROJECT = Path(__file__).resolve().parents[2]  # the checkout holding study/ (its git commit is tagged)
CONFIG_TAG = "config_file"
SOURCE_TAGS = (MLFLOW_GIT_COMMIT, MLFLOW_SOURCE_NAME, CONFIG_TAG)  # the parent's, copied to every child run

PROBE_TIMEOUT_S = 5  # an MLflow server that does not answer in this time is refused before the study starts
_UNREACHABLE_HINT = "start the server, or fix mlflow.tracking_uri (study YAML) or metadata.study.mlflow (cluster YAML)"


class TrackingError(RuntimeError):
    """MLflow cannot be reached or written: raised before any training starts."""


def tracking_uri(config: StudyConfig) -> str:
    """The configured tracking URI, with a relative sqlite path made absolute (workers/UI see the same file)."""
    uri = config.mlflow.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        path = Path(uri[len(prefix) :]).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"{prefix}{path}"
    return uri


def open_parent_run(
    config: StudyConfig, search_space: str, resume_run_id: str | None = None
) -> tuple[MlflowClient, str]:
    """Open the study's parent run (a new one, or `resume_run_id` again); fail fast if MLflow is unusable."""
    uri = tracking_uri(config)
    check_reachable(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        if resume_run_id is not None:
            client.update_run(resume_run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            return client, resume_run_id
        experiment_id = _experiment_id(client, config.mlflow.experiment or config.name, uri)
        tags = {"role": "study", **source_tags(config)}
        run = client.create_run(experiment_id, run_name=f"study-{config.name}", tags=tags)
    except Exception as err:  # MLflow raises many types (HTTP, SQLAlchemy, MlflowException)
        raise TrackingError(f"MLflow at '{uri}' is not usable: {err}") from err
    run_id = run.info.run_id
    client.log_batch(run_id, params=[Param(k, _text(v)) for k, v in _study_params(config).items()])
    client.log_text(run_id, search_space, "search_space.py")
    client.log_text(run_id, yaml.safe_dump(resolved_config(config), sort_keys=False), "config.yaml")
    return client, run_id


def source_tags(config: StudyConfig) -> dict[str, str]:
    """What the study ran from: the project's git commit (where it is a git checkout) and the config file."""
    tags = {CONFIG_TAG: str(config.source), MLFLOW_SOURCE_NAME: "python -m study.run"}
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, timeout=10, check=True
        )
        tags[MLFLOW_GIT_COMMIT] = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout (an installed copy): no commit tag
        pass
    return tags


def check_reachable(uri: str) -> None:
    """Refuse an http(s) tracking URI whose server does not answer, in seconds.

    MLflow's own client retries a refused connection for minutes (MLFLOW_HTTP_REQUEST_MAX_RETRIES), so a
    typo or a stopped server would otherwise hold the study for that long before saying anything.
    """
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return  # it answered (a proxy may hide /health or want a token): reachable, MLflow's calls decide the rest
    except urllib.error.URLError as err:
        if isinstance(err.reason, ssl.SSLError):
            return  # it answered over TLS; which CAs to trust is MLflow's setting (MLFLOW_TRACKING_SERVER_CERT_PATH)
        raise TrackingError(f"MLflow at '{uri}' is not reachable ({err.reason}): {_UNREACHABLE_HINT}") from err
    except OSError as err:  # a timeout while reading the answer
        raise TrackingError(f"MLflow at '{uri}' is not reachable ({err}): {_UNREACHABLE_HINT}") from err


def resolved_config(config: StudyConfig) -> dict[str, Any]:
    """The study config with every default filled in, as logged to MLflow."""
    return {k: v for k, v in asdict(config).items() if k != "source"}


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        return client.create_experiment(name, artifact_location=_artifacts(uri, name), tags=tags)
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # made by an older study, or guessed by the UI
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def _artifacts(uri: str, experiment: str) -> str | None:
    """Artifacts beside a local SQLite store (results/mlartifacts/); a server decides its own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts" / experiment).as_uri()


def _study_params(config: StudyConfig) -> dict[str, Any]:
    return {
        "families": ",".join(config.families),
        "objectives": ",".join(f"{o.metric}:{o.mode}" for o in config.objectives),
        "sampler": config.sampler,
        "scheduler": config.scheduler,
        "num_samples": config.num_samples,
        "epochs": config.training.epochs,
        "workers_per_trial": config.training.workers_per_trial,
        "image_size": ",".join(str(size) for size in config.data.image_size),
    }


def trial_label(config: dict[str, Any]) -> str:
    """A trial in full words, as its progress line and run description: the family, then its sampled settings."""
    settings = " ".join(f"{k}={_short(v)}" for k, v in sorted(config.items()) if k != "family" and v is not None)
    return f"{config.get('family', 'trial')} {settings}".strip()[:RUN_NAME_LIMIT]


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class MlflowTrialLogger(Callback):
    """Tune callback: a child run per trial with its params, data, per-epoch metrics, final metrics and status.

    A trial resumed after an interruption gets its own child run back (found by the trial_id tag), so
    a resumed study has one child run per trial, never two.
    """

    def __init__(
        self,
        uri: str,
        parent_run_id: str,
        epochs: int,
        run_ids: dict[str, str],
        inputs: dict[int, list[DatasetInput]],
        storage: Any = None,
    ) -> None:
        self.uri = uri
        self.storage = storage  # study.cluster.storage.RayStorage the trials' checkpoints are on (None: local folders)
        self.parent_run_id = parent_run_id
        self.epochs = epochs
        self.run_ids = run_ids  # trial_id -> MLflow run id, shared with the trial recorder
        # per image size, the splits a trial at that size trains and is scored on (study.tracking.datasets); the
        # first key is the size of trials that draw none
        self.inputs = inputs
        self._client: MlflowClient | None = None
        self._settings_logged: set[str] = set()  # trial ids whose settings (workers) are logged as params
        self._objectives: tuple[str, ...] | None = None  # the study's objective names, read from the parent run

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with its experiment state
        return {**self.__dict__, "_client": None, "_settings_logged": set(), "_objectives": None}

    @property
    def objectives(self) -> tuple[str, ...]:
        """The study's objectives (the parent run's ``objectives`` param): their curves get the first chart section."""
        if self._objectives is None:
            params = self.client.get_run(self.parent_run_id).data.params
            self._objectives = objective_names(params.get("objectives", ""))
        return self._objectives

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id) or self._existing_run(trial.trial_id)
        if run_id is not None:
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.client.set_tag(run_id, "status", "running")
            self.run_ids[trial.trial_id] = run_id
            return
        tags = {MLFLOW_PARENT_RUN_ID: self.parent_run_id, TRIAL_ID_TAG: trial.trial_id, "role": "trial"}
        # family and status are tags so the runs view can group and filter by them
        family = trial.config.get("family", "")
        name = run_name(trial_number(trial), trial.config)
        tags.update({MLFLOW_RUN_NAME: name, "family": family, "status": "running"})
        size = trial.config.get("image_size", next(iter(self.inputs)))
        settings = {"image_size": size, **trial.config}  # what the trial trains with, its size included
        tags[MLFLOW_RUN_NOTE] = _description(trial.trial_id, settings)
        parent = self.client.get_run(self.parent_run_id)
        tags.update({k: v for k, v in parent.data.tags.items() if k in SOURCE_TAGS})  # the commit and config file
        run = self.client.create_run(parent.info.experiment_id, tags=tags)
        self.run_ids[trial.trial_id] = run.info.run_id
        params = [Param(k, _text(v)) for k, v in sorted(settings.items())]
        self.client.log_batch(run.info.run_id, params=params)
        self.client.log_inputs(run.info.run_id, datasets=self.inputs[size])

    def _existing_run(self, trial_id: str) -> str | None:
        experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
        query = f"tags.{TRIAL_ID_TAG} = '{trial_id}' and tags.{MLFLOW_PARENT_RUN_ID} = '{self.parent_run_id}'"
        runs = self.client.search_runs([experiment_id], query, max_results=1)
        return runs[0].info.run_id if runs else None

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        if result.get("final"):
            self._log_final(run_id, result)
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))  # epoch metrics at step = epoch
        values = {k: v for k, v in _numbers(result).items() if k not in SETTINGS}
        metrics = [Metric(mlflow_key(k, self.objectives), v, _millis(result), step) for k, v in values.items()]
        settings = [Param(k, _text(result[k])) for k in SETTINGS if k in result]
        if settings and trial.trial_id not in self._settings_logged:
            self._settings_logged.add(trial.trial_id)
            self._log_settings(run_id, settings)
        self.client.log_batch(run_id, metrics=metrics)
        if result.get(VAL_MAPS):  # a few val slices' anomaly maps, one image per epoch in MLflow's image grid
            self.client.log_image(run_id, decode_png(result[VAL_MAPS]), key=IMAGE_KEY, step=step, synchronous=True)

    def _log_settings(self, run_id: str, settings: list[Param]) -> None:
        """Settings a trial reports (``workers``) as params, once; a resumed trial's differing value is kept out."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.log_batch(run_id, params=settings)
        except MlflowException as err:  # params are immutable: a restarted trial with other workers keeps the first
            print(f"warning: MLflow run {run_id}: settings not logged again: {err}", flush=True)

    def _log_final(self, run_id: str, result: dict) -> None:
        """The chosen checkpoint: its detector as a logged model, then its values logged against that model.

        They are logged at the chosen epoch's step under their own keys (``chosen/val_*``, ``test/*``,
        ``best_epoch``: study.tracking.keys), so no per-epoch curve gains a step past the last epoch; trials.csv,
        Tune and best.json keep DESIGN.md's names (val_*, test_*).
        """
        from study.tracking.models import log_trial_model  # local or S3 checkpoint, fetched with Ray's Checkpoint API

        model_id = log_trial_model(self.client, run_id, result.get("checkpoint_path"), self.storage)  # once per run
        if "best_epoch" in self.client.get_run(run_id).data.metrics:
            return  # the same final record again (a trial restarted after it, or resumed): its values are logged
        step = int(result.get("best_epoch") or 0)
        values = {k: v for k, v in _numbers(result).items() if k not in SETTINGS and k not in EPOCH_ONLY}
        keys = {k: mlflow_key(k, final=True) for k in values}
        metrics = [Metric(keys[k], v, _millis(result), step, model_id=model_id) for k, v in values.items()]
        self.client.log_batch(run_id, metrics=metrics)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        status = "completed" if (trial.last_result or {}).get("final") else "stopped_early"
        self._finish(trial, status, RunStatus.FINISHED)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._finish(trial, "failed", RunStatus.FAILED, reason=failure_reason(trial))

    def _finish(self, trial: Trial, status: str, run_status: int, reason: str = "") -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        tags = [RunTag("status", status)] + ([RunTag("failure_reason", reason[:5000])] if reason else [])
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, RunStatus.to_string(run_status))


def _description(trial_id: str, config: dict[str, Any]) -> str:
    """The run's description (its page's first text): the trial id and every setting."""
    settings = "\n".join(f"- `{k}` = `{_text(v)}`" for k, v in sorted(config.items()))
    return f"Trial `{trial_id}` ({trial_label(config)}).\n\nSettings:\n\n{settings}\n"


def _numbers(result: dict) -> dict[str, float]:
    """The finite numbers of a Tune result that the study logs as metrics."""
    return {
        key: float(value)
        for key, value in result.items()
        if is_reported_metric(key) and isinstance(value, numbers.Number) and math.isfinite(value)
    }


def _millis(result: dict) -> int:
    return int(result.get("timestamp", 0) * 1000)


def _text(value: Any) -> str:
    return str(value)[:6000]  # MLflow caps param values
