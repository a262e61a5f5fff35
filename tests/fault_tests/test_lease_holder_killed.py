"""A sweep's lease lives with its driver's process (``sweep.lease``): while that process runs,
``tune.py --resume`` is refused in one line naming it; once it is killed (SIGKILL, no chance
to let go), the next driver takes the lease over, even before the dead one is reaped."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from sweep.lease import Holder, Lease
from trainables import contract, tracking

ROOT = Path(__file__).resolve().parents[2]
FIRST = ["--space", "focal", "--num-samples", "2", "--max-epochs", "3"]
# A driver as far as the lease goes: it takes the lease of a new sweep, beats, and waits.
HOLD = """
import sys, time
from sweep.lease import Holder, Lease
from trainables import contract, tracking
uri, run_id = sys.argv[1:]
me = Holder.me()
tracking.set_tags(uri, run_id, {contract.LEASE_TAG: me.to_tag()})
Lease(uri, run_id, me, heartbeat_s=0.2)
print("held", flush=True)
time.sleep(600)
"""


def test_a_live_drivers_lease_refuses_a_resume_and_a_killed_ones_is_taken_over(tmp_path):
    tracking.seed_local_store(tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    tags = {
        contract.ROLE_TAG: contract.SWEEP_ROLE,
        contract.ARGV_TAG: json.dumps(FIRST),
        contract.STAMP_TAG: "20261207-000000",
    }
    run = client.create_run(client.create_experiment("focal"), run_name="sweep-a", tags=tags)
    run_id = run.info.run_id
    driver = subprocess.Popen(
        [sys.executable, "-c", HOLD, uri, run_id], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert driver.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, str(ROOT / "tune.py"), *FIRST, "--resume", "--tracking-uri", uri],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "MLFLOW_TRACKING_URI": ""},
            timeout=300,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        (line,) = second.stderr.strip().splitlines()
        assert line.startswith(
            f"tune.py: error: sweep sweep-a (run {run_id}) is driven by pid {driver.pid} on "
            f"host {socket.gethostname()} (heartbeat "
        )
        assert Holder.from_tags(client.get_run(run_id).data.tags).pid == driver.pid  # as it was
        os.kill(driver.pid, signal.SIGKILL)
        _wait_until(lambda: _zombie(driver.pid))  # killed, not yet reaped by its parent
        taken = Lease.take(uri, run_id)
    finally:
        driver.kill()
        driver.wait()
    holder = Holder.from_tags(client.get_run(run_id).data.tags)
    assert (holder.pid, holder.token) == (os.getpid(), taken.holder.token)
    taken.release()


def _wait_until(ready, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, "never happened"
        time.sleep(0.05)


def _zombie(pid: int) -> bool:
    import psutil

    return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
