"""Bench section `study`: what a whole study costs beyond its training, on the smoke study.

`study.run.run_study` runs study/configs/smoke.yaml with results and MLflow in a temporary folder and a
private local Ray (started inside the timed call, as a user's run starts it). A Tune callback added to
the study's own (through `study.tuning.make_tuner`, wrapped for this call only) records each trial's
start and results on the driver. Figures:
- study_overhead: the study's wall time / the sum over trials and epochs of `time_train_s + time_eval_s`
  (the time workers spend inside their training and evaluation loops);
- trial_start_s: median over trials of Tune's trial start (the trial actor is up) to the first training
  step (`first_step_at`, reported in the first epoch by the training loop);
- where the rest goes: before the first trial (data, MLflow, Ray start, baseline), each trial's start,
  its epochs, its tail (test scoring, last report, teardown), and after the last trial (reports).
"""

from __future__ import annotations

import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any
from unittest import mock

from ray.tune import Callback
from ray.tune.experiment import Trial

from study.bench.common import BenchPlan, say, study_config
from study.bench.report import median, ratio
from study.config import StudyConfig

KEPT = ("epoch", "time_train_s", "time_eval_s", "first_step_at", "loop_start_at", "trial_entered_at", "final")


class TrialClock(Callback):
    """Tune callback (driver side): wall-clock start, results and end of every trial."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.results: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.time())

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        kept = {k: result[k] for k in KEPT if k in result}
        self.results[trial.trial_id].append({**kept, "at": time.time()})

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.ended[trial.trial_id] = time.time()

    on_trial_error = on_trial_complete


def inner_seconds(results: dict[str, list[dict[str, Any]]]) -> float:
    """Sum over trials and epochs of the time spent inside the training and evaluation loops."""
    return sum(r.get("time_train_s", 0.0) + r.get("time_eval_s", 0.0) for rows in results.values() for r in rows)


def start_costs(clock: TrialClock, until: str = "first_step_at", since: str | None = None) -> list[float]:
    """Per trial: seconds from Tune's trial start (or the result key ``since``) to the result key ``until``
    (default: the first training step; ``loop_start_at`` is when rank 0 entered the training loop)."""
    costs = []
    for trial_id, started in clock.started.items():
        rows = [r for r in clock.results.get(trial_id, []) if until in r and (since is None or since in r)]
        if rows:
            costs.append(rows[0][until] - (started if since is None else rows[0][since]))
    return costs


def tail_costs(clock: TrialClock) -> list[float]:
    """Per trial: seconds from the last epoch's report to the trial's end (test scoring, final report, teardown)."""
    costs = []
    for trial_id, ended in clock.ended.items():
        epochs = [r["at"] for r in clock.results.get(trial_id, []) if not r.get("final")]
        if epochs:
            costs.append(ended - epochs[-1])
    return costs


def gaps(clock: TrialClock) -> list[float]:
    """Seconds from one trial's end to the next trial's start (trials run one at a time in the smoke study)."""
    starts, ends = sorted(clock.started.values()), sorted(clock.ended.values())
    return [start - end for end, start in zip(ends, starts[1:], strict=False) if start >= end]


def in_trial_overhead(clock: TrialClock) -> list[float]:
    """Per trial: seconds between its first step and its last epoch report not spent in train/eval loops
    (per-epoch reports, checkpoints, the loss all-reduce)."""
    out = []
    for rows in clock.results.values():
        first = [r["first_step_at"] for r in rows if "first_step_at" in r]
        epochs = [r for r in rows if not r.get("final")]
        if first and epochs:
            out.append(epochs[-1]["at"] - first[0] - inner_seconds({"": epochs}))
    return out


def breakdown(clock: TrialClock, t0: float, t1: float) -> dict[str, float]:
    """Where the study's wall time went, in seconds (wall clock of the driver)."""
    starts, ends = list(clock.started.values()), list(clock.ended.values())
    return {
        "study_before_first_trial_s": (min(starts) - t0) if starts else float("nan"),
        "study_after_last_trial_s": (t1 - max(ends)) if ends else float("nan"),
        "trial_gap_s": median(gaps(clock)),
        "trial_in_epochs_overhead_s": median(in_trial_overhead(clock)),
        "trial_tail_s": median(tail_costs(clock)),
    }


def _with_clock(clock: TrialClock) -> Any:
    """`study.tuning.make_tuner` with our callback appended to the study's callbacks."""
    import study.tuning

    real = study.tuning.make_tuner

    def make_tuner(config: Any, setup: Any, callbacks: list, resume: bool) -> Any:
        return real(config, setup, [*callbacks, clock], resume)

    return mock.patch.object(study.tuning, "make_tuner", make_tuner)


def cache_entries(root: str) -> set[str]:
    folder = Path(root) / "cache"
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()


def timed_study(plan: BenchPlan, clock: TrialClock) -> tuple[float, float, StudyConfig]:
    """Run the smoke study once (results and MLflow in a temporary folder); (start, end, config)."""
    import ray

    from study.config import MlflowConfig
    from study.run import run_study

    if ray.is_initialized():
        ray.shutdown()  # the study starts its own Ray inside the timed call
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        mlflow = MlflowConfig(tracking_uri=f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        trials = {"num_samples": plan.study_trials} if plan.study_trials else {}
        config = study_config(results_dir=str(Path(tmp) / "results"), ray_address="local", mlflow=mlflow, **trials)
        t0 = time.time()
        try:
            with _with_clock(clock):
                run_study(config)
        finally:
            t1 = time.time()
            ray.shutdown()
    return t0, t1, config


def run(plan: BenchPlan) -> dict[str, Any]:
    """Section figures: study_overhead, trial_start_s and the wall-time breakdown of the smoke study.

    A failure before the first trial started (Ray or MLflow failing to start on an overloaded machine) is
    retried once; a failure after that is the study's own and is raised.
    """
    before = cache_entries(study_config().data.root)
    clock = TrialClock()
    try:
        t0, t1, config = timed_study(plan, clock)
    except Exception as err:
        if clock.started:
            raise
        say(f"study: failed before its first trial ({type(err).__name__}: {err}); retrying once")
        clock = TrialClock()
        t0, t1, config = timed_study(plan, clock)
    inner = inner_seconds(clock.results)
    figures = {
        "study_overhead": ratio(t1 - t0, inner),
        "trial_start_s": median(start_costs(clock)),
        "trial_start_to_loop_s": median(start_costs(clock, "loop_start_at")),  # Ray: actors, imports, rendezvous
        # ... split at the trial's function: Tune's trial actor / Train's controller, workers and rendezvous
        "trial_start_to_trainable_s": median(start_costs(clock, "trial_entered_at")),
        "trial_trainable_to_loop_s": median(start_costs(clock, "loop_start_at", since="trial_entered_at")),
        "trial_loop_to_first_step_s": median(start_costs(clock, "first_step_at", since="loop_start_at")),
        "study_wall_s": t1 - t0,
        "study_inner_s": inner,
        "study_trials": len(clock.started),
        "study_new_cache_entries": len(cache_entries(config.data.root) - before),
        **breakdown(clock, t0, t1),
    }
    say(
        f"study: wall {figures['study_wall_s']:.1f} s, inside train/eval loops {inner:.1f} s, "
        f"overhead {figures['study_overhead']:.2f}x; trial start {figures['trial_start_s']:.1f} s"
    )
    return figures
