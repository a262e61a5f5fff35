"""Preflight checks for a sweep on a Ray cluster, run by ``sweep.runner.start_ray`` before
anything is written to MLflow. Each failed check raises ``UsageError``: one line, exit status 2.

- Before ``ray.init``: the address answers, and as a Ray cluster does (Ray itself retries an
  unreachable or wrong address for minutes).
- After it: some node can ever fit one trial's CPUs and GPUs, counting the nodes alive now and
  the node types the autoscaler may still launch (a cluster can start with no GPU worker), and
  the MLflow store is one that trials on other nodes can reach.

Running on a cluster: docs/cluster.md.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sweep.plan import SweepPlan, UsageError
from sweep.ray_address import gcs_reply, speaks_grpc

CONNECT_TIMEOUT_S = 10.0
RAY_CLIENT_PORT = 10001
# Written by `ray up` on the head node, where `ray submit` runs tune.py; Ray's autoscaler
# launches node types from it. Ray 2.60 exposes them nowhere else unless a platform reports
# them to the GCS (``ray._private.state.state.get_cluster_config()``).
AUTOSCALER_CONFIG = "~/ray_bootstrap_config.yaml"
_SLACK = 1e-6  # Ray keeps resources to 4 decimals


@dataclass(frozen=True)
class NodeShape:
    """What one node offers a trial: an alive node, or a node type the autoscaler can launch."""

    where: str
    cpus: float
    gpus: float

    def fits(self, *, cpus: float, gpus: float) -> bool:
        return self.cpus + _SLACK >= cpus and self.gpus + _SLACK >= gpus


def check_reachable(address: str, *, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Within ``timeout``, open a TCP connection to the address ``ray.init`` will dial and see
    a gRPC server answer there, as Ray's GCS does (not, say, the dashboard's HTTP port)."""
    if address == "local":
        return
    host, port = bootstrap_host_port(address)
    try:
        reply = gcs_reply(host, port, timeout=timeout)
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise UsageError(
            f"cannot reach the Ray cluster at {host}:{port} (--address {address}): {reason}; "
            "is it running (`ray status` on its head node) and is its port open to this machine?"
        ) from None
    if not speaks_grpc(reply):
        raise UsageError(
            f"{host}:{port} (--address {address}) answers, but not as a Ray cluster: pass the "
            "head's GCS port (6379 unless `ray start --port` chose another; 8265 is the "
            "dashboard), or auto on the head node"
        )


def bootstrap_host_port(address: str) -> tuple[str, int]:
    """Host and port of the GCS (or Ray Client server) that ``address`` stands for, resolved as
    Ray resolves it: ``auto`` reads ``RAY_ADDRESS`` or the cluster started on this machine."""
    from ray._private.services import canonicalize_bootstrap_address, parse_address

    if address.startswith("ray://"):
        target = address.removeprefix("ray://").split("/", 1)[0]
        if ":" not in target.rsplit("]", 1)[-1]:
            target = f"{target}:{RAY_CLIENT_PORT}"
    else:
        try:
            target = canonicalize_bootstrap_address(address)
        except ConnectionError:
            raise UsageError(
                f"--address {address}: no running Ray cluster found on this machine; start one "
                "(`ray start --head`, or `ray up cluster.yaml` and `ray submit`) or pass host:port"
            ) from None
        except ValueError:
            target = None
    parsed = parse_address(target) if target else None
    if parsed is None or not parsed[1].isdigit():
        raise UsageError(f"bad --address {address!r}; accepted: auto, host:port, ray://host:port")
    return parsed[0], int(parsed[1])


def check_cluster(plan: SweepPlan, *, autoscaler_config: str | Path = AUTOSCALER_CONFIG) -> None:
    """After ``ray.init``: refuse a sweep that the cluster can never run."""
    alive = alive_node_shapes()
    if _ray_client():  # a ray:// driver cannot read the GCS: node types unknown
        launchable, unknown = [], True
    else:
        launchable, unknown = autoscaler_node_types(autoscaler_config)
        unknown = unknown or (not launchable and autoscaler_adds_nodes())
    check_trial_fits(
        [*alive, *launchable],
        cpus=plan.cpus_per_trial,
        gpus=plan.gpus_per_trial,
        unknown_node_types=unknown,
    )
    check_tracking_store(
        plan.tracking_uri, multi_node=len(alive) > 1 or bool(launchable) or unknown
    )


def check_trial_fits(
    shapes: list[NodeShape], *, cpus: float, gpus: float, unknown_node_types: bool = False
) -> None:
    """Raise unless one node can hold a whole trial: Ray never splits a trial across nodes. When
    the autoscaler may launch node types not visible here, only warn: trials may wait forever."""
    if any(shape.fits(cpus=cpus, gpus=gpus) for shape in shapes):
        return
    message = no_fit_message(shapes, cpus=cpus, gpus=gpus)
    if not unknown_node_types:
        raise UsageError(message)
    print(
        f"tune.py: warning: {message}, unless the cluster's autoscaler launches a larger node "
        "(its node types are not visible from here); until then trials wait",
        file=sys.stderr,
        flush=True,
    )


def no_fit_message(shapes: list[NodeShape], *, cpus: float, gpus: float) -> str:
    ask = f"{_amount(gpus, 'GPU')} and {_amount(cpus, 'CPU')}"
    if not shapes:
        return f"no node can ever fit a trial asking {ask}: the cluster has no node"
    most_gpus = max(shapes, key=lambda s: (s.gpus, s.cpus))
    most_cpus = max(shapes, key=lambda s: (s.cpus, s.gpus))
    gpus_short = most_gpus.gpus + _SLACK < gpus
    cpus_short = most_cpus.cpus + _SLACK < cpus
    if gpus_short or cpus_short:
        largest = most_gpus if gpus_short else most_cpus
        flags = " and ".join(
            flag
            for flag, short in (("--gpus-per-trial", gpus_short), ("--cpus-per-trial", cpus_short))
            if short
        )
        return (
            f"no node can ever fit a trial asking {ask}: the largest node has {_offer(largest)}; "
            f"lower {flags}"
        )
    return (
        f"no node can ever fit a trial asking {ask}: the node with the most GPUs has "
        f"{_offer(most_gpus)}, the one with the most CPUs {_offer(most_cpus)}; "
        "lower --gpus-per-trial or --cpus-per-trial"
    )


def check_tracking_store(uri: str, *, multi_node: bool) -> None:
    """A local store (an SQLite file, a folder) is on the driver's disk only: trials on other
    nodes would write to a copy on their own disk, lost to the sweep."""
    if multi_node and urlparse(uri).scheme in {"", "file", "sqlite"}:
        raise UsageError(
            f"trials on other nodes cannot log to the local MLflow store {uri}; pass "
            "--tracking-uri http://HOST:5000 (or set MLFLOW_TRACKING_URI) for a tracking server "
            "every node reaches: cluster.yaml starts one on the head node"
        )


def alive_node_shapes() -> list[NodeShape]:
    import ray

    shapes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        resources = node.get("Resources") or {}
        head = " (head)" if "node:__internal_head__" in resources else ""
        shapes.append(
            NodeShape(
                f"alive node {node['NodeID'][:8]} at {node.get('NodeManagerAddress', '?')}{head}",
                float(resources.get("CPU", 0)),
                float(resources.get("GPU", 0)),
            )
        )
    return shapes


def autoscaler_node_types(config_file: str | Path) -> tuple[list[NodeShape], bool]:
    """Worker node types the autoscaler may launch, from the GCS's cluster config (reported by
    some platforms) and from the `ray up` config on this node. The flag says some type's
    resources are unknown (empty in the config)."""
    gcs = _gcs_node_types()
    path = Path(config_file).expanduser()
    launcher: tuple[list[NodeShape], bool] = ([], False)
    if path.is_file():
        import yaml

        launcher = launcher_node_types(yaml.safe_load(path.read_text()) or {})
    return [*gcs, *launcher[0]], launcher[1]


def launcher_node_types(config: dict[str, Any]) -> tuple[list[NodeShape], bool]:
    """The worker node types of a cluster-launcher config (``cluster.yaml``) that the
    autoscaler may launch: those allowed at least one node. The head is alive already."""
    shapes, unknown = [], False
    cluster_max = config.get("max_workers", 0)
    for name, spec in (config.get("available_node_types") or {}).items():
        count = min(spec.get("max_workers", cluster_max), cluster_max)
        if name == config.get("head_node_type") or count < 1:
            continue
        resources = spec.get("resources") or {}
        if "CPU" not in resources and "GPU" not in resources:
            unknown = True  # left to Ray's detection, which this config does not show
            continue
        shapes.append(
            NodeShape(
                f"node type {name}, autoscaled up to {count}",
                float(resources.get("CPU", 0)),
                float(resources.get("GPU", 0)),
            )
        )
    return shapes, unknown


def _gcs_node_types() -> list[NodeShape]:
    import ray._private.state

    config = ray._private.state.state.get_cluster_config()
    if config is None:
        return []
    shapes = []
    for group in config.node_group_configs:
        if group.max_count == 0:
            continue
        count = "unlimited" if group.max_count < 0 else group.max_count
        shapes.append(
            NodeShape(
                f"node type {group.name or '?'}, autoscaled up to {count}",
                float(group.resources.get("CPU", 0)),
                float(group.resources.get("GPU", 0)),
            )
        )
    return shapes


def autoscaler_adds_nodes() -> bool:
    """Whether an autoscaler that launches nodes runs: not the read-only one that `ray start`
    and ``ray.init`` run, which names each node type after an alive node (``node_<id>``)."""
    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    if is_autoscaler_v2():
        return True
    return real_autoscaler_in(_internal_kv_get(DEBUG_AUTOSCALING_STATUS))


def real_autoscaler_in(status: bytes | str | None) -> bool:
    """Reads the autoscaler v1 status that the monitor writes to the GCS every few seconds."""
    if not status:
        return False
    report = json.loads(status).get("autoscaler_report") or {}
    types = {
        *(report.get("active_nodes") or {}),
        *(report.get("pending_launches") or {}),
        *(report.get("node_type_mapping") or {}).values(),
    }
    return any(not name.startswith("node_") for name in types)


def _ray_client() -> bool:
    from ray.util.client import ray as client

    return client.is_connected()


def _offer(shape: NodeShape) -> str:
    return f"{_amount(shape.gpus, 'GPU')} and {_amount(shape.cpus, 'CPU')} ({shape.where})"


def _amount(value: float, unit: str) -> str:
    return f"{value:g} {unit}" + ("" if 0 < value <= 1 else "s")
