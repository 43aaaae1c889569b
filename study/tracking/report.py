"""What the study's parent run shows at the end: a summary naming the winner, fronts, best trials, Optuna's plots."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from study.config import StudyConfig
from study.results import (
    APPEARANCE_CHOICE,
    APPEARANCE_SHOWN,
    TRIALS_CSV,
    appearance_champions,
    best_by_appearance,
    best_by_family,
    best_trial,
    format_cell,
    write_best_json,
    write_trials_csv,
)
from study.search import make_storage
from study.tracking.names import row_run_name
from study.tracking.pareto import fronts, write_pareto
from study.tracking.plots import optuna_plots
from study.tracking.runs import tracking_uri
from trainables.numbers import is_finite

SUMMARY = "summary.md"  # the parent run's summary, also shown as the run's description
TEST_SHOWN = ("test_pixel_auroc", "test_slice_auroc")  # reported beside each chosen trial, never used to choose


def write_study_report(config: StudyConfig, rows: list[dict[str, Any]], study_dir: Path) -> list[Path]:
    """Write trials.csv, best.json, the Pareto front (or best-so-far curve) and Optuna's plots; return the files."""
    write_trials_csv(rows, study_dir / TRIALS_CSV)
    write_best_json(rows, config.objectives, study_dir / "best.json")
    files = [study_dir / TRIALS_CSV, study_dir / "best.json", *write_pareto(rows, config.objectives, study_dir)]
    study = optuna.load_study(study_name=config.name, storage=make_storage(config))
    return files + optuna_plots(study, config.objectives, study_dir)


def log_study_report(
    client: MlflowClient, run_id: str, config: StudyConfig, rows: list[dict], files: list[Path]
) -> None:
    """Make the parent run the study's summary: report files, best values and the threshold row as metrics,
    best trials as tags, and a markdown summary (summary.md, and the run's description on its page)."""
    for path in files:
        client.log_artifact(run_id, str(path))
    summary = study_summary(config, rows, tracking_uri(config))
    client.log_text(run_id, summary, SUMMARY)
    tags = [RunTag(MLFLOW_RUN_NOTE, summary)]
    winner = best_trial(rows, config.primary_objective)
    if winner is not None:
        tags += [RunTag("winner", winner["trial_id"]), RunTag("winner_run_id", winner.get("mlflow_run_id") or "")]
    first = config.primary_objective
    for family, row in best_by_family(rows, first).items():
        tags.append(RunTag(f"best_trial.{family}", row["trial_id"]))
    client.log_batch(run_id, metrics=summary_metrics(config, rows), tags=tags)


def summary_metrics(config: StudyConfig, rows: list[dict]) -> list[Metric]:
    """`best/<objective>` (the best value, chosen on val, as in best.json), the first objective's best per family
    (`best_<family>/<metric>`, with its test values), each lesion appearance's champion (chosen on its val pixel
    AUROC: `best_<appearance>/val_pixel_auroc` and `/test_pixel_auroc`, that appearance's values) and the
    threshold baseline (`threshold/<metric>`).

    The `/` makes MLflow's chart view put these parent-run figures in sections of their own, apart from the
    trials' metrics, whose plain names (val_pixel_auroc, train_seconds, ...) it plots against each other.
    """
    values: dict[str, float] = {}
    for objective in config.objectives:
        row = best_trial(rows, objective)
        if row is not None:
            values[f"best/{objective.metric}"] = row[objective.metric]
    first = config.primary_objective
    for family, row in best_by_family(rows, first).items():
        values.update({f"best_{family}/{k}": row[k] for k in (first.metric, *TEST_SHOWN) if is_finite(row.get(k))})
    for name, row in best_by_appearance(rows).items():  # best_<appearance>/: chosen on its val, its test beside
        chosen = {"val_pixel_auroc": APPEARANCE_CHOICE.format(name), "test_pixel_auroc": APPEARANCE_SHOWN.format(name)}
        values.update({f"best_{name}/{k}": row[key] for k, key in chosen.items() if is_finite(row.get(key))})
    for row in (r for r in rows if r["status"] == "baseline"):
        keys = (*config.objective_names, *TEST_SHOWN)
        values.update({f"{row['family']}/{k}": row[k] for k in keys if is_finite(row.get(k))})
    return [Metric(key, float(value), 0, 0) for key, value in values.items()]


def study_summary(config: StudyConfig, rows: list[dict], uri: str) -> str:
    """A short markdown page: what ran, the winner and how to score with it, best per objective, the fronts."""
    trials = [r for r in rows if r["status"] != "baseline"]
    statuses = ", ".join(f"{n} {status}" for status, n in sorted(Counter(r["status"] for r in trials).items()))
    objectives = ", ".join(f"`{o.metric}` ({o.mode})" for o in config.objectives)
    lines = [
        f"# Study `{config.name}`",
        "",
        f"{len(trials)} of {config.num_samples} trials ({statuses or 'none finished'}) of {', '.join(config.families)}."
        f" Objectives: {objectives}; trials are chosen on val metrics (and costs), never on test data.",
        "",
    ]
    winner = best_trial(rows, config.primary_objective)
    if winner is None:
        lines += ["No trial completed, so there is no winner.", ""]
    else:
        lines += _winner(winner, config.primary_objective.metric, uri) + _against_baseline(winner, rows, config)
    columns = ["trial_id", "name", *config.objective_names, *TEST_SHOWN]
    best = [{"objective": o.metric, **r} for o in config.objectives if (r := best_trial(rows, o)) is not None]
    lines += ["## Best per objective (chosen on val)", "", *_table(best, ["objective", *columns]), ""]
    lines += _appearance_section(rows, winner)
    title = "Pareto fronts" if len(config.objectives) > 1 else "Best trial"
    baseline = [{"front": "baseline", **r} for r in rows if r["status"] == "baseline"]
    front_rows = fronts(rows, config.objectives) + baseline
    lines += [f"## {title}: overall, per family, and the threshold baseline", ""]
    lines += _table(front_rows, ["front", *columns])
    return "\n".join(lines) + "\n"


def _winner(row: dict, metric: str, uri: str) -> list[str]:
    run_id = row.get("mlflow_run_id") or "<run id>"
    shown = ", ".join(f"{k} {format_cell(row.get(k))}" for k in (metric, *TEST_SHOWN))
    name = row_run_name(row)
    return [
        f"**Winner** by `{metric}`: trial `{row['trial_id']}`, **{name}**, MLflow run `{run_id}` ({shown}).",
        "",
        "Score new scans with it:",
        "",
        "```bash",
        f"python -m study.score --model {run_id} --tracking-uri {uri} --input scan.nii.gz --output map.nii.gz",
        "```",
        "",
    ]


def _against_baseline(winner: dict, rows: list[dict], config: StudyConfig) -> list[str]:
    """A warning line where the untrained baseline beats the winner on the first objective (learning bought nothing)."""
    objective = config.primary_objective
    baselines = [r for r in rows if r["status"] == "baseline" and is_finite(r.get(objective.metric))]
    better = [r for r in baselines if objective.better(r[objective.metric], winner[objective.metric])]
    return [
        f"Note: the untrained `{r['family']}` baseline scores better on `{objective.metric}`"
        f" ({format_cell(r[objective.metric])}) than the winner."
        for r in better
    ] + ([""] if better else [])


def _appearance_section(rows: list[dict], winner: dict | None) -> list[str]:
    """Per lesion appearance, the trial best on its val pixel AUROC with its test value, the overall winner's and
    the threshold row's test values beside it, and one line where the champions are not the winner; nothing for
    a cohort without appearances."""
    champions = appearance_champions(rows, winner)
    if not champions:
        return []
    baselines = sorted({family for entry in champions.values() for family in entry["baseline"]})
    head = ["appearance", "champion", "val pix AUROC", "test pix AUROC", "winner's test pix AUROC"]
    lines = ["## Best per lesion appearance (chosen on val_pixel_auroc_<appearance>, never on test)", ""]
    lines += ["| " + " | ".join([*head, *(f"{b} test pix AUROC" for b in baselines)]) + " |"]
    lines.append("|" + "---|" * (len(head) + len(baselines)))
    for name, entry in champions.items():
        row, shown = entry["best"], APPEARANCE_SHOWN.format(name)
        cells = [name, row_run_name(row), row.get(APPEARANCE_CHOICE.format(name)), row.get(shown)]
        cells += [winner.get(shown) if winner else None, *(entry["baseline"].get(b) for b in baselines)]
        lines.append("| " + " | ".join(c if isinstance(c, str) else format_cell(c) for c in cells) + " |")
    others = [name for name, entry in champions.items() if not entry["is_winner"]]
    if others and winner is not None:
        note = f"The winner **{row_run_name(winner)}** is not the champion on {', '.join(others)}"
        lines += ["", note + ": the families fail on different lesions."]
    return lines + [""]


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    """A markdown table of the rows (`name` is the trial's run name)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [row_run_name(row) if c == "name" else format_cell(row.get(c)) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
