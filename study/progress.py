"""Progress a person can follow: one line per trial start, epoch, and end, printed by the driver."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback
from ray.tune.experiment import Trial

from study.results import failure_reason
from study.tracking.runs import trial_label

SHOWN_METRICS = ("val_slice_auroc", "val_pixel_auroc")


class ProgressPrinter(Callback):
    """Tune callback printing trial/epoch/metric lines instead of Tune's wide status tables."""

    def __init__(self, num_samples: int, epochs: int, already_done: int = 0) -> None:
        self.num_samples = num_samples
        self.epochs = epochs
        self.already_done = already_done  # trials finished before a --resume
        self.started = time.monotonic()
        self.numbers: dict[str, int] = {}

    def _say(self, trial: Trial, text: str) -> None:
        number = self.numbers.setdefault(trial.trial_id, self.already_done + len(self.numbers) + 1)
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.0f}s] trial {number}/{self.num_samples} {trial.trial_id}: {text}", flush=True)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._say(trial, f"started {trial_label(trial.config)}")

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        if result.get("final"):
            test = " ".join(f"{k}={_short(result[k])}" for k in ("test_slice_auroc", "test_pixel_auroc") if k in result)
            self._say(trial, f"chose epoch {result.get('best_epoch')}; {test}")
            return
        shown = " ".join(f"{k}={_short(result[k])}" for k in ("train_loss", *SHOWN_METRICS) if k in result)
        self._say(trial, f"epoch {result.get('epoch')}/{self.epochs} {shown}")

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        last = trial.last_result or {}
        if last.get("final"):  # the same rule as the journal's status (study.results)
            self._say(trial, "completed")
        else:
            self._say(trial, f"stopped early by the scheduler after epoch {last.get('epoch', '?')}/{self.epochs}")

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self._say(trial, f"FAILED: {failure_reason(trial)}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
