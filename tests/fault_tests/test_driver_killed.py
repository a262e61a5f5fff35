"""A driver killed with SIGKILL while Ray's saved state lags behind the tracking store, and a
second driver started while the first lives: one MLflow run per trial, nothing left
running, each arm's budget exact, and one driver at a time: the second is refused in one
line naming the first, and once the first is killed (even before it is reaped) the next
takes over (``sweep.ledger``, ``sweep.lease``)."""

import collections
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from tests.sweep_processes import finished_runs, reap, start_sweep

PER_ARM, SEEDS = 2, (1, 2)
ARGS = [
    "--space", "focal", "--num-samples", str(PER_ARM), "--max-epochs", "3",
    "--grace-period", "1", "--confirm-seeds", str(len(SEEDS)), "--train-limit", "150",
    "--num-cpus", "2", "--quiet",
]  # fmt: skip
# Ray Tune's saved experiment: its trials, searcher, search generator and callbacks.
STATE_FILES = ("experiment_state-*.json", "searcher-state-*.pkl", "search_gen_state-*.json",
               "callback-states-*.pkl")  # fmt: skip


def _wait(process: subprocess.Popen, ready, ended: bool = False) -> None:
    """Until ``ready()``, while ``process`` runs (unless ``ended``: it has been killed)."""
    deadline = time.monotonic() + 300
    while not ready():
        assert ended or process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the sweep never got there"
        time.sleep(0.1)


def _saved_state(folder: Path) -> list[Path]:
    """Ray's first whole save of the experiment's state, once it has written one."""
    found = [f for pattern in STATE_FILES for f in folder.glob(f"ray_results/*/{pattern}")]
    if len(found) < len(STATE_FILES) or any(f.stat().st_size == 0 for f in found):
        return []
    return found


def _runs(folder: Path):
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("focal").experiment_id])
    return [r for r in runs if r.data.tags["role"] == "sweep"], [
        r for r in runs if r.data.tags["role"] != "sweep"
    ]


def _refused_while_alive(folder: Path, driver: subprocess.Popen) -> None:
    code, out, err = reap(start_sweep(folder, [*ARGS, "--resume"]))
    assert code == 2, f"{out[-2000:]}\n{err[-3000:]}"
    (line,) = err.strip().splitlines()
    assert line.startswith("tune.py: error: sweep ")
    assert f"is driven by pid {driver.pid} on host {socket.gethostname()} (heartbeat " in line


@pytest.mark.slow
def test_a_resumed_sweep_counts_every_run_the_store_has_once_and_has_one_driver(tmp_path):
    first = start_sweep(tmp_path, [*ARGS])
    _wait(first, lambda: _saved_state(tmp_path))
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    saved = [shutil.copy2(f, snapshot / f.name) for f in _saved_state(tmp_path)]
    _refused_while_alive(tmp_path, first)
    # Killed once some confirmation run has finished; then Ray's state is put back to its
    # first save, as if every save since had been lost: the store knows every trial since.
    _wait(first, lambda: finished_runs(tmp_path, "confirmation") >= 1)
    os.kill(first.pid, signal.SIGKILL)
    os.killpg(first.pid, signal.SIGKILL)  # what it left of Ray; the driver is not reaped yet
    folder = next((tmp_path / "ray_results").glob("*/experiment_state-*.json")).parent
    for f in saved:
        shutil.copy2(f, folder / Path(f).name)
    _, before = _runs(tmp_path)
    ended = {r.info.run_id: r.info.end_time for r in before if r.info.status == "FINISHED"}
    # A dead driver its parent has not waited for is a zombie, and holds no lease.
    _wait(first, lambda: psutil.Process(first.pid).status() == psutil.STATUS_ZOMBIE, ended=True)
    code, out, err = reap(start_sweep(tmp_path, [*ARGS, "--resume"]))
    first.communicate()
    assert code == 0, f"{out[-2000:]}\n{err[-3000:]}"
    # The summary counts from Ray's trials: the lost ones are back among them, once each.
    assert out.count(f": {PER_ARM} search trials,") == 2
    assert out.count(f"confirmation over {len(SEEDS)} seeds:") == 2
    parents, children = _runs(tmp_path)
    assert [p.info.status for p in parents] == ["FINISHED"]
    assert "sweep.driver" not in parents[0].data.tags  # released
    assert {r.info.status for r in children} == {"FINISHED"}
    assert len({r.data.tags["ray_trial_id"] for r in children}) == len(children)
    kinds = collections.Counter((r.data.tags["arm"], r.data.tags["role"]) for r in children)
    assert kinds == {
        (arm, role): count
        for arm in ("focal", "ce")
        for role, count in (("search", PER_ARM), ("confirmation", len(SEEDS)))
    }
    seeds = collections.Counter(
        (r.data.tags["arm"], r.data.tags["seed"])
        for r in children
        if r.data.tags["role"] == "confirmation"
    )
    assert set(seeds.values()) == {1}
    for run in children:  # a run that had finished was not trained again
        if run.info.run_id in ended:
            assert run.info.end_time == ended[run.info.run_id]
    searched = [r for r in children if r.data.tags["role"] == "search"]
    assert all(" search #" in r.info.run_name for r in searched)  # in its arm's study
    print(f"finished before the kill: {len(ended)} of {len(children)} runs")
