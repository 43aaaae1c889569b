"""A study run from the repository's root leaves git's view of it unchanged: everything it writes is ignored.

The smoke study runs as a user would start it (`python -m study.run --config study/configs/smoke.yaml`) in a fresh
clone of this checkout's commit, so the test sees what a newcomer's clone would: no earlier run's outputs, and
the committed .gitignore.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout


@pytest.fixture
def fresh_clone(tmp_path: Path) -> Path:
    """A clone of this checkout's commit (objects shared with it, nothing written to it)."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    commit = _git(REPO, "rev-parse", "HEAD").strip()
    clone = tmp_path / "repo"
    _git(tmp_path, "clone", "--quiet", "--shared", "--no-checkout", str(REPO), str(clone))
    _git(clone, "checkout", "--quiet", "--detach", commit)
    assert _git(clone, "status", "--porcelain") == ""
    return clone


@pytest.mark.slow  # 6 min 26 s measured on 2 cores at load 20-30: a cohort generated, Ray started, 2 trials
def test_a_smoke_study_from_the_root_leaves_git_status_clean(fresh_clone: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(fresh_clone), RAY_ADDRESS="local")  # the clone's code, a private Ray
    env.pop("MLFLOW_TRACKING_URI", None)  # the smoke config's own store (results/mlflow.db), as a user gets it
    command = [sys.executable, "-m", "study.run", "--config", "study/configs/smoke.yaml", "--no-cluster"]
    done = subprocess.run(command, cwd=fresh_clone, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (fresh_clone / "results" / "smoke" / "trials.csv").is_file()  # the study did write, under results/
    assert (fresh_clone / "results" / "mlflow.db").is_file()
    assert _git(fresh_clone, "status", "--porcelain", "--untracked-files=all") == ""
