"""Pareto fronts of a study's completed trials, and their pictures.

Only `completed` trials count: a trial stopped early by the scheduler is not a fully trained point,
and a failed one has no metrics. With a single objective the front is the best trial, and the picture
is the best-so-far curve instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on cluster heads or CI
import matplotlib.pyplot as plt  # noqa: E402

from study.results import write_trials_csv  # noqa: E402
from trainables.numbers import is_finite  # noqa: E402
from trainables.objective import Objective  # noqa: E402


def _oriented(row: dict[str, Any], objectives: list[Objective]) -> tuple[float, ...]:
    """The row's objective values, negated where minimised, so larger is better on every axis."""
    return tuple(o.oriented(row[o.metric]) for o in objectives)


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """a is at least as good as b everywhere and better somewhere (larger is better)."""
    return all(x >= y for x, y in zip(a, b, strict=True)) and any(x > y for x, y in zip(a, b, strict=True))


def candidates(rows: list[dict[str, Any]], objectives: list[Objective]) -> list[dict[str, Any]]:
    """Completed trials with a finite value for every objective."""
    return [r for r in rows if r["status"] == "completed" and all(is_finite(r.get(o.metric)) for o in objectives)]


def pareto_front(rows: list[dict[str, Any]], objectives: list[Objective]) -> list[dict[str, Any]]:
    """The non-dominated completed trials (ties are all kept), in the order given."""
    pool = candidates(rows, objectives)
    points = [_oriented(r, objectives) for r in pool]
    return [r for r, p in zip(pool, points, strict=True) if not any(dominates(q, p) for q in points)]


def fronts(rows: list[dict[str, Any]], objectives: list[Objective]) -> list[dict[str, Any]]:
    """Rows of pareto.csv: the overall front (front=overall) and each family's front (front=<family>)."""
    out = [{"front": "overall", **r} for r in pareto_front(rows, objectives)]
    for family in sorted({r["family"] for r in rows if r.get("family")}):
        family_rows = [r for r in rows if r["family"] == family]
        out += [{"front": family, **r} for r in pareto_front(family_rows, objectives)]
    return out


def write_pareto(rows: list[dict[str, Any]], objectives: list[Objective], study_dir: Path) -> list[Path]:
    """Write pareto.csv and pareto.png (or best_so_far.png for one objective); return the files written."""
    csv_path = study_dir / "pareto.csv"
    write_trials_csv(fronts(rows, objectives), csv_path)
    if len(objectives) == 1:
        return [csv_path, plot_best_so_far(rows, objectives[0], study_dir / "best_so_far.png")]
    return [csv_path, plot_front(rows, objectives, study_dir / "pareto.png")]


def plot_front(rows: list[dict[str, Any]], objectives: list[Objective], path: Path) -> Path:
    """Scatter of the first two objectives, colour by family, the overall front joined by a line."""
    x_obj, y_obj = objectives[0], objectives[1]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    pool = candidates(rows, objectives)
    for family in sorted({r["family"] for r in pool}):
        points = [(r[x_obj.metric], r[y_obj.metric]) for r in pool if r["family"] == family]
        ax.scatter(*zip(*points, strict=True), label=family, alpha=0.7)
    stopped = [r for r in rows if r["status"] == "stopped_early" and is_finite(r.get(x_obj.metric))]
    if stopped and all(is_finite(r.get(y_obj.metric)) for r in stopped):
        xs, ys = [r[x_obj.metric] for r in stopped], [r[y_obj.metric] for r in stopped]
        ax.scatter(xs, ys, marker="x", color="grey", label="stopped early (not on the front)")
    front = sorted(pareto_front(rows, objectives), key=lambda r: r[x_obj.metric])
    if front:
        ax.plot([r[x_obj.metric] for r in front], [r[y_obj.metric] for r in front], "k--", label="Pareto front")
    ax.set_xlabel(f"{x_obj.metric} ({x_obj.mode})")
    ax.set_ylabel(f"{y_obj.metric} ({y_obj.mode})")
    ax.legend(fontsize="small")
    ax.set_title(f"Pareto front of {len(pool)} completed trials")
    return _save(fig, path)


def plot_best_so_far(rows: list[dict[str, Any]], objective: Objective, path: Path) -> Path:
    """The objective of each completed trial in finishing order, and the best so far."""
    pool = candidates(rows, [objective])
    values = [r[objective.metric] for r in pool]
    best = [objective.best(values[: i + 1], float) for i in range(len(values))]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(values) + 1), values, "o", alpha=0.6, label="trial")
    ax.plot(range(1, len(best) + 1), best, "-", label="best so far")
    ax.set_xlabel("completed trial")
    ax.set_ylabel(objective.metric)
    ax.legend()
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
