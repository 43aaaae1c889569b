"""Pareto fronts of a study's completed trials, and their pictures.

Only `completed` trials count: a trial stopped early by the scheduler is not a fully trained point,
and a failed one has no metrics. With two or more objectives the pictures are pareto.png and an interactive
pareto.html of the first two; with a single objective the front is the best trial, and the picture is the
best-so-far curve instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from study.results import best_trial, write_trials_csv
from study.tracking.names import row_run_name
from study.tracking.pareto_html import write_front_html
from study.tracking.plots import best_so_far_figure, new_figure, save_figure
from trainables.numbers import is_finite
from trainables.objective import Objective


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
    """Write pareto.csv and pareto.png + pareto.html (or best_so_far.png for one objective); return the files."""
    csv_path = study_dir / "pareto.csv"
    write_trials_csv(fronts(rows, objectives), csv_path)
    if len(objectives) == 1:
        return [csv_path, plot_best_so_far(rows, objectives[0], study_dir / "best_so_far.png")]
    view = front_view(rows, objectives)
    return [csv_path, plot_front(view, study_dir / "pareto.png"), write_front_html(view, study_dir / "pareto.html")]


WINNER_MARKS = (("*", "crimson"), ("s", "darkviolet"))  # the first and the second objective's winner


@dataclass
class FrontView:
    """What a Pareto picture shows of the first two objectives: points labelled by run name, the front's step line,
    each objective's winner (chosen on val) and the threshold baseline as a reference."""

    x: Objective
    y: Objective
    points: list[dict[str, Any]]  # {name, family, x, y, on_front, stopped}
    step: list[tuple[float, float]]  # the front's staircase, from the worst x edge to the worst y edge
    winners: dict[str, dict[str, Any]]  # objective metric -> its winner's point
    baseline: list[dict[str, Any]] = field(default_factory=list)  # {name, x, y} of the untrained rows


def front_view(rows: list[dict[str, Any]], objectives: list[Objective]) -> FrontView:
    """The points, front step line, winners and baseline of the first two objectives."""
    x, y = objectives[0], objectives[1]
    front_ids = {r["trial_id"] for r in pareto_front(rows, objectives)}

    def point(row: dict[str, Any]) -> dict[str, Any]:
        on_front, stopped = row["trial_id"] in front_ids, row["status"] == "stopped_early"
        return {"name": row_run_name(row), "family": row.get("family"), "x": float(row[x.metric]),
                "y": float(row[y.metric]), "on_front": on_front, "stopped": stopped}  # fmt: skip

    shown = [r for r in rows if r["status"] in ("completed", "stopped_early")]
    points = [point(r) for r in shown if is_finite(r.get(x.metric)) and is_finite(r.get(y.metric))]
    baseline = [point(r) for r in rows if r["status"] == "baseline"
                and is_finite(r.get(x.metric)) and is_finite(r.get(y.metric))]  # fmt: skip
    winners = {o.metric: point(w) for o in (x, y) if (w := best_trial(rows, o)) is not None}
    step = _staircase([p for p in points if p["on_front"]], points + baseline, x, y)
    return FrontView(x, y, points, step, winners, baseline)


def _staircase(
    front: list[dict[str, Any]], shown: list[dict[str, Any]], x: Objective, y: Objective
) -> list[tuple[float, float]]:
    """The boundary of what the front dominates, as a step line through its points (one point gives an L):
    from the worst x of the picture at the best trial's y, through each front point, down to the worst y."""
    if not front:
        return []
    ox, oy = (lambda v: x.oriented(v)), (lambda v: y.oriented(v))  # larger is better on both
    ordered = sorted(front, key=lambda p: (ox(p["x"]), -oy(p["y"])))
    worst_x = min(shown, key=lambda p: ox(p["x"]))["x"]
    worst_y = min(shown, key=lambda p: oy(p["y"]))["y"]
    span_x = max(abs(p["x"] - worst_x) for p in shown) or 1.0
    span_y = max(abs(p["y"] - worst_y) for p in shown) or 1.0
    edge_x = worst_x - (0.05 * span_x if x.mode == "max" else -0.05 * span_x)  # a little past the worst point
    edge_y = worst_y - (0.05 * span_y if y.mode == "max" else -0.05 * span_y)
    line = [(edge_x, ordered[0]["y"])]
    for before, after in zip(ordered, ordered[1:] + [None], strict=True):
        line.append((before["x"], before["y"]))
        line.append((before["x"], after["y"] if after else edge_y))
    return line


def plot_front(view: FrontView, path: Path) -> Path:
    """pareto.png: trials by family, labelled by run name; the front's step line; each objective's winner
    starred; the threshold baseline as dotted reference lines; the legend outside the axes."""
    fig = new_figure((10, 5))  # the legend's column beside the axes
    ax = fig.subplots()
    for family in sorted({p["family"] for p in view.points if not p["stopped"]}):
        mine = [p for p in view.points if p["family"] == family and not p["stopped"]]
        ax.scatter([p["x"] for p in mine], [p["y"] for p in mine], label=family, alpha=0.8, zorder=3)
    stopped = [p for p in view.points if p["stopped"]]
    if stopped:
        xs, ys = [p["x"] for p in stopped], [p["y"] for p in stopped]
        ax.scatter(xs, ys, marker="x", color="grey", label="stopped early (not on the front)", zorder=3)
    if view.step:
        ax.plot(*zip(*view.step, strict=True), "k-", lw=1.2, label="Pareto front", zorder=2)
    for (metric, p), (marker, colour) in zip(view.winners.items(), WINNER_MARKS, strict=False):
        ax.scatter([p["x"]], [p["y"]], marker=marker, s=260, facecolors="none", edgecolors=colour, linewidths=1.5,
                   zorder=4, label=f"best {metric}: {p['name']}")  # fmt: skip
    for b in view.baseline:
        ax.axvline(b["x"], color="grey", ls=":", lw=1)
        ax.axhline(b["y"], color="grey", ls=":", lw=1)
        ax.scatter([b["x"]], [b["y"]], marker="D", color="grey", label=f"{b['name']} (untrained)", zorder=3)
    for p in view.points + view.baseline:
        ax.annotate(p["name"], (p["x"], p["y"]), xytext=(4, 4), textcoords="offset points", fontsize=7)
    low, high = ax.get_xlim()
    ax.set_xlim(low, high + 0.25 * (high - low))  # room for the labels of the rightmost points
    ax.set_xlabel(f"{view.x.metric} ({view.x.mode})")
    ax.set_ylabel(f"{view.y.metric} ({view.y.mode})")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)  # never on a point
    completed = sum(not p["stopped"] for p in view.points)
    ax.set_title(f"Pareto front of {completed} completed trials", fontsize="medium")
    return save_figure(fig, path)


def plot_best_so_far(rows: list[dict[str, Any]], objective: Objective, path: Path) -> Path:
    """The objective of each completed trial in finishing order, and the best so far."""
    pool = candidates(rows, [objective])
    values = [r[objective.metric] for r in pool]
    xs = list(range(1, len(values) + 1))
    return save_figure(best_so_far_figure(xs, values, objective, (6, 4), "completed trial", "trial"), path)
