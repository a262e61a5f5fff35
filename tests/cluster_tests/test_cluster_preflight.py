"""The checks tune.py runs before a sweep on a cluster (sweep/cluster.py): which requests fit,
the one-line refusals, and an unreachable address failing fast."""

from __future__ import annotations

import json

import pytest
import ray._private.ray_constants as ray_constants

from sweep.cluster import (
    NodeShape,
    bootstrap_host_port,
    check_reachable,
    check_tracking_store,
    check_trial_fits,
    launcher_node_types,
    no_fit_message,
    real_autoscaler_in,
)
from sweep.plan import UsageError

HEAD = NodeShape("alive node aaaa (head)", cpus=2, gpus=0)
WORKER = NodeShape("alive node bbbb", cpus=4, gpus=1)
BIG = NodeShape("node type big, autoscaled up to 2", cpus=16, gpus=4)


@pytest.mark.parametrize(
    ("cpus", "gpus", "shapes"),
    [
        (1, 0.25, [HEAD, WORKER]),  # a quarter of a GPU
        (4, 1, [HEAD, WORKER]),  # exactly one node's worth
        (2, 0, [HEAD]),  # CPU only
        (8, 4, [HEAD, WORKER, BIG]),  # only on a node type not launched yet
    ],
)
def test_requests_some_node_can_hold_pass(cpus, gpus, shapes):
    check_trial_fits(shapes, cpus=cpus, gpus=gpus)


@pytest.mark.parametrize(
    ("cpus", "gpus", "expected"),
    [
        (
            1,
            2,
            "no node can ever fit a trial asking 2 GPUs and 1 CPU: the largest node has 1 GPU "
            "and 4 CPUs (alive node bbbb); lower --gpus-per-trial",
        ),
        (
            6,
            0.5,
            "no node can ever fit a trial asking 0.5 GPU and 6 CPUs: the largest node has 1 GPU "
            "and 4 CPUs (alive node bbbb); lower --cpus-per-trial",
        ),
        (
            8,
            2,
            "no node can ever fit a trial asking 2 GPUs and 8 CPUs: the largest node has 1 GPU "
            "and 4 CPUs (alive node bbbb); lower --gpus-per-trial and --cpus-per-trial",
        ),
    ],
)
def test_a_request_no_node_can_hold_is_refused_in_one_line(cpus, gpus, expected):
    with pytest.raises(UsageError) as caught:
        check_trial_fits([HEAD, WORKER], cpus=cpus, gpus=gpus)
    assert str(caught.value) == expected


def test_gpus_and_cpus_on_different_nodes_do_not_add_up():
    cpu_box = NodeShape("alive node cccc", cpus=32, gpus=0)
    message = no_fit_message([WORKER, cpu_box], cpus=8, gpus=1)
    assert message.endswith(
        "the node with the most GPUs has 1 GPU and 4 CPUs (alive node bbbb), the one with the "
        "most CPUs 0 GPUs and 32 CPUs (alive node cccc); lower --gpus-per-trial or "
        "--cpus-per-trial"
    )


def test_unknown_autoscaler_node_types_only_warn(capsys):
    check_trial_fits([HEAD], cpus=1, gpus=1, unknown_node_types=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tune.py: warning: no node can ever fit")
    assert "unless the cluster's autoscaler launches a larger node" in err[0]


@pytest.mark.parametrize("uri", ["sqlite:////tmp/x/mlflow.db", "file:///tmp/mlruns", "mlruns"])
def test_a_local_tracking_store_is_refused_on_several_nodes(uri):
    check_tracking_store(uri, multi_node=False)
    with pytest.raises(UsageError, match="trials on other nodes cannot log to the local MLflow"):
        check_tracking_store(uri, multi_node=True)


@pytest.mark.parametrize("uri", ["http://10.0.1.5:5000", "postgresql://u:p@db:5432/mlflow"])
def test_a_tracking_server_or_database_is_fine_on_several_nodes(uri):
    check_tracking_store(uri, multi_node=True)


def _status(*type_names: str) -> str:
    report = {"active_nodes": {name: 1 for name in type_names}, "pending_launches": {}}
    return json.dumps({"autoscaler_report": report, "load_metrics_report": {}})


def test_only_a_real_autoscaler_counts_as_one():
    # `ray start` and ray.init run a read-only autoscaler naming a type after each node.
    assert not real_autoscaler_in(_status("node_" + "a" * 56, "node_" + "b" * 56))
    assert real_autoscaler_in(_status("head", "gpu_worker"))
    assert not real_autoscaler_in(None)


def test_launcher_types_without_resources_are_unknown():
    config = {
        "max_workers": 2,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {}, "node_config": {}},
            "auto": {"resources": {}, "node_config": {}, "max_workers": 2},
        },
    }
    assert launcher_node_types(config) == ([], True)


@pytest.fixture
def loopback_ray(monkeypatch):
    # As on a single-machine cluster: "127.0.0.1" stays the loopback address.
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:6379", ("127.0.0.1", 6379)),
        ("ray://127.0.0.1", ("127.0.0.1", 10001)),
        ("ray://127.0.0.1:10002", ("127.0.0.1", 10002)),
    ],
)
def test_the_address_ray_will_dial(loopback_ray, address, expected):
    assert bootstrap_host_port(address) == expected


@pytest.mark.parametrize("address", ["nohost", "127.0.0.1:port"])
def test_a_malformed_address_is_refused(loopback_ray, address):
    with pytest.raises(UsageError, match="bad --address"):
        bootstrap_host_port(address)


def test_a_closed_port_is_refused_at_once(loopback_ray, closed_port):
    with pytest.raises(UsageError) as caught:
        check_reachable(f"127.0.0.1:{closed_port}", timeout=5)
    assert str(caught.value).startswith(
        f"cannot reach the Ray cluster at 127.0.0.1:{closed_port} (--address 127.0.0.1:"
        f"{closed_port}): Connection refused; "
    )


def test_tune_py_fails_on_an_unreachable_address_within_30_s(
    tune_cli, tune_env, closed_port, tmp_path
):
    address = f"127.0.0.1:{closed_port}"
    args = ["--space", "focal", "--address", address, "--quiet"]
    result, seconds = tune_cli(args, cwd=tmp_path, env=tune_env, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert seconds < 30
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(
        f"tune.py: error: cannot reach the Ray cluster at {address} (--address {address}): "
        "Connection refused; "
    )
    assert not (tmp_path / "mlflow.db").exists()  # nothing written
