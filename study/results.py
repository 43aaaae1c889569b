"""results/<study>/: trials.csv (one row per trial), best.json, and the closing table."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from study.config import Objective
from study.tracking import failure_reason
from trainables.metric_names import TEST_METRICS, VAL_METRICS


class TrialRecorder(Callback):
    """Tune callback keeping one row per finished trial: id, family, status, params, final metrics, duration."""

    def __init__(self, mlflow_runs: dict[str, str] | None = None) -> None:
        self.rows: list[dict[str, Any]] = []
        self.mlflow_runs = mlflow_runs  # trial_id -> MLflow run id, filled by the MLflow callback
        self._started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._record(trial, "completed", "")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._record(trial, "failed", failure_reason(trial))

    def _record(self, trial: Trial, status: str, reason: str) -> None:
        last = trial.last_result or {}
        row: dict[str, Any] = {"trial_id": trial.trial_id, "family": trial.config.get("family"), "status": status}
        row.update({f"param_{k}": v for k, v in sorted(trial.config.items()) if k != "family"})
        row.update({k: last.get(k) for k in (*VAL_METRICS, *TEST_METRICS)})
        row["best_epoch"] = last.get("best_epoch")
        row["duration_s"] = round(time.monotonic() - self._started.get(trial.trial_id, time.monotonic()), 1)
        row["failure_reason"] = reason
        self.rows.append(row)


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write trials.csv with the union of the rows' columns (params differ between families)."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def best_trial(rows: list[dict[str, Any]], objective: Objective) -> dict[str, Any] | None:
    """The completed trial with the best final value of the objective (a val_* metric), or None."""
    scored = [r for r in rows if r["status"] == "completed" and _finite(r.get(objective.metric))]
    if not scored:
        return None
    pick = max if objective.mode == "max" else min
    return pick(scored, key=lambda r: r[objective.metric])


def write_best_json(rows: list[dict[str, Any]], objectives: list[Objective], path: Path) -> dict[str, Any]:
    """best.json: for each objective, the best trial chosen on val, with its test metrics alongside."""
    best = {o.metric: best_trial(rows, o) for o in objectives}
    path.write_text(json.dumps(best, indent=2, default=str))
    return best


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """A plain-text table of the rows, for the end of a study."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
