"""What the study's parent run shows at the end: fronts, best trials, and Optuna's own plots."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from study.config import StudyConfig  # noqa: E402
from study.pareto import write_pareto  # noqa: E402
from study.results import TRIALS_CSV, best_by_family, write_best_json, write_trials_csv  # noqa: E402
from study.search import make_storage  # noqa: E402


def write_study_report(config: StudyConfig, rows: list[dict[str, Any]], study_dir: Path) -> list[Path]:
    """Write trials.csv, best.json, the Pareto front (or best-so-far curve) and Optuna's plots; return the files."""
    write_trials_csv(rows, study_dir / TRIALS_CSV)
    write_best_json(rows, config.objectives, study_dir / "best.json")
    files = [study_dir / TRIALS_CSV, study_dir / "best.json", *write_pareto(rows, config.objectives, study_dir)]
    return files + optuna_plots(config, study_dir)


def optuna_plots(config: StudyConfig, study_dir: Path) -> list[Path]:
    """Optimisation history and parameter importances per objective, from the persisted Optuna study."""
    study = optuna.load_study(study_name=config.name, storage=make_storage(config))
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        return []
    files = []
    for index, name in enumerate(config.objective_names):
        target = (lambda t, i=index: t.values[i]) if len(config.objectives) > 1 else None
        for kind, plot in (("history", optuna.visualization.matplotlib.plot_optimization_history),
                           ("importances", optuna.visualization.matplotlib.plot_param_importances)):  # fmt: skip
            path = study_dir / f"optuna_{kind}_{name}.png"
            if _plot(lambda p=plot, t=target, n=name: p(study, target=t, target_name=n), path):
                files.append(path)
    return files


def _plot(draw: Any, path: Path) -> bool:
    """Save an Optuna matplotlib plot; False (with a warning) where Optuna cannot draw it yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            axes = draw()
    except (ValueError, RuntimeError) as err:  # e.g. importances need two or more completed trials
        print(f"note: {path.name} not drawn: {err}")
        return False
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(7, 4.5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def log_study_report(
    client: MlflowClient, run_id: str, config: StudyConfig, rows: list[dict], files: list[Path]
) -> None:
    """Attach the report files to the parent run, and the best trial per family as metrics and tags."""
    for path in files:
        client.log_artifact(run_id, str(path))
    objective = config.objectives[0]
    for family, row in best_by_family(rows, objective).items():
        client.set_tag(run_id, f"best_trial.{family}", row["trial_id"])
        for key in (objective.metric, "test_pixel_auroc", "test_slice_auroc"):
            if isinstance(row.get(key), float):
                client.log_metric(run_id, f"best_{family}.{key}", row[key])
