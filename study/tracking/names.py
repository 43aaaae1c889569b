"""Short run names that tell a study's trials apart at a glance (``03 caae λ=1.00 lr=0.0003``), shared by the
MLflow runs, trials.csv's ``run_name`` column, the parent run's summary and the Pareto pictures."""

from __future__ import annotations

import re
from typing import Any

RUN_NAME_LIMIT = 250  # MLflow's limit on a run name
NUMBER = re.compile(r"-?\d*\.\d+(e-?\d+)?|-?\d+e-?\d+")  # a float written as text (a trials.csv cell)
TAG_COUNTER = re.compile(r"(\d+)_")  # Tune's experiment tag starts with its trial counter: "3_family=caae,..."
# The searched settings a run name shows per family (setting, symbol): what tells two trials of it apart.
NAME_PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "caae": (("latent_weight", "λ"), ("lr", "lr")),  # the first paper's lambda
    "lran": (("w_a", "w_a"), ("w_r", "w_r")),  # the second paper's adversarial and regularisation weights
    "dae": (("noise_std", "σ"), ("noise_res", "res")),  # the coarse noise
    "vae": (("kl_weight", "β"), ("lr", "lr")),
    "aae": (("adv_weight", "adv"), ("lr", "lr")),
    "ae": (("latent_dim", "z"), ("lr", "lr")),
}


def trial_number(trial: Any) -> int | None:
    """The trial's number in its study (Tune's search counter, from 1), or None where Tune gave none."""
    found = TAG_COUNTER.match(str(getattr(trial, "experiment_tag", "") or ""))
    return int(found.group(1)) if found else None


def run_name(number: int | None, config: dict[str, Any]) -> str:
    """``03 caae λ=1.00 lr=0.0003``: the trial's number, its family, its image size where the study searches it
    (``03 dae 64px σ=1.40 res=16``) and the one or two searched settings that matter most (NAME_PARAMS; the first
    two settings of a family not listed). Every setting is in the run's params and description."""
    family = config.get("family", "trial")
    shown = NAME_PARAMS.get(family) or tuple((k, k) for k in sorted(config) if k not in ("family", "image_size"))[:2]
    settings = " ".join(f"{symbol}={_name_value(config[k])}" for k, symbol in shown if config.get(k) is not None)
    prefix = f"{number:02d} " if number is not None else ""
    size = f" {int(float(config['image_size']))}px" if config.get("image_size") is not None else ""  # searched
    return f"{prefix}{family}{size} {settings}".strip()[:RUN_NAME_LIMIT]


def row_run_name(row: dict[str, Any]) -> str:
    """The run name of a trials.csv row: its ``run_name`` (the baseline's is its trial id), else one rebuilt
    from its family and ``param_*`` columns (a study from before run names)."""
    if row.get("status") == "baseline":
        return str(row["trial_id"])
    if row.get("run_name"):
        return str(row["run_name"])
    params = {k[len("param_") :]: v for k, v in row.items() if k.startswith("param_")}
    return run_name(None, {"family": row.get("family"), **params})


def _name_value(value: Any) -> str:
    if isinstance(value, str) and NUMBER.fullmatch(value):  # a setting read back from trials.csv
        value = float(value)
    if isinstance(value, float):
        return f"{value:.2f}" if value == 0 or 0.1 <= abs(value) < 1000 else f"{value:.3g}"
    return str(value)
