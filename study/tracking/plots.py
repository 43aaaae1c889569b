"""The study's pictures on matplotlib's Agg canvas (``new_figure``, ``save_figure``: pareto.py's too), and Optuna's
two per objective: the optimisation history and the parameter importances.

Every picture of the project is a ``Figure`` on the Agg canvas (trainables.figures too), never pyplot: no
process-wide backend or figure registry, on a head without a display or in a Ray worker. Optuna's own
``optuna.visualization.matplotlib`` plots draw through pyplot (and set its ggplot style for the whole process),
so these two are drawn here from Optuna's numbers (its fANOVA importances, as its plot computes them).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from trainables.objective import Objective

SIZE_INCHES = (7, 4.5)
DPI = 110


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure on the Agg canvas: PNG output without pyplot or a global backend."""
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    return path


def completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def best_so_far_figure(
    xs: list[int], values: list[float], objective: Objective, size: tuple[float, float], xlabel: str, label: str
) -> Figure:
    """Each value at its x (a point, ``label``) and the best so far by ``objective`` (a line)."""
    best = [objective.best(values[: i + 1], float) for i in range(len(values))]
    figure = new_figure(size)
    ax = figure.subplots()
    ax.plot(xs, values, "o", alpha=0.6, label=label)
    ax.plot(xs, best, "-", label="best so far")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(objective.metric)
    ax.legend()
    return figure


def history_figure(study: optuna.Study, objective: Objective, index: int) -> Figure:
    """Each completed trial's value of objective ``index`` by trial number, and the best so far."""
    trials = completed(study)
    numbers, values = [t.number for t in trials], [t.values[index] for t in trials]
    figure = best_so_far_figure(numbers, values, objective, SIZE_INCHES, "trial", objective.metric)
    figure.axes[0].set_title("Optimization history", fontsize="medium")
    return figure


def importances_figure(study: optuna.Study, objective: Objective, index: int) -> Figure:
    """Each parameter's importance for objective ``index`` (ValueError/RuntimeError where Optuna cannot tell yet)."""
    # one objective: no target, so the evaluator knows its direction (with a target it assumes minimising)
    target = None if len(study.directions) == 1 else (lambda trial: trial.values[index])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "too few trials: equal importances", as Optuna's plot is quiet
        importances = optuna.importance.get_param_importances(study, target=target)
    names = list(importances)[::-1]  # the most important on top
    figure = new_figure(SIZE_INCHES)
    ax = figure.subplots()
    bars = ax.barh(names, [importances[n] for n in names])
    ax.bar_label(bars, fmt="%.2f", fontsize="small")
    ax.set_xlabel(f"importance for {objective.metric}")
    ax.set_title("Hyperparameter importances", fontsize="medium")
    return figure


def optuna_plots(study: optuna.Study, objectives: list[Objective], out_dir: Path) -> list[Path]:
    """optuna_history_<metric>.png and optuna_importances_<metric>.png; a note where one cannot be drawn yet."""
    if not completed(study):
        return []
    files = []
    for index, objective in enumerate(objectives):
        for kind, draw in (("history", history_figure), ("importances", importances_figure)):
            path = out_dir / f"optuna_{kind}_{objective.metric}.png"
            try:
                figure = draw(study, objective, index)
            except (ValueError, RuntimeError) as err:  # e.g. importances need two or more completed trials
                print(f"note: {path.name} not drawn: {err}")
                continue
            files.append(save_figure(figure, path))
    return files
