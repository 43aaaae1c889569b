"""Which GPU node type Ray's autoscaler v2 launches for a waiting trial of study/configs/gpu.yaml, asked of Ray 2.60's
own scheduler (ResourceDemandScheduler) with cluster/gpu.yaml read by Ray's own config reader: the spot types in
their `priority` order, the on-demand type when they cannot take it, as cluster/README.md (step 4) says."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from study.cluster.resources import trial_ask
from study.config import load_config

ROOT = Path(__file__).parents[2]
GPU_YAML = ROOT / "cluster" / "gpu.yaml"


def launches(
    path: Path, trials: int, availability: dict[str, float] | None = None, study: str = "gpu.yaml"
) -> dict[str, int]:
    """{node type: count} the v2 scheduler launches for ``trials`` Train workers of the GPU study, from nothing."""
    from ray.autoscaler.v2.instance_manager.config import FileConfigReader
    from ray.autoscaler.v2.scheduler import ResourceDemandScheduler, SchedulingRequest
    from ray.autoscaler.v2.utils import ResourceRequestUtil
    from ray.core.generated.autoscaler_pb2 import ResourceRequestByCount

    config = FileConfigReader(str(path)).get_cached_autoscaling_config()
    _, worker, _ = trial_ask(load_config(ROOT / "study" / "configs" / study))
    request = SchedulingRequest(
        node_type_configs=config.get_node_type_configs(),
        max_num_nodes=config.get_max_num_nodes(),
        disable_launch_config_check=True,
        resource_requests=[ResourceRequestByCount(request=ResourceRequestUtil.make(worker), count=trials)],
        recoverable_resource_availabilities=availability or {},
    )
    reply = ResourceDemandScheduler(None).schedule(request)
    found: dict[str, int] = {}
    for launch in reply.to_launch:
        found[launch.instance_type] = found.get(launch.instance_type, 0) + launch.count
    return found


def gpu_types(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in raw["available_node_types"].items() if name != raw["head_node_type"]}


def spot(node_type: dict[str, Any]) -> bool:
    return node_type["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"


def test_every_worker_type_has_a_priority_spot_above_on_demand() -> None:
    raw = yaml.safe_load(GPU_YAML.read_text())
    types = gpu_types(raw)
    assert all(isinstance(t.get("priority"), int) for t in types.values())
    spot_priorities = [t["priority"] for t in types.values() if spot(t)]
    on_demand = [t["priority"] for t in types.values() if not spot(t)]
    assert spot_priorities and on_demand and min(spot_priorities) > max(on_demand)


def test_ray_launches_the_highest_priority_spot_type() -> None:
    raw = yaml.safe_load(GPU_YAML.read_text())
    best = max(gpu_types(raw).items(), key=lambda item: item[1]["priority"])
    assert spot(best[1])
    assert launches(GPU_YAML, 1) == {best[0]: 1}
    assert launches(GPU_YAML, 4) == {best[0]: 4}  # the study's 4 trials at once, max_workers 4


def test_a_timed_out_type_is_passed_over_for_the_next_priority() -> None:
    raw = yaml.safe_load(GPU_YAML.read_text())
    ranked = sorted(gpu_types(raw).items(), key=lambda item: -item[1]["priority"])
    assert launches(GPU_YAML, 1, {ranked[0][0]: 0.0}) == {ranked[1][0]: 1}


def test_on_demand_when_the_spot_types_are_capped(tmp_path: Path) -> None:
    """The README's way to move on from failing spot types: max_workers 0, then `ray up` again."""
    raw = yaml.safe_load(GPU_YAML.read_text())
    for node_type in gpu_types(raw).values():
        if spot(node_type):
            node_type["max_workers"] = 0
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    on_demand = [name for name, t in gpu_types(raw).items() if not spot(t)]
    launched = launches(path, 1)
    assert set(launched) <= set(on_demand) and sum(launched.values()) == 1


@pytest.mark.parametrize("path", sorted((ROOT / "cluster").glob("*.yaml")), ids=lambda p: p.name)
def test_only_keys_rays_schema_knows(path: Path) -> None:
    """Ray's schema file itself (ray/autoscaler/ray-schema.json) accepts each node type's keys, priority too
    (after Ray's own preparation, which turns local.yaml's top-level min_workers into node types)."""
    import copy
    import json

    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(prepare_config(copy.deepcopy(yaml.safe_load(path.read_text()))), schema)
    node_schema = schema["properties"]["available_node_types"]["patternProperties"][".*"]["properties"]
    assert "priority" in node_schema


def test_ddp_workers_go_to_the_4_gpu_type_only() -> None:
    """study/configs/gpu-ddp.yaml: a worker asks more CPUs than a 1-GPU node has, so 2 trials' 4 workers take one
    4-GPU node (both ranks of a trial on one node: NCCL without the network), and the 1-GPU study never uses it."""
    raw = yaml.safe_load(GPU_YAML.read_text())
    multi = [name for name, t in gpu_types(raw).items() if t["resources"]["GPU"] >= 4]
    assert len(multi) == 1
    assert launches(GPU_YAML, 4, study="gpu-ddp.yaml") == {multi[0]: 1}
    assert launches(GPU_YAML, 8, study="gpu-ddp.yaml") == {multi[0]: 2}  # the study's 4 trials at once
    assert multi[0] not in launches(GPU_YAML, 4)
