"""A sweep survives its driver: killed with SIGKILL in either phase, or stopped with Ctrl-C,
``--resume`` continues it into the same parent run, one run per trial, nothing retrained."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.sweep_processes import finished_runs, reap, start_sweep

pytestmark = pytest.mark.slow

ARGS = [
    "--space",
    "focal",
    "--num-samples",
    "2",
    "--max-epochs",
    "3",
    "--grace-period",
    "1",
    "--confirm-seeds",
    "2",
    "--train-limit",
    "150",
    "--num-cpus",
    "2",
    "--quiet",
]
SEARCH_TRIALS, CONFIRMATION_TRIALS = 2 * 2, 2 * 2


def _env() -> dict:
    return {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONUNBUFFERED": "1"}


def _signal_when(process: subprocess.Popen, folder: Path, role: str, count: int, sig) -> None:
    deadline = time.monotonic() + 300
    while finished_runs(folder, role) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the sweep never got there"
        time.sleep(0.2)
    if sig == signal.SIGINT:
        os.killpg(process.pid, sig)  # what a terminal does on Ctrl-C
    else:
        os.kill(process.pid, sig)  # the driver alone dies; Ray is left to notice


def _runs(folder: Path):
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("focal")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "sweep"]
    return client, parents, [r for r in runs if r.data.tags.get("role") != "sweep"]


def _snapshot(folder: Path) -> dict[str, int]:
    """Finished runs and when they ended."""
    _, _, children = _runs(folder)
    return {r.info.run_id: r.info.end_time for r in children if r.info.status == "FINISHED"}


def _check_complete(folder: Path, finished_before: dict[str, int]) -> None:
    client, parents, children = _runs(folder)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    # A trial started in the seconds between Ray's last save of its state and a kill is not
    # in that state; its run is given to the trial that takes its place (``sweep.ledger``),
    # so every trial, lost or not, ends with its result in one run.
    roles = sorted(r.data.tags["role"] for r in children)
    assert roles == ["confirmation"] * CONFIRMATION_TRIALS + ["search"] * SEARCH_TRIALS
    assert len({r.data.tags["ray_trial_id"] for r in children}) == len(children)
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags["outcome"] for r in children} <= {"completed", "stopped_early"}
    for run in children:
        # Finished before a kill: not run again.
        if run.info.run_id in finished_before:
            assert run.info.end_time == finished_before[run.info.run_id]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")]
        # Continued from the checkpoint the saved experiment state names: every epoch, and at
        # most the two since that state was saved (Ray saves it every second checkpoint) twice.
        assert sorted(set(steps)) == list(range(1, max(steps) + 1))
        assert len(steps) - len(set(steps)) <= 2


def test_sigkill_in_either_phase_then_resume_finishes_the_same_sweep(tmp_path):
    first = start_sweep(tmp_path, ARGS)
    _signal_when(first, tmp_path, "search", 1, signal.SIGKILL)
    reap(first)
    _, parents, _ = _runs(tmp_path)
    assert [p.info.status for p in parents] == ["RUNNING"]  # what a dead driver leaves
    before = _snapshot(tmp_path)

    second = start_sweep(tmp_path, [*ARGS, "--resume"])
    _signal_when(second, tmp_path, "confirmation", 1, signal.SIGKILL)
    reap(second)
    before.update(_snapshot(tmp_path))

    started = time.monotonic()
    code, out, err = reap(start_sweep(tmp_path, [*ARGS, "--resume"]))
    assert code == 0, f"{out[-2000:]}\n{err[-3000:]}"
    print(f"resume to the end: {time.monotonic() - started:.1f} s")
    assert "confirmation over 2 seeds" in out
    _check_complete(tmp_path, before)


def test_ctrl_c_prints_the_resume_command_and_a_finished_sweep_refuses_another(tmp_path):
    first = start_sweep(tmp_path, ARGS)
    _signal_when(first, tmp_path, "search", 1, signal.SIGINT)
    code, out, err = reap(first)
    assert code == 130, err[-3000:]
    _, parents, children = _runs(tmp_path)
    parent = parents[0].info.run_id
    assert parents[0].info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for r in children}
    last = out.strip().splitlines()[-1]
    assert last.startswith("python ") and last.endswith(f"--resume {parent}")
    assert "Traceback" not in err
    before = _snapshot(tmp_path)

    command = last.split()[1:]  # the printed command, run as printed
    code, out, err = reap(
        subprocess.Popen(
            [sys.executable, *command],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
            start_new_session=True,
        )
    )
    assert code == 0, err[-3000:]
    _check_complete(tmp_path, before)

    again = subprocess.run(
        [sys.executable, *command], cwd=tmp_path, capture_output=True, text=True, env=_env()
    )
    assert again.returncode == 2
    assert again.stderr.strip() == (
        f"tune.py: error: sweep {parents[0].info.run_name} (run {parent}) has finished; "
        "nothing to resume"
    )
