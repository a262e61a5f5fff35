"""cluster.yaml against Ray's own cluster-config validation (what `ray up` runs before it
talks to the cloud), broken copies of it rejected, and what the project needs from it."""

from __future__ import annotations

import copy
import ipaddress
import json
import logging
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from sweep.cluster import launcher_node_types, no_fit_message

ROOT = Path(__file__).resolve().parents[2]


def _validate(config: dict) -> dict:
    """`ray up`'s checks short of the provider's own (which needs cloud credentials): defaults
    merged in, then Ray's JSON schema (ray/autoscaler/ray-schema.json) and its consistency
    rules."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(autouse=True, scope="module")
def _quiet_autoscaler():
    logger = logging.getLogger("ray.autoscaler")
    level = logger.level
    logger.setLevel(logging.WARNING)  # prepare_config logs each default it fills in
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict:
    return _validate(raw)


def test_cluster_yaml_passes_rays_validation(prepared):
    assert prepared["provider"]["type"] == "aws"


def _drop_head_type(c):
    del c["available_node_types"][c["head_node_type"]]


def _unknown_key(c):
    c["max_wrokers"] = 4


def _fractional_gpu(c):
    c["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5


def _no_node_config(c):
    del c["available_node_types"]["gpu_worker"]["node_config"]


def _min_workers_above_cluster_max(c):
    c["available_node_types"]["gpu_worker"]["min_workers"] = c["max_workers"] + 1


def _command_not_a_string(c):
    c["setup_commands"].append({"pip": "install"})


def _no_provider(c):
    del c["provider"]


BROKEN = {
    "head type missing": (_drop_head_type, ValueError, "must be one of `available_node_types`"),
    "misspelt top-level key": (_unknown_key, jsonschema.ValidationError, "'max_wrokers' was"),
    "fractional GPU resource": (_fractional_gpu, jsonschema.ValidationError, "not of type 'int"),
    "node type without node_config": (
        _no_node_config,
        jsonschema.ValidationError,
        "'node_config' is a required property",
    ),
    "min_workers above max_workers": (
        _min_workers_above_cluster_max,
        ValueError,
        "global `max_workers` is smaller than the sum of `min_workers`",
    ),
    "command that is not a string": (_command_not_a_string, jsonschema.ValidationError, "str"),
    "no provider": (_no_provider, KeyError, "provider"),
}


@pytest.mark.parametrize("case", BROKEN, ids=list(BROKEN))
def test_a_broken_copy_is_rejected(raw, case):
    breaks, error, message = BROKEN[case]
    broken = copy.deepcopy(raw)
    breaks(broken)
    with pytest.raises(error, match=re.escape(message)):
        _validate(broken)


def test_head_has_no_gpu_and_the_gpu_workers_autoscale(prepared):
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    gpu = types["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1
    assert gpu["min_workers"] < gpu["max_workers"] <= prepared["max_workers"]
    spot = types["gpu_worker_spot"]
    assert spot["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"


def test_every_node_gets_the_code_and_the_same_versions(prepared):
    assert "." in prepared["file_mounts"].values()
    image = prepared["docker"]["image"]
    assert f":{ray.__version__}-" in image, "the image must carry the Ray this project runs"
    setup = " ".join(prepared["setup_commands"])
    assert f'"ray[default,tune]=={ray.__version__}"' in setup
    assert "pip install -q -e ~/finetune-sweeps" in setup
    pins = re.findall(r'"([a-z-]+)(?:\[[^]]*\])?==', setup)
    assert {"torch", "mlflow", "optuna"} <= set(pins)
    # Workers run the common setup commands too, so they get the same pins and project.
    assert prepared["worker_setup_commands"] == prepared["setup_commands"]


def test_mlflow_listens_on_the_private_address_and_every_node_knows_it(prepared):
    head = " ".join(prepared["head_start_ray_commands"])
    server = head[head.index("mlflow server") :]
    assert "--host $(python -c 'import ray.util; print(ray.util.get_node_ip_address())')" in server
    assert "0.0.0.0" not in head and "0.0.0.0" not in str(prepared["provider"])
    assert "--artifacts-destination" in server and "--backend-store-uri sqlite:" in server
    env = next(c for c in prepared["setup_commands"] if "MLFLOW_TRACKING_URI" in c)
    assert "${RAY_HEAD_IP:-" in env and ":5000" in env and "~/.bashrc" in env


def test_the_head_lets_as_many_trials_wait_as_the_full_cluster_runs(prepared):
    gpu = prepared["available_node_types"]["gpu_worker"]
    slots = prepared["max_workers"] * int(gpu["resources"]["GPU"] / 0.25)  # the documented share
    set_on_head = re.findall(
        r"TUNE_MAX_PENDING_TRIALS_PG=(\d+)", str(prepared["head_setup_commands"])
    )
    assert set_on_head == [str(slots)]


def test_the_preflight_reads_the_autoscaled_gpu_workers_from_it(prepared):
    shapes, unknown = launcher_node_types(prepared)
    assert not unknown
    # The head (alive anyway) and the spot type (max_workers 0) are not launchable.
    assert [s.where for s in shapes] == ["node type gpu_worker, autoscaled up to 4"]
    assert shapes[0].fits(cpus=1, gpus=0.25)
    message = no_fit_message(shapes, cpus=1, gpus=2)
    assert message == (
        "no node can ever fit a trial asking 2 GPUs and 1 CPU: the largest node has 1 GPU and "
        "4 CPUs (node type gpu_worker, autoscaled up to 4); lower --gpus-per-trial"
    )


# What Ray gives a head without an IamInstanceProfile (ray/autoscaler/_private/aws/config.py,
# DEFAULT_RAY_INSTANCE_PROFILE): EC2 and S3 full access.
RAY_HEAD_PROFILE = "ray-autoscaler-v1"


def _profile_name(node_config: dict) -> str:
    profile = node_config.get("IamInstanceProfile")
    if profile is None:
        return RAY_HEAD_PROFILE
    return profile.get("Name") or profile["Arn"].rsplit("/", 1)[-1]


def test_the_workers_have_a_role_of_their_own_not_the_heads(raw, prepared):
    types = prepared["available_node_types"]
    head = _profile_name(types[prepared["head_node_type"]]["node_config"])
    workers = {_profile_name(types[t]["node_config"]) for t in ("gpu_worker", "gpu_worker_spot")}
    assert workers == {"finetune-sweeps-worker"} and head not in workers
    raw_types = raw["available_node_types"]  # one anchor: the spot type cannot drift apart
    spot = raw_types["gpu_worker_spot"]["node_config"]["IamInstanceProfile"]
    assert spot is raw_types["gpu_worker"]["node_config"]["IamInstanceProfile"]


def _listed(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def test_the_workers_role_in_the_docs_reaches_the_storage_prefix_only():
    text = (ROOT / "docs" / "cluster.md").read_text()
    (block,) = re.findall(r"```json\n(.*?)```", text, flags=re.DOTALL)
    statements = json.loads(block)["Statement"]
    actions = {a for s in statements for a in _listed(s["Action"])}
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"}
    objects, bucket = (s for s in statements)
    assert objects["Resource"] == "arn:aws:s3:::YOUR-BUCKET/ray-results/*"
    assert bucket["Condition"]["StringLike"]["s3:prefix"] == ["ray-results", "ray-results/*"]
    assert all(s["Effect"] == "Allow" and "*" not in s["Action"] for s in statements)
    assert "role/finetune-sweeps-worker" in text and "iam:PassRole" in text


def test_every_node_is_in_the_one_security_group_made_for_it(raw, prepared):
    """Ray makes a group only for node types that name none, and opens SSH to 0.0.0.0/0 in
    every group it makes: here every type names the same one, through one anchor."""
    groups = [t["node_config"]["SecurityGroupIds"] for t in raw["available_node_types"].values()]
    assert all(g is groups[0] for g in groups) and len(groups[0]) == 1
    assert "security_group" not in prepared["provider"]  # Ray's own rules never apply


def test_ssh_is_opened_to_the_one_commented_range_only():
    text = (ROOT / "cluster.yaml").read_text()
    (cidr,) = re.findall(r"^\s*#\s+SSH_CIDR=(\S+)$", text, flags=re.MULTILINE)
    network = ipaddress.ip_network(cidr)
    assert network.prefixlen >= 8  # one range, never the whole internet (0.0.0.0/0)
    assert re.findall(r"--cidr (\S+)", text) == ['"$SSH_CIDR"']
    assert '--protocol tcp --port 22 --cidr "$SSH_CIDR"' in text


def test_rays_own_bootstrap_makes_no_security_group_for_it(prepared):
    pytest.importorskip("boto3", reason="Ray's AWS bootstrap imports boto3 (pip install boto3)")
    from ray.autoscaler._private.aws import config as aws

    assert aws.DEFAULT_RAY_INSTANCE_PROFILE == RAY_HEAD_PROFILE
    # Why the group is ours: the rule Ray puts in any group it makes.
    assert aws._create_default_ssh_inbound_rules()[0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    before = copy.deepcopy(prepared["available_node_types"])
    # Returns before any call to AWS (there are no credentials here) when every type has one.
    configured = aws._configure_security_group(copy.deepcopy(prepared))
    assert configured["available_node_types"] == before


def _docs_yaml_blocks() -> dict[str, str]:
    text = (ROOT / "docs" / "cluster.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    return {yaml.safe_load(b)["provider"]["type"]: b for b in blocks if "provider:" in b}


def test_the_on_premise_variant_in_the_docs_is_valid():
    local = yaml.safe_load(_docs_yaml_blocks()["local"])
    prepared = _validate(local)
    assert prepared["provider"]["worker_ips"], "the variant lists the worker machines"
