"""The study's pictures are drawn on the Agg canvas without pyplot: no process-wide backend is chosen or switched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DRAW = """
import sys
from pathlib import Path

import optuna

from study.tracking.pareto import plot_best_so_far
from study.tracking.plots import optuna_plots
from trainables.objective import Objective

optuna.logging.set_verbosity(optuna.logging.WARNING)
out = Path(sys.argv[1])
study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
study.optimize(lambda t: (t.suggest_float("lr", 0, 1), float(t.suggest_int("depth", 1, 5))), n_trials=8)
objectives = [Objective("val_a", "max"), Objective("val_b", "min")]
files = optuna_plots(study, objectives, out)
rows = [{"status": "completed", "val_a": t.values[0]} for t in study.trials]
files.append(plot_best_so_far(rows, objectives[0], out / "best_so_far.png"))
print(len(files), "matplotlib.pyplot" in sys.modules)
"""


def test_pictures_without_pyplot(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", DRAW, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5", "False"]  # five files, and pyplot never imported
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == sorted(
        ["best_so_far.png"] + [f"optuna_{k}_{m}.png" for k in ("history", "importances") for m in ("val_a", "val_b")]
    )
    # measured 11-25 kB a picture; a blank canvas is 2.2 kB (empty axes 10 kB: this bound only catches the blank)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in tmp_path.glob("*.png"))
