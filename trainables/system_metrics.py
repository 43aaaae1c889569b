"""This node's system metrics, sampled where the training runs: on the Train worker's node, not the driver's.

MLflow's own monitors (CPU and memory through psutil; each GPU through NVML, where NVML sees one) sample on a
daemon thread every ``interval_s``; ``take()`` returns the means since the last call as ``system/<name>``, the
names MLflow's system metrics use, so rank 0 reports them with each epoch and the driver logs them to the trial's
run. (On a cluster the head samples nothing useful: it has no GPU and trains nothing.)
"""

from __future__ import annotations

import threading
from typing import Any

PREFIX = "system/"


class NodeSampler:
    def __init__(self, interval_s: float = 5.0) -> None:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        self.monitors: list[Any] = [CPUMonitor()]
        try:
            self.monitors.append(GPUMonitor())
        except (ImportError, RuntimeError):  # no pynvml, or NVML finds no GPU: CPU and memory only
            pass
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._collect()
        for monitor in self.monitors:  # psutil's first CPU reading covers no interval: drop it
            monitor.clear_metrics()
        self._thread = threading.Thread(target=self._run, name="node-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._collect()

    def _collect(self) -> None:
        with self._lock:
            for monitor in self.monitors:
                monitor.collect_metrics()

    def take(self) -> dict[str, float]:
        """Means of the samples since the last take (one taken now, so never empty)."""
        self._collect()
        out = {}
        with self._lock:
            for monitor in self.monitors:
                out.update({PREFIX + k: float(v) for k, v in monitor.aggregate_metrics().items()})
                monitor.clear_metrics()
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 1)
