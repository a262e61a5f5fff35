"""tune.py without --address on a machine where Ray already runs: the cluster `ray start --head`
started (as on every node of `ray up cluster.yaml`) is joined, and said so in one line; one
that died without `ray stop` leaves its address file behind, and the sweep starts a Ray of its
own. Neither prints a traceback (both ended in ``ValueError: When connecting to an existing
cluster, _system_config must not be provided``). The cluster lives in a private RAY_TMPDIR,
where Ray keeps its address file, so no other test's Ray sees it."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
HEAD_CPUS = 3  # not this machine's count
SWEEP = [
    "--space", "focal", "--num-samples", "1", "--max-epochs", "1", "--confirm-seeds", "0",
    "--train-limit", "150", "--quiet",
]  # fmt: skip
OWN = "(`ray stop` it, or pass --address local, for a Ray of the sweep's own)"


@pytest.fixture
def ray_tmpdir():
    # Short: Ray's sockets live under it, and a socket's path must fit in 107 bytes.
    folder = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    try:
        yield folder
    finally:
        _end(_processes(folder), grace=5)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def head(ray_tmpdir):
    """`ray start --head` on free ports (another Ray on the machine may hold the defaults)."""
    env = {**os.environ, "RAY_TMPDIR": ray_tmpdir, "MLFLOW_TRACKING_URI": ""}
    ports = ("port", "dashboard-port", "dashboard-agent-listen-port")
    subprocess.run(
        [RAY, "start", "--head", f"--num-cpus={HEAD_CPUS}", "--include-dashboard=false"]
        + ["--disable-usage-stats", *(f"--{name}={free_port()}" for name in ports)],
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    session = Path(ray_tmpdir, "ray", "session_latest")
    node = next(session.glob("gcs_server_port_*")).name.removeprefix("gcs_server_port_")
    address_file = Path(ray_tmpdir, "ray", "ray_current_cluster")
    return SimpleNamespace(env=env, address=address_file.read_text().strip(), node=node)


def _processes(ray_tmpdir: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(ray_tmpdir in part for part in process.info["cmdline"] or ()):
            found.append(process)
    return found


def _end(processes: list[psutil.Process], grace: float) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signal.SIGTERM if grace else signal.SIGKILL)
    _, alive = psutil.wait_procs(processes, timeout=grace or 5)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


def _tune(args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def _own_lines(stderr: str) -> list[str]:
    """tune.py's lines (Ray adds a warning of its own where several Rays run on the machine)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("tune.py:")]


def _trial_nodes(folder: Path) -> set[str]:
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("focal").experiment_id])
    return {r.data.tags["ray_node_id"] for r in runs if r.data.tags.get("role") == "search"}


def test_a_sweep_joins_the_cluster_ray_start_left_running_and_says_so(head, tmp_path):
    joined = f"`ray start` made this machine part of a running Ray cluster ({head.address})"
    result = _tune(SWEEP, cwd=tmp_path, env=head.env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _own_lines(result.stderr) == [f"tune.py: warning: {joined}: the sweep runs on it {OWN}"]
    assert _trial_nodes(tmp_path) == {head.node}  # both trials ran on the cluster's node
    sized = _tune([*SWEEP, "--num-cpus", "2"], cwd=tmp_path, env=head.env)
    assert sized.returncode == 2
    assert _own_lines(sized.stderr) == [
        f"tune.py: error: --num-cpus sizes a Ray of the sweep's own, but {joined}, which the "
        "sweep would run on; leave --num-cpus out, or pass --address local (or `ray stop` it)"
    ]


def test_a_dead_cluster_s_address_file_gets_a_ray_of_the_sweep_s_own(head, ray_tmpdir, tmp_path):
    _end(_processes(ray_tmpdir), grace=0)  # killed, as by a crash: no `ray stop`
    assert Path(ray_tmpdir, "ray", "ray_current_cluster").read_text().strip() == head.address
    result = _tune(SWEEP, cwd=tmp_path, env=head.env)  # tune.py's own early Ray
    assert result.returncode == 0, result.stderr[-3000:]
    assert _own_lines(result.stderr) == []
    assert len(_trial_nodes(tmp_path)) == 1
    assert _trial_nodes(tmp_path) != {head.node}
    # The Ray started once the command line is read, of the CPUs asked for.
    one_cpu = ["--space", "focal", "--num-cpus", "1", "--gpus-per-trial", "1", "--quiet"]
    refused = _tune(one_cpu, cwd=tmp_path, env=head.env)
    assert refused.returncode == 2
    [line] = _own_lines(refused.stderr)
    assert line.startswith(
        "tune.py: error: no node can ever fit a trial asking 1 GPU and 1 CPU: the largest node "
        "has 0 GPUs and 1 CPU (alive node "
    )
