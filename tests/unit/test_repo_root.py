"""The repository holds code and documents, not what runs write (docs/design.md, "Models and where a study writes").

Read from git itself: the tracked files (`git ls-files`) and the ignore rules (`git check-ignore`).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_OUTPUT_DIRS = ("mlruns", "mlartifacts")  # MLflow's file store and its server's default artifact folder
KEPT_RESULTS = ("results/README.md", "results/reproduce/")  # the only parts of results/ git keeps
# Paths MLflow writes in its working directory when no store is named (MLflow 3: sqlite:///mlflow.db)
IGNORED_AT_ROOT = ("mlflow.db", "mlruns/x", "mlartifacts/x")
# Written by the cluster head into the repository folder for the workers: the cluster YAMLs' rsync_filter reads
# .gitignore, so ignoring it would keep it from the workers.
SYNCED_TO_WORKERS = ".cluster-in-use.yaml"


def run_outputs(tracked: list[str]) -> list[str]:
    """The tracked paths that are run outputs: a database, an MLflow store, or results/ beyond what git keeps."""
    found = []
    for name in tracked:
        path = PurePosixPath(name)
        in_results = path.parts[0] == "results" and not name.startswith(KEPT_RESULTS)
        if path.suffix == ".db" or set(path.parts) & set(RUN_OUTPUT_DIRS) or in_results:
            found.append(name)
    return found


def _git(*args: str) -> subprocess.CompletedProcess:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=30)


def test_git_tracks_no_run_output():
    listing = _git("ls-files")
    assert listing.returncode == 0, listing.stderr
    tracked = listing.stdout.splitlines()
    assert "results/README.md" in tracked and "pyproject.toml" in tracked, "git ls-files listed the wrong tree"
    assert run_outputs(tracked) == [], "run outputs tracked by git (git rm --cached them)"


def test_the_finder_names_run_outputs():
    tracked = [
        "mlflow.db",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/model.pt",
        "results/default/trials.csv",
        "results/README.md",
        "results/reproduce/table.md",
        "study/run.py",
    ]
    assert run_outputs(tracked) == tracked[:4]


def test_gitignore_keeps_mlflow_defaults_out_and_lets_the_cluster_file_through():
    ignored = _git("check-ignore", "--no-index", *IGNORED_AT_ROOT)
    assert sorted(ignored.stdout.split()) == sorted(IGNORED_AT_ROOT), ignored.stderr
    synced = _git("check-ignore", "--no-index", SYNCED_TO_WORKERS)
    assert synced.returncode == 1, f".gitignore ignores {SYNCED_TO_WORKERS}: {synced.stdout}"
