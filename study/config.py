"""Study configuration: one YAML validated into typed dataclasses before Ray starts.

Every error names the file, the key (as a dotted path) and what was expected, so a typo costs
seconds, not a failed cluster job.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainables.metric_names import OBJECTIVE_METRICS
from trainables.numbers import is_real
from trainables.objective import MODES, Objective

CONFIG_DIR = Path(__file__).parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
SAMPLERS = ("tpe", "random", "nsga2")
SCHEDULERS = ("none", "asha")


class ConfigError(ValueError):
    """A study config that cannot run; the message names the file and key."""


@dataclass
class SyntheticData:
    healthy: int = 24  # healthy (HCP-layout) subjects generated from the MNI152 template
    lesion: int = 12  # lesion (BraTS-layout) subjects with planted tumours
    seed: int = 0  # generator seed; the cohort is regenerated only when these numbers change
    # lesion appearances and their shares (bright, dark, iso, multifocal; see trainables/data/synthetic.py);
    # recorded in cohort.json; every pixel metric is also reported per appearance
    mix: dict[str, float] = field(default_factory=lambda: {"bright": 1.0, "dark": 1.0, "iso": 1.0, "multifocal": 1.0})


@dataclass
class DataConfig:
    healthy: str | None = None  # folder of healthy scans (HCP, BraTS or manifest); None = synthetic cohort
    lesion: str | None = None  # folder of lesion scans with segmentations; None = synthetic cohort
    root: str = "results/data"  # where the synthetic cohort and the slice cache live
    synthetic: SyntheticData = field(default_factory=SyntheticData)
    # slice side after resizing: 32 (the first paper), 64 or 128; several (e.g. [32, 64]) make the size a searched
    # setting: each trial draws one and trains and is scored on that size's slice cache (one cache per size)
    image_size: list[int] = field(default_factory=lambda: [32])
    modality: str = "t2"  # BraTS modality read for lesion subjects
    min_brain_fraction: float = 0.2  # keep slices whose brain covers at least this share of the crop
    split_seed: int = 0  # seed of the subject-level train/val/test split

    @property
    def reference_size(self) -> int:
        """The first listed image size: the threshold baseline's, and a point's that names none."""
        return self.image_size[0]


@dataclass
class TrainingConfig:
    epochs: int = 4  # epochs per trial (val metrics are computed after each)
    workers_per_trial: int = 2  # Ray Train DDP workers per trial
    cpus_per_worker: float = 0.5  # logical CPUs per worker; fractional so 2 workers fit on 2 cores
    gpus_per_worker: float = 0.0  # >0 trains on GPU with NCCL (whole GPUs: NCCL cannot share one between ranks)
    precision: str = "auto"  # training arithmetic: bf16 (autocast) or fp32; auto: bf16 on a GPU, fp32 on CPUs
    cpus_per_trial: float = 0.2  # logical CPUs of the Tune trial process that drives the trainer
    threads_per_worker: int = 1  # torch intra-op threads per worker (cores are shared by workers)
    sync_batchnorm: bool = False  # SyncBatchNorm under DDP (batch statistics of the global batch); GPUs only
    max_failures: int = 1  # Ray Train restarts of a failed worker group, from the last checkpoint
    trial_max_failures: int = 0  # Tune retries of a failed trial (e.g. its process died with its node when
    # trials_on_head is off), continuing from its last checkpoint; any error is retried alike, a divergence too
    trials_on_head: bool = True  # trial processes (and so their Train controllers) on the head node: a worker node
    # that leaves takes only Train workers, which Ray Train restarts elsewhere from the last checkpoint
    worker_start_timeout_s: float = 300.0  # seconds a trial's Train controller waits for its workers' CPUs (GPUs)
    # before giving the reservation up and asking again (Ray 2.60 retries without limit); Ray's own 60 s churns
    # on a busy 2-core machine where a trial may wait for another's workers to finish (README "Failure and recovery")


@dataclass
class MlflowConfig:
    tracking_uri: str = "sqlite:///results/mlflow.db"  # any MLflow URI; relative sqlite paths are from the cwd
    experiment: str | None = None  # experiment name; defaults to the study name
    registered_model: str | None = None  # Model Registry name of the winners; defaults to "<study>-detector"


@dataclass
class StudyConfig:
    name: str = "default"  # study name: results/<name>/ and the MLflow experiment
    families: list[str] = field(default_factory=lambda: ["vae"])  # detector families searched
    objectives: list[Objective] = field(default_factory=lambda: [Objective("val_pixel_auroc", "max")])
    sampler: str = "tpe"  # Optuna sampler: tpe, random or nsga2
    scheduler: str = "none"  # trial scheduler: none (FIFO) or asha (single objective only)
    num_samples: int = 6  # number of trials
    # configs tried first: a family's named preset ("caae/paper-lambda-1.0", its published setting), a preset with
    # overrides ({preset: dae/kascenas-2022, channels: 16}) or explicit values ({family: caae, latent_weight: 1.0})
    points_to_evaluate: list[dict[str, Any]] = field(default_factory=list)
    max_concurrent_trials: int = 1  # trials running at once
    seed: int = 0  # sampler and training seed
    results_dir: str = "results"  # where trials.csv, best.json and Ray's storage go
    optuna_storage: str | None = None  # Optuna RDB URL or journal file; None: results/<name>/optuna.db (SQLite)
    ray_storage: str | None = None  # shared storage for Ray's Tune/Train state on clusters (s3://..., NFS)
    ray_address: str | None = None  # None: attach to a running Ray if there is one, else start one
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    source: str = "<defaults>"  # the file this config came from (set by load_config, not a YAML key)

    @property
    def study_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    @property
    def objective_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def primary_objective(self) -> Objective:
        """The first objective: what ASHA stops on, each trial's checkpoint is chosen by, and names the winner."""
        return self.objectives[0]


def load_config(path: str | Path | None = None) -> StudyConfig:
    """Read and validate a study YAML; raise ConfigError naming the file and key on any problem."""
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"{path}: study config not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(raw).__name__}")
    raw.pop("source", None)
    if "points_to_evaluate" in raw:
        raw["points_to_evaluate"] = expand_presets(raw["points_to_evaluate"], str(path))
    config = _build(StudyConfig, raw, str(path), "")
    config.source = str(path)
    validate(config)
    return config


def expand_presets(points: Any, file: str) -> Any:
    """``points_to_evaluate`` with each named preset written out: ``caae/paper-lambda-1.0`` or
    ``{preset: caae/paper-lambda-1.0, <key>: <value>, ...}`` becomes ``{family: caae, <the preset's values>}``
    with the given keys over them (e.g. a CPU-sized net). Other entries are left for the type check."""
    from trainables.families import preset_names, preset_setting  # lazy: keeps `import study.config` light

    expanded = []
    for i, point in enumerate(points if isinstance(points, list) else [points]):
        if isinstance(point, str):
            point = {"preset": point}
        if not isinstance(point, dict) or "preset" not in point:
            expanded.append(point)
            continue
        where = f"{file}: key 'points_to_evaluate[{i}]"
        overrides = {key: value for key, value in point.items() if key != "preset"}
        try:
            family, values = preset_setting(point["preset"])
        except ValueError:
            known = ", ".join(preset_names())
            raise ConfigError(f"{where}.preset': unknown preset {point['preset']!r}; known: {known}") from None
        if overrides.get("family", family) != family:
            raise ConfigError(f"{where}.family': {overrides['family']!r} differs from preset {point['preset']!r}")
        expanded.append({"family": family, **values, **overrides})
    return expanded


def validate(config: StudyConfig) -> None:
    """Check cross-field rules; raise ConfigError naming the offending key."""
    from search_spaces import space_names  # lazy: keeps `import study.config` light
    from trainables.families import family_names, searchable_family_names

    where = config.source

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{where}: key '{key}': {message}")

    if not config.families:
        fail("families", "expected at least one family")
    for name in config.families:
        if name not in family_names():
            fail("families", f"unknown family '{name}'; known: {', '.join(family_names())}")
        if name not in searchable_family_names():
            fail("families", f"'{name}' has nothing to tune: every study reports it as its baseline row")
        if name not in space_names():
            fail("families", f"family '{name}' has no search space in search_spaces/")
    if not config.objectives:
        fail("objectives", "expected at least one objective")
    for i, objective in enumerate(config.objectives):
        if objective.metric not in OBJECTIVE_METRICS:
            expected = ", ".join(OBJECTIVE_METRICS)
            fail(f"objectives[{i}].metric", f"unknown metric '{objective.metric}'; expected one of {expected}")
        if objective.mode not in MODES:
            fail(f"objectives[{i}].mode", f"expected 'max' or 'min', got '{objective.mode}'")
    if config.sampler not in SAMPLERS:
        fail("sampler", f"unknown sampler '{config.sampler}'; expected one of {SAMPLERS}")
    if config.scheduler not in SCHEDULERS:
        fail("scheduler", f"unknown scheduler '{config.scheduler}'; expected one of {SCHEDULERS}")
    if config.scheduler == "asha" and len(config.objectives) > 1:
        fail("scheduler", "ASHA needs a single objective; use 'none' with several objectives")
    _check_positive(config, fail)
    for i, point in enumerate(config.points_to_evaluate):
        family = point.get("family", config.families[0] if len(config.families) == 1 else None)
        if family not in config.families:
            fail(f"points_to_evaluate[{i}].family", f"expected one of the study's families {config.families}")
    for key in ("healthy", "lesion"):
        folder = getattr(config.data, key)
        if folder is not None and not Path(folder).exists():
            fail(f"data.{key}", f"data folder '{folder}' does not exist")
    if (config.data.healthy is None) != (config.data.lesion is None):
        fail("data", "give both 'healthy' and 'lesion' folders, or neither (synthetic cohort)")
    if config.data.healthy is None:
        from trainables.data.lesions import check_mix  # lazy: keeps `import study.config` light

        try:
            check_mix(config.data.synthetic.mix)
        except ValueError as err:
            fail("data.synthetic.mix", str(err))
    _check_sizes(config, fail)
    _check_locations(config, fail)


IMAGE_SIZES = (32, 64, 128)  # powers of 2 the families' nets are built for (trainables/families/nets.py)


def _check_sizes(config: StudyConfig, fail: Any) -> None:
    """One or more distinct image sizes, each one the nets are built for; a point names only listed ones."""
    sizes = config.data.image_size
    if not sizes or len(set(sizes)) != len(sizes):
        fail("data.image_size", f"expected one size or a list of distinct sizes, got {sizes}")
    for size in sizes:
        if size not in IMAGE_SIZES:
            fail("data.image_size", f"expected 32, 64 or 128, got {size}")
    for i, point in enumerate(config.points_to_evaluate):
        if "image_size" in point and point["image_size"] not in sizes:
            fail(f"points_to_evaluate[{i}].image_size", f"expected one of data.image_size {sizes}")


def _check_locations(config: StudyConfig, fail: Any) -> None:
    """Ray storage a URI Ray can open; a registered model name that fits in models:/NAME@ALIAS."""
    if config.ray_storage is not None and config.ray_storage.startswith("s3://"):
        bucket = config.ray_storage[len("s3://") :].partition("/")[0]
        if not bucket:
            fail("ray_storage", f"expected s3://bucket/prefix, got {config.ray_storage!r}")
    name = config.mlflow.registered_model
    if name is not None and (not name.strip() or any(c in name for c in "/:@")):
        fail("mlflow.registered_model", f"expected a name without '/', ':' or '@', got {name!r}")


def _check_positive(config: StudyConfig, fail: Any) -> None:
    for key, value in (
        ("num_samples", config.num_samples),
        ("max_concurrent_trials", config.max_concurrent_trials),
        ("training.epochs", config.training.epochs),
        ("training.workers_per_trial", config.training.workers_per_trial),
        ("training.threads_per_worker", config.training.threads_per_worker),
    ):
        if value < 1:
            fail(key, f"expected an integer >= 1, got {value}")
    if config.training.cpus_per_worker <= 0:
        fail("training.cpus_per_worker", f"expected > 0, got {config.training.cpus_per_worker}")
    if config.training.worker_start_timeout_s <= 0:
        fail("training.worker_start_timeout_s", f"expected > 0, got {config.training.worker_start_timeout_s}")
    _check_gpu(config.training, fail)


PRECISIONS = ("auto", "bf16", "fp32")


def _check_gpu(training: TrainingConfig, fail: Any) -> None:
    gpus = training.gpus_per_worker
    if gpus < 0:
        fail("training.gpus_per_worker", f"expected >= 0, got {gpus}")
    # two DDP ranks on one GPU make NCCL fail at the first collective ("Duplicate GPU detected")
    if 0 < gpus < 1 and training.workers_per_trial > 1:
        fail("training.gpus_per_worker", f"a fraction of a GPU ({gpus}) with {training.workers_per_trial} DDP "
             "workers: NCCL needs one whole GPU per worker; use 1 (or more), or workers_per_trial: 1")  # fmt: skip
    if training.precision not in PRECISIONS:
        fail("training.precision", f"expected one of {PRECISIONS}, got {training.precision!r}")
    if training.sync_batchnorm and training.gpus_per_worker <= 0:
        fail("training.sync_batchnorm", "SyncBatchNorm runs on GPUs only; set training.gpus_per_worker > 0")


def _build(cls: type, raw: dict, file: str, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{file}: unknown key '{prefix}{unknown[0]}'; expected one of: {', '.join(names)}")
    values = {name: _coerce(hints[name], raw[name], file, f"{prefix}{name}") for name in names if name in raw}
    return cls(**values)


def _coerce(hint: Any, value: Any, file: str, key: str) -> Any:
    """Check `value` against the type hint and convert it (ints for floats, nested dataclasses)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(option for option in options if option is not type(None))
        origin = typing.get_origin(hint)
    if hint is Objective and isinstance(value, str):
        return Objective(metric=value)  # a bare metric name means "maximise it"
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: key '{key}': expected a mapping, got {value!r}")
        return _build(hint, value, file, f"{key}.")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: key '{key}': expected a mapping, got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        items = value if isinstance(value, list) else [value]  # a single objective may be given bare
        return [_coerce(item, v, file, f"{key}[{i}]") for i, v in enumerate(items)]
    return _scalar(hint, value, file, key)


def _scalar(hint: type, value: Any, file: str, key: str) -> Any:
    if hint is float and is_real(value):
        return float(value)
    if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{file}: key '{key}': expected {hint.__name__}, got {value!r}")
