"""results/<study>/: trials.jsonl (the journal), trials.csv (one row per trial), best.json, the closing table.

A row is written the moment its trial ends (appended to trials.jsonl, then trials.csv rewritten), so a
killed driver loses no finished trial and `--resume` starts from what is on disk.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from study.tracking.names import run_name, trial_number
from trainables.metric_names import APPEARANCE_NAME, TEST_METRICS, VAL_METRICS, is_appearance_metric
from trainables.objective import Objective

JOURNAL = "trials.jsonl"
TRIALS_CSV = "trials.csv"
# Trial statuses: completed (all epochs, test scored), stopped_early (by the scheduler: not a fully
# trained point), failed (error or divergence, with the reason), baseline (no training, e.g. threshold).


def failure_reason(trial: Trial) -> str:
    """The last line of the trial's error (the exception and its message), or a placeholder."""
    path = trial.error_file
    if not path or not Path(path).is_file():
        return "unknown error (no error file)"
    lines = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error (empty error file)"


def trial_row(trial_id: str, config: dict[str, Any], last: dict[str, Any], status: str, reason: str = "") -> dict:
    """One trials.csv row from a trial's config and its last reported result."""
    row: dict[str, Any] = {"trial_id": trial_id, "family": config.get("family"), "status": status}
    row.update({f"param_{k}": v for k, v in sorted(config.items()) if k != "family"})
    row.update({k: last.get(k) for k in (*VAL_METRICS, *TEST_METRICS)})
    row.update({k: v for k, v in sorted(last.items()) if is_appearance_metric(k)})  # where the cohort has them
    row["train_seconds"] = last.get("train_seconds")
    row["best_epoch"] = last.get("best_epoch")
    row["failure_reason"] = reason
    return row


class TrialRecorder(Callback):
    """Tune callback writing each trial's row to the study folder as soon as the trial ends."""

    def __init__(self, study_dir: Path, run_ids: dict[str, str], reference_size: int) -> None:
        self.study_dir = study_dir
        self.run_ids = run_ids  # trial_id -> MLflow run id, shared with the MLflow callback
        self.reference_size = reference_size  # the image size of trials that draw none (param_image_size)
        self.rows = load_rows(study_dir)
        self._started: dict[str, float] = {}

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._started[trial.trial_id] = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        last = trial.last_result or {}
        self.record(trial, "completed" if last.get("final") else "stopped_early")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.record(trial, "failed", failure_reason(trial))

    def record(self, trial: Trial, status: str, reason: str = "") -> None:
        config = {"image_size": self.reference_size, **trial.config}  # every row says its size
        row = trial_row(trial.trial_id, config, trial.last_result or {}, status, reason)
        started = self._started.get(trial.trial_id)
        row["duration_s"] = round(time.monotonic() - started, 1) if started else None
        row["mlflow_run_id"] = self.run_ids.get(trial.trial_id, "")
        row["run_name"] = run_name(trial_number(trial), trial.config)  # as its MLflow run is named
        self.add(row)

    def add(self, row: dict[str, Any]) -> None:
        """Journal a row and rewrite trials.csv."""
        self.rows = append_row(self.study_dir, row)

    @property
    def trial_rows(self) -> list[dict[str, Any]]:
        """Rows of Tune trials (not the baseline)."""
        return [r for r in self.rows if r["status"] != "baseline"]


def append_row(study_dir: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Append a row to the journal (durably), rewrite trials.csv, and return every row so far."""
    with (study_dir / JOURNAL).open("a") as handle:
        handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    rows = load_rows(study_dir)
    write_trials_csv(rows, study_dir / TRIALS_CSV)
    return rows


def load_rows(study_dir: Path) -> list[dict[str, Any]]:
    """Rows journalled so far (the last row of a trial wins); [] for a new study."""
    path = study_dir / JOURNAL
    if not path.is_file():
        return []
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["trial_id"]] = row
    return list(rows.values())


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


# Identifiers stay text: a trial id of eight hex digits can be all digits ("00412376" is not a number).
ID_COLUMNS = ("trial_id", "mlflow_run_id", "run_name")
# Each lesion appearance's champion is chosen on its val pixel AUROC (never on test); its test value is shown.
APPEARANCE_CHOICE = "val_pixel_auroc_{}"
APPEARANCE_SHOWN = "test_pixel_auroc_{}"


def read_trials_csv(path: Path) -> list[dict[str, Any]]:
    """trials.csv back as rows, numbers parsed except in identifier columns (empty cells become None)."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return [{k: (v or None) if k in ID_COLUMNS else _parse(v) for k, v in row.items()} for row in rows]


def best_trial(rows: list[dict[str, Any]], objective: Objective) -> dict[str, Any] | None:
    """The completed trial with the best final value of the objective (chosen on val), or None."""
    return objective.best((r for r in rows if r["status"] == "completed"), lambda r: r.get(objective.metric))


def best_by_family(rows: list[dict[str, Any]], objective: Objective) -> dict[str, dict[str, Any]]:
    """For each family, its best completed trial on the objective."""
    families = sorted({r["family"] for r in rows if r.get("family")})
    best = {f: best_trial([r for r in rows if r["family"] == f], objective) for f in families}
    return {f: row for f, row in best.items() if row is not None}


def appearances(rows: list[dict[str, Any]]) -> list[str]:
    """The lesion appearances the rows were scored on (their ``val_pixel_auroc_<appearance>`` keys), sorted;
    [] for a cohort that records none."""
    prefix = APPEARANCE_CHOICE.format("")
    names = {key[len(prefix) :] for row in rows for key in row if key.startswith(prefix)}
    return sorted(name for name in names if APPEARANCE_NAME.match(name) and name != "all")  # not pixel_auroc_all


def best_by_appearance(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For each appearance, the completed trial best on its val pixel AUROC (NaN skipped; the baseline row is
    never a champion); appearances no completed trial was scored on are left out."""
    best = {a: best_trial(rows, Objective(APPEARANCE_CHOICE.format(a))) for a in appearances(rows)}
    return {a: row for a, row in best.items() if row is not None}


def appearance_champions(rows: list[dict[str, Any]], winner: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """best.json's ``by_appearance``: per appearance, the champion (its whole row, test values included), whether
    it is the overall ``winner``, and each baseline row's test value on that appearance for reference."""
    baselines = [r for r in rows if r["status"] == "baseline"]
    return {
        name: {
            "chosen_on": APPEARANCE_CHOICE.format(name),
            "best": row,
            "is_winner": winner is not None and row["trial_id"] == winner["trial_id"],
            "baseline": {str(b["family"]): b.get(APPEARANCE_SHOWN.format(name)) for b in baselines},
        }
        for name, row in best_by_appearance(rows).items()
    }


def write_best_json(rows: list[dict[str, Any]], objectives: list[Objective], path: Path) -> dict[str, Any]:
    """best.json: per objective, the best trial overall and per family; where the cohort records lesion
    appearances, ``by_appearance`` too (see appearance_champions). Chosen on val; test alongside."""
    best = {o.metric: {"overall": best_trial(rows, o), "by_family": best_by_family(rows, o)} for o in objectives}
    champions = appearance_champions(rows, best_trial(rows, objectives[0])) if objectives else {}
    if champions:  # a cohort without appearances keeps best.json's keys as they were
        best["by_appearance"] = champions
    path.write_text(json.dumps(best, indent=2, default=str))
    return best


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """A plain-text table of the rows, for the end of a study."""
    cells = [[format_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _parse(text: str) -> Any:
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def format_cell(value: Any) -> str:
    """A value as a table shows it: 4 significant digits, '-' for none."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
