"""A multi-node Ray cluster and an MLflow server on this machine, on 127.0.0.1 only, each torn
down by a finalizer however the tests end.

The cluster is three raylets (``ray.cluster_utils.Cluster``): a head without GPUs and two
workers advertising simulated GPUs; torch sees no CUDA and trains on the CPU. Ray binds to the
machine's network address unless told it is a single-machine cluster
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the loopback address for every node). A private
``RAY_TMPDIR`` keeps this cluster out of sight of other Ray users of the machine (a bare
``ray.init()`` joins the cluster recorded under the temp dir).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import mlflow_server
from tests.mlflow_server import free_port

ROOT = Path(__file__).resolve().parents[2]
WORKER_GPUS = (2, 1)  # two worker nodes, unequal so each node's own limit is tested
WORKER_CPUS = 4  # more than GPUs: the GPUs, not the CPUs, bound the trials per node


@dataclass(frozen=True)
class Stack:
    address: str
    tracking_uri: str
    artifacts: Path
    gpus_by_node: dict[str, float]  # node id -> GPUs, every node of the cluster
    env: dict[str, str]  # for a tune.py subprocess that joins the cluster


def loopback_env(ray_tmpdir: str) -> dict[str, str]:
    env = {
        **os.environ,
        "RAY_TMPDIR": ray_tmpdir,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "MLFLOW_TRACKING_URI": "",
        "RAY_DEDUP_LOGS": "1",
    }
    env.pop("TUNE_MAX_PENDING_TRIALS_PG", None)  # tune.py's own choice, whatever ran before
    return env


def run_tune(args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300):
    """``tune.py ARGS`` in a subprocess; the result and the seconds it took."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return result, time.monotonic() - started


@pytest.fixture(scope="session")
def tune_cli():
    return run_tune


@pytest.fixture
def closed_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def short_tmp():
    # Ray's socket paths live under RAY_TMPDIR and must stay short (pytest's tmp_path is long).
    folder = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield folder
    subprocess.run(["rm", "-rf", folder], check=False)


@pytest.fixture(scope="module")
def tune_env(short_tmp) -> dict[str, str]:
    return loopback_env(short_tmp)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, short_tmp):
    import ray
    import ray._private.ray_constants as ray_constants
    from ray.cluster_utils import Cluster

    server = mlflow_server.start(tmp_path_factory.mktemp("mlflow-server"), workers=2)
    patch = pytest.MonkeyPatch()
    cluster = None
    try:
        patch.setenv("RAY_TMPDIR", short_tmp)
        patch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        patch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # read at import otherwise
        patch.delenv("CUDA_VISIBLE_DEVICES", raising=False)  # "" would hide the simulated GPUs
        logging.getLogger("ray").setLevel(logging.WARNING)
        node = {"node_ip_address": "127.0.0.1", "include_log_monitor": False}
        cluster = Cluster(
            initialize_head=True,
            head_node_args={**node, "num_cpus": 1, "num_gpus": 0, "include_dashboard": False},
        )
        for gpus in WORKER_GPUS:
            cluster.add_node(**node, num_cpus=WORKER_CPUS, num_gpus=gpus)
        cluster.wait_for_nodes()
        gpus_by_node = {
            n["NodeID"]: n["Resources"].get("GPU", 0.0)
            for n in cluster.global_state.node_table()
            if n["Alive"]
        }
        mlflow_server.wait_until_up(server)
        yield Stack(
            address=cluster.address,
            tracking_uri=server.url,
            artifacts=server.artifacts,
            gpus_by_node=gpus_by_node,
            env=loopback_env(short_tmp),
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        mlflow_server.stop(server)
        patch.undo()
