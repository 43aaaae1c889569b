"""cluster/iam/*.json allow exactly what the nodes call, on the resources the cluster YAML names.

The policy documents are parsed (Action, Resource, Condition) and each call the head's or a worker's code makes
is evaluated against them the way IAM does for an Allow-only identity policy: some statement must match the
action, the resource ARN and every condition with the request's context. The calls come from two lists kept here,
and two scans keep the lists honest: every S3 operation our code names (botocore's operation names found in
study/ and trainables/) and every EC2 call of Ray's AWS node provider (what the head's autoscaler runs) must be
in them.
"""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest
import yaml

from study.cluster.block import read_study_block
from trainables.data.s3 import parse_s3_uri

ROOT = Path(__file__).parents[2]
IAM = ROOT / "cluster" / "iam"
GPU_YAML = yaml.safe_load((ROOT / "cluster" / "gpu.yaml").read_text())
CLUSTER_NAME = GPU_YAML["cluster_name"]
BLOCK = GPU_YAML["metadata"]["study"]

# S3 operation -> (IAM action, on the bucket or on an object). HeadBucket and ListObjectsV2 are authorised by
# s3:ListBucket on the bucket; HeadBucket carries no s3:prefix, so a prefix condition denies it (AWS's
# HeadBucket page). Multipart parts are authorised by s3:PutObject.
S3_OPERATIONS = {
    "HeadBucket": ("s3:ListBucket", "bucket"),  # staging, the dry run, pyarrow (Ray storage)
    "ListObjectsV2": ("s3:ListBucket", "bucket"),  # staging's listing, pyarrow's directory info
    "GetObject": ("s3:GetObject", "object"),  # staging (s3transfer), checkpoint restore (pyarrow)
    "HeadObject": ("s3:GetObject", "object"),  # pyarrow's file info
    "PutObject": ("s3:PutObject", "object"),  # the dry run's probe, checkpoints, MLflow's artifacts
    "CreateMultipartUpload": ("s3:PutObject", "object"),  # large checkpoints (pyarrow), large artifacts (boto3)
    "UploadPart": ("s3:PutObject", "object"),
    "CompleteMultipartUpload": ("s3:PutObject", "object"),
    "AbortMultipartUpload": ("s3:AbortMultipartUpload", "object"),
    "DeleteObject": ("s3:DeleteObject", "object"),  # the dry run's probe, old checkpoints
    "DeleteObjects": ("s3:DeleteObject", "object"),  # pyarrow's delete_dir
}
USER_MACHINE_ONLY = {"CreateBucket"}  # `study.stage --upload --create-bucket`: the user's credentials, not a node's


def prefix(uri: str) -> tuple[str, str]:
    return parse_s3_uri(uri)


READ = [BLOCK["data"]["healthy"], BLOCK["data"]["lesion"]]
WRITE = {"head": [BLOCK["ray_storage"], BLOCK["mlflow"]["artifacts_destination"]], "worker": [BLOCK["ray_storage"]]}
# The shared slice cache (trainables.data.shared_cache): the driver on the head lists, reads and publishes it
# (uploads, then the COMPLETE marker; it never deletes), every node's first Train worker lists and reads it.
SHARED_CACHE = read_study_block(ROOT / "cluster" / "gpu.yaml").data.shared_cache_uri
PUBLISH = {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"}
BUCKETS = {prefix(uri)[0] for uri in READ + WRITE["head"]}

# The head's autoscaler through Ray's AWS node provider: (IAM action, resource, request context)
INSTANCE = "arn:aws:ec2:us-east-1:111122223333:instance/i-0123456789abcdef0"
OURS = {"aws:ResourceTag/ray-cluster-name": CLUSTER_NAME}
EC2_CALLS = [
    ("ec2:DescribeInstances", "*", {}),  # non_terminated_nodes, _get_node
    ("ec2:DescribeInstanceTypes", "*", {}),  # fillout_available_node_types_resources
    ("ec2:DescribeImages", "*", {}),  # _check_ami_cwa_installation
    ("ec2:RunInstances", INSTANCE, {"aws:RequestTag/ray-cluster-name": CLUSTER_NAME}),  # create_node
    ("ec2:RunInstances", "arn:aws:ec2:us-east-1::image/ami-0123456789abcdef0", {}),
    ("ec2:RunInstances", "arn:aws:ec2:us-east-1:111122223333:subnet/subnet-0123", {}),
    ("ec2:RunInstances", "arn:aws:ec2:us-east-1:111122223333:network-interface/*", {}),
    ("ec2:RunInstances", "arn:aws:ec2:us-east-1:111122223333:security-group/sg-0123", {}),
    ("ec2:RunInstances", "arn:aws:ec2:us-east-1:111122223333:key-pair/ray-autoscaler_us-east-1", {}),
    ("ec2:RunInstances", "arn:aws:ec2:us-east-1:111122223333:volume/*", {}),
    ("ec2:RunInstances", "arn:aws:ec2:us-east-1:111122223333:spot-instances-request/*", {}),  # spot types
    ("ec2:CreateTags", INSTANCE, {"ec2:CreateAction": "RunInstances"}),  # TagSpecifications of create_node
    ("ec2:CreateTags", INSTANCE, OURS),  # set_node_tags
    ("ec2:TerminateInstances", INSTANCE, OURS),  # terminate_nodes
    ("ec2:StopInstances", INSTANCE, OURS),  # terminate_nodes with cache_stopped_nodes
    ("ec2:StartInstances", INSTANCE, OURS),  # create_node reusing a stopped node
    ("ssm:GetParameters", "arn:aws:ssm:us-east-1::parameter" + GPU_YAML["available_node_types"][
        GPU_YAML["head_node_type"]]["node_config"]["ImageId"][len("resolve:ssm:"):], {}),  # RunInstances resolves it
    ("iam:PassRole", "arn:aws:iam::111122223333:role/lesion-study-worker",
     {"iam:PassedToService": "ec2.amazonaws.com"}),  # workers' IamInstanceProfile
]  # fmt: skip
# Ray's boto3 calls in node_provider.py -> the IAM action each needs (the scan below finds the calls)
RAY_CALL_ACTIONS = {
    "instances.filter": "ec2:DescribeInstances",
    "create_instances": "ec2:RunInstances",
    "create_tags": "ec2:CreateTags",
    "start_instances": "ec2:StartInstances",
    "stop_instances": "ec2:StopInstances",
    "terminate_instances": "ec2:TerminateInstances",
    "describe_images": "ec2:DescribeImages",
    "describe_instance_types": "ec2:DescribeInstanceTypes",
    "node.terminate": "ec2:TerminateInstances",
    "node.stop": "ec2:StopInstances",
    "node.wait_until_stopped": "ec2:DescribeInstances",
}


def policy(node: str) -> dict[str, Any]:
    return json.loads((IAM / f"{node}-policy.json").read_text())


def as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def conditions_hold(condition: dict[str, dict[str, Any]], context: dict[str, str]) -> bool:
    for operator, tests in condition.items():
        match = {"StringEquals": str.__eq__, "StringLike": fnmatchcase}.get(operator)
        if match is None:
            raise AssertionError(f"condition operator {operator} is not evaluated by this test: add it")
        for key, wanted in tests.items():
            if key not in context or not any(match(context[key], value) for value in as_list(wanted)):
                return False
    return True


def allowed(document: dict[str, Any], action: str, resource: str, context: dict[str, str]) -> bool:
    """Whether an Allow statement matches (this test's policies have no Deny, NotAction or NotResource)."""
    for statement in document["Statement"]:
        assert statement["Effect"] == "Allow" and {"NotAction", "NotResource"}.isdisjoint(statement), statement
        if not any(fnmatchcase(action.lower(), a.lower()) for a in as_list(statement["Action"])):
            continue
        if not any(fnmatchcase(resource, r) for r in as_list(statement["Resource"])):
            continue
        if conditions_hold(statement.get("Condition", {}), context):
            return True
    return False


def s3_arn(uri: str, kind: str) -> str:
    bucket, key = prefix(uri)
    return f"arn:aws:s3:::{bucket}" if kind == "bucket" else f"arn:aws:s3:::{bucket}/{key}x/checkpoint.pt"


@pytest.mark.parametrize("node", ["head", "worker"])
@pytest.mark.parametrize("operation", sorted(S3_OPERATIONS))
def test_each_s3_call_is_allowed_where_the_node_makes_it(node: str, operation: str) -> None:
    action, kind = S3_OPERATIONS[operation]
    uris = READ if action == "s3:GetObject" else []
    uris = uris + (WRITE[node] if kind == "object" else READ + WRITE[node])
    if action in (PUBLISH if node == "head" else {"s3:GetObject", "s3:ListBucket"}):
        uris = uris + [SHARED_CACHE]
    for uri in uris:
        context = {"s3:prefix": prefix(uri)[1]} if operation == "ListObjectsV2" else {}  # HeadBucket: no prefix
        assert allowed(policy(node), action, s3_arn(uri, kind), context), (node, operation, uri)


@pytest.mark.parametrize("node", ["head", "worker"])
def test_list_bucket_is_unconditional(node: str) -> None:
    """HeadBucket (staging, the dry run, pyarrow: 28 on one smoke study) sends no prefix: no s3:prefix condition."""
    for bucket in BUCKETS:
        assert allowed(policy(node), "s3:ListBucket", f"arn:aws:s3:::{bucket}", {})
    assert not any("Condition" in s for s in policy(node)["Statement"] if "s3:ListBucket" in as_list(s["Action"]))


@pytest.mark.parametrize("node", ["head", "worker"])
def test_nothing_beyond_the_named_prefixes(node: str) -> None:
    document = policy(node)
    bucket = prefix(READ[0])[0]
    assert not allowed(document, "s3:ListBucket", "arn:aws:s3:::some-other-bucket", {})
    for uri in READ:  # data is read-only on the nodes
        assert not allowed(document, "s3:PutObject", s3_arn(uri, "object"), {})
        assert not allowed(document, "s3:DeleteObject", s3_arn(uri, "object"), {})
    assert not allowed(document, "s3:GetObject", f"arn:aws:s3:::{bucket}/elsewhere/x", {})
    assert not allowed(document, "s3:DeleteObject", s3_arn(SHARED_CACHE, "object"), {})  # a published cache stays
    assert allowed(document, "s3:PutObject", s3_arn(SHARED_CACHE, "object"), {}) == (node == "head")
    assert not allowed(document, "s3:DeleteBucket", f"arn:aws:s3:::{bucket}", {})
    assert not allowed(document, "s3:CreateBucket", f"arn:aws:s3:::{bucket}", {})
    actions = {a for s in document["Statement"] for a in as_list(s["Action"])}
    assert all("*" not in a for a in actions), actions


def test_workers_have_no_ec2_iam_or_mlflow_artifacts() -> None:
    document = policy("worker")
    actions = {a for s in document["Statement"] for a in as_list(s["Action"])}
    assert all(a.startswith("s3:") for a in actions), actions
    artifacts = BLOCK["mlflow"]["artifacts_destination"]  # the head's MLflow server writes them, not the workers
    assert not allowed(document, "s3:PutObject", s3_arn(artifacts, "object"), {})


@pytest.mark.parametrize(("action", "resource", "context"), EC2_CALLS, ids=lambda v: v if isinstance(v, str) else "")
def test_each_autoscaler_call_is_allowed(action: str, resource: str, context: dict) -> None:
    assert allowed(policy("head"), action, resource, context)


def test_the_head_may_do_nothing_else_on_ec2() -> None:
    """Exactly the autoscaler's calls: `ray up`'s own look-ups (subnets, security groups, key pairs) run on the
    user's machine with the user's credentials, not on the head."""
    granted = {a for s in policy("head")["Statement"] for a in as_list(s["Action"]) if not a.startswith("s3:")}
    assert granted == {action for action, _, _ in EC2_CALLS}


@pytest.mark.parametrize(
    "action", ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances", "ec2:CreateTags"]
)
def test_instance_actions_only_on_this_clusters_instances(action: str) -> None:
    document = policy("head")
    assert allowed(document, action, INSTANCE, OURS)
    assert not allowed(document, action, INSTANCE, {"aws:ResourceTag/ray-cluster-name": "someone-else"})
    assert not allowed(document, action, INSTANCE, {})  # an untagged instance (anything else in the account)


def test_launches_must_carry_this_clusters_tag_and_pass_only_the_worker_role() -> None:
    document = policy("head")
    assert not allowed(document, "ec2:RunInstances", INSTANCE, {})
    assert not allowed(document, "ec2:RunInstances", INSTANCE, {"aws:RequestTag/ray-cluster-name": "other"})
    passed = {"iam:PassedToService": "ec2.amazonaws.com"}
    assert not allowed(document, "iam:PassRole", "arn:aws:iam::111122223333:role/lesion-study-head", passed)
    assert not allowed(document, "iam:PassRole", "arn:aws:iam::111122223333:role/admin", passed)


def test_every_s3_operation_our_code_names_is_in_the_list() -> None:
    """botocore's S3 operation names, as our code calls them (client.head_bucket, paginators), in study/ and
    trainables/: each must be in S3_OPERATIONS (a node calls it) or USER_MACHINE_ONLY."""
    import botocore.session
    from botocore import xform_name

    names = botocore.session.get_session().get_service_model("s3").operation_names
    source = "\n".join(p.read_text() for folder in ("study", "trainables") for p in (ROOT / folder).rglob("*.py"))
    called = {op for op in names if re.search(rf"\.{xform_name(op)}\(|[\"']{xform_name(op)}[\"']", source)}
    assert {"HeadBucket", "ListObjectsV2", "PutObject", "DeleteObject"} <= called  # the scan finds real calls
    assert called <= set(S3_OPERATIONS) | USER_MACHINE_ONLY, called - set(S3_OPERATIONS) - USER_MACHINE_ONLY


def test_every_ec2_call_of_rays_node_provider_is_listed() -> None:
    """What the head's autoscaler calls (Ray's AWS node provider): each call is in RAY_CALL_ACTIONS and its
    IAM action in EC2_CALLS, so a Ray upgrade that calls something new fails here."""
    import ray.autoscaler._private.aws.node_provider as provider

    source = Path(provider.__file__).read_text()
    calls = set(re.findall(r"\b(?:ec2|ec2_fail_fast|client)\.(instances\.filter|[a-z_]+)\b", source)) - {"meta"}
    calls |= {f"node.{name}" for name in re.findall(r"\bnode\.([a-z_]+)\(", source)}  # ec2.Instance methods
    assert {"create_instances", "terminate_instances", "instances.filter"} <= calls
    assert calls <= set(RAY_CALL_ACTIONS), calls - set(RAY_CALL_ACTIONS)
    assert {RAY_CALL_ACTIONS[c] for c in calls} <= {action for action, _, _ in EC2_CALLS}


def test_policies_name_this_clusters_bucket_tag_and_roles() -> None:
    text = (IAM / "head-policy.json").read_text()
    assert text.count(f'"aws:RequestTag/ray-cluster-name": "{CLUSTER_NAME}"') == 1
    assert text.count(f'"aws:ResourceTag/ray-cluster-name": "{CLUSTER_NAME}"') == 1
    profiles = {t["node_config"]["IamInstanceProfile"]["Name"] for t in GPU_YAML["available_node_types"].values()}
    assert profiles == {"lesion-study-head", "lesion-study-worker"}
    assert BUCKETS == {"brain-mri"}


def test_ssh_only_from_the_site_cidr() -> None:
    """The YAML names the security group and its SSH rule; a site CIDR, never the whole internet."""
    group = GPU_YAML["provider"]["security_group"]
    assert group["GroupName"]
    ssh = [p for p in group["IpPermissions"] if p["FromPort"] <= 22 <= p["ToPort"]]
    assert ssh and all(r["CidrIp"] != "0.0.0.0/0" for p in ssh for r in p["IpRanges"])
    assert all(not p.get("Ipv6Ranges") for p in ssh)


def test_rays_own_group_would_add_ssh_from_anywhere() -> None:
    """Why cluster/README creates the group before `ray up`: a group Ray creates gets Ray's default SSH rule
    from 0.0.0.0/0 besides the YAML's IpPermissions (Ray 2.60 leaves a group that already has rules alone).
    If Ray stops doing this, this test fails and the README's step can be simplified."""
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    rules = _create_default_inbound_rules({"sg-1"}, GPU_YAML["provider"]["security_group"]["IpPermissions"])
    assert any(r.get("IpRanges") == [{"CidrIp": "0.0.0.0/0"}] and r["FromPort"] == 22 for r in rules)
