"""What one trial asks Ray for, against what the cluster has now and what its YAML lets it scale to.

A trial is one Tune trial process (``training.cpus_per_trial``, on the head with ``trials_on_head``) and
``training.workers_per_trial`` Ray Train workers of ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs each.
Each worker must fit on one node; a trial needs all its workers at once.
"""

from __future__ import annotations

import math
import os
from typing import Any

from study.config import StudyConfig


def trial_ask(config: StudyConfig) -> tuple[dict[str, float], dict[str, float], int]:
    """(trial process, one Train worker, number of Train workers)."""
    training = config.training
    worker = {"CPU": training.cpus_per_worker}
    if training.gpus_per_worker > 0:
        worker["GPU"] = training.gpus_per_worker
    return {"CPU": training.cpus_per_trial}, worker, training.workers_per_trial


def fmt(resources: dict[str, float] | None) -> str:
    shown = {k: round(v, 3) for k, v in (resources or {}).items() if k in ("CPU", "GPU") and v}
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in shown.items()) + "}"


def fits(bundle: dict[str, float], resources: dict[str, float]) -> int:
    """How many copies of ``bundle`` one node with ``resources`` holds."""
    counts = [math.floor(resources.get(k, 0) / v + 1e-9) for k, v in bundle.items() if v > 0]
    return min(counts) if counts else 0


def minus(resources: dict[str, float], bundle: dict[str, float]) -> dict[str, float]:
    return {k: v - bundle.get(k, 0) for k, v in resources.items()}


def this_machine() -> dict[str, float]:
    """The CPUs and GPUs a Ray started here would offer."""
    from ray._private.accelerators import get_accelerator_manager_for_resource

    gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def running_nodes() -> list[dict[str, float]] | None:
    """Each alive node's resources in the Ray cluster running now (attached for a moment; the Ray this process
    already runs in, if any), the head first; None when there is none."""
    address = os.environ.get("RAY_ADDRESS")
    import ray

    attached = ray.is_initialized()
    if not attached:
        if address == "local":  # this process would start its own Ray: nothing is running for it
            return None
        try:
            ray.init(address=address or "auto", log_to_driver=False, logging_level="ERROR")
        except ConnectionError:
            return None
    try:
        nodes = [dict(node["Resources"]) for node in ray.nodes() if node["Alive"]]
    finally:
        if not attached:
            ray.shutdown()
    return sorted(nodes, key=lambda res: HEAD_MARK not in res)


HEAD_MARK = "node:__internal_head__"  # the resource Ray gives the head node only


def total(nodes: list[dict[str, float]]) -> dict[str, float]:
    summed: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            summed[key] = summed.get(key, 0) + value
    return summed


def unprovided(bundle: dict[str, float], offers: dict[str, dict[str, float]]) -> str | None:
    """Why no one place of ``offers`` ({name: resources}) can ever hold ``bundle``, naming the resource; else None."""
    for key, wanted in bundle.items():
        most = max((res.get(key, 0) for res in offers.values()), default=0)
        if wanted > 0 and most + 1e-9 < wanted:
            if not most:
                return f"{key}: {wanted:g}, which none of them has"
            best = next(name for name, res in offers.items() if res.get(key, 0) == most)
            return f"{key}: {wanted:g}, more than any of them has (at most {most:g}, on {best})"
    return None


def node_types(ray_yaml: dict[str, Any]) -> list[tuple[str, int, dict[str, float]]]:
    """(name, how many nodes at most, resources) per node type, the head first (once)."""
    head = ray_yaml["head_node_type"]
    types = ray_yaml["available_node_types"]
    rows = [(head, 1, types[head].get("resources") or {})]
    rows += [(name, t.get("max_workers", 0), t.get("resources") or {}) for name, t in types.items() if name != head]
    return rows


def worker_capacity(worker: dict[str, float], head: dict[str, float], others: list, budget: int) -> int:
    """Train workers the cluster holds scaled up: the best-fitting node types first, within global max_workers."""
    capacity = fits(worker, head)
    for _, count, resources in sorted(others, key=lambda row: fits(worker, row[2]), reverse=True):
        take = min(count, budget)
        budget -= take
        capacity += take * fits(worker, resources)
    return capacity


def check_resources(config: StudyConfig, ray_yaml: dict[str, Any] | None) -> dict[str, str]:
    """Plan lines about resources; ValueError naming the shortfall when one trial can never be placed."""
    driver, worker, n = trial_ask(config)
    where = " on the head" if config.training.trials_on_head and ray_yaml is not None else ""
    facts = {"per trial": f"1 trial process {fmt(driver)}{where} + {n} Train workers x {fmt(worker)}"}
    nodes = running_nodes()
    now = total(nodes) if nodes else None
    if ray_yaml is None:
        machine = now or this_machine()
        holds = fits(worker, minus(machine, driver))
        if holds < n:
            hint = " (a GPU study runs on a cluster: --cluster cluster/gpu.yaml)" if "GPU" in worker else ""
            raise ValueError(
                f"one trial needs {n} Train workers x {fmt(worker)} + {fmt(driver)}; this machine "
                f"{'runs a Ray with' if now else 'has'} {fmt(machine)}, room for {holds}{hint}"
            )
        facts["resources"] = (
            f"this machine {fmt(machine)}: {min(holds // n, config.max_concurrent_trials)} trial(s) at once"
        )
        return facts
    rows = node_types(ray_yaml)
    unknown = [name for name, count, res in rows if count and not res]
    if unknown:
        facts["resources"] = _against_running(config, unknown, driver, worker, n, nodes)
    else:
        facts["resources"] = _against_yaml(config, ray_yaml, driver, worker, n, now)
    return facts


def _against_running(
    config: StudyConfig,
    unknown: list[str],
    driver: dict[str, float],
    worker: dict[str, float],
    n: int,
    nodes: list[dict[str, float]] | None,
) -> str:
    """Node types that learn their resources at launch (Ray's local provider): the running cluster's nodes are
    what they offer (that provider keeps every machine of the YAML in the cluster); without one, not checked."""
    named = ", ".join(unknown)
    if not nodes:
        return f"node types {named} learn their resources at launch: not checked; no Ray running here now"
    offers = {f"node {i}{' (head)' if HEAD_MARK in res else ''}": res for i, res in enumerate(nodes)}
    short = unprovided(worker, offers)
    if short:
        raise ValueError(
            f"a Train worker asks {fmt(worker)}; the running cluster's {len(nodes)} node(s) "
            f"({'; '.join(f'{k}: {fmt(v)}' for k, v in offers.items())}) can never provide {short}"
        )
    head = nodes[0] if HEAD_MARK in nodes[0] else {}
    if config.training.trials_on_head and head:
        nodes = [minus(head, driver), *nodes[1:]]
    capacity = sum(fits(worker, res) for res in nodes)
    if capacity < n:
        raise ValueError(
            f"one trial needs {n} Train workers x {fmt(worker)}; the running cluster's nodes hold {capacity} "
            f"(now {fmt(total(nodes))})"
        )
    at_once = min(capacity // n, config.max_concurrent_trials)
    return (
        f"node types {named} learn their resources at launch; the running cluster holds {capacity} Train "
        f"workers ({at_once} trial(s) at once)"
    )


def _against_yaml(
    config: StudyConfig,
    ray_yaml: dict[str, Any],
    driver: dict[str, float],
    worker: dict[str, float],
    n: int,
    now: dict[str, float] | None,
) -> str:
    rows = node_types(ray_yaml)
    state = f"now {fmt(now)}" if now else "no Ray running here now"
    offered = "; ".join(f"{name}: {count} x {fmt(res)}" for name, count, res in rows)
    short = unprovided(worker, {name: res for name, count, res in rows if count})
    if short:
        raise ValueError(
            f"a Train worker asks {fmt(worker)}; the cluster YAML's node types ({offered}) can never provide {short}"
        )
    has_gpu = any(res.get("GPU", 0) > 0 and count for name, count, res in rows)
    if has_gpu and "GPU" not in worker:
        raise ValueError(
            "the cluster has GPU node types but training.gpus_per_worker is 0: trials would train on "
            "CPUs and the autoscaler would never start a GPU node (use study/configs/gpu.yaml)"
        )
    (head, _, head_res), others = rows[0], rows[1:]
    if config.training.trials_on_head:
        if fits(driver, head_res) < 1:
            raise ValueError(f"a trial process asks {fmt(driver)} on the head; head type '{head}' has {fmt(head_res)}")
        head_res = minus(head_res, driver)
    capacity = worker_capacity(worker, head_res, others, ray_yaml.get("max_workers", 0))
    if capacity < n:
        raise ValueError(
            f"one trial needs {n} Train workers x {fmt(worker)}; scaled up to every node type's "
            f"max_workers the cluster holds {capacity} ({offered})"
        )
    at_once = min(capacity // n, config.max_concurrent_trials)
    return f"scaled up, {capacity} Train workers fit ({at_once} trial(s) at once); {state}"
