"""trainables.system_metrics: this node's CPU, memory (and GPU where NVML sees one), sampled on a thread with
MLflow's own monitors and taken as per-epoch means under MLflow's system/ names, which the driver logs."""

from __future__ import annotations

import threading
import time

from trainables.metric_names import is_reported_metric
from trainables.system_metrics import NodeSampler


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        sum(range(1000))


def test_samples_this_node_and_names_them_as_mlflow_does() -> None:
    sampler = NodeSampler(interval_s=0.05)
    try:
        busy(0.4)
        taken = sampler.take()
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(taken)
        assert 0 < taken["system/cpu_utilization_percentage"] <= 100  # a busy core here: measured 50-100
        assert taken["system/system_memory_usage_megabytes"] > 10  # the machine's used memory, in MB
        assert all(is_reported_metric(key) for key in taken)  # the driver logs each to the trial's run
        assert sampler.take()  # right after a take: the one sample take() makes itself
    finally:
        sampler.close()
    assert not any(t.name == "node-sampler" and t.is_alive() for t in threading.enumerate())
