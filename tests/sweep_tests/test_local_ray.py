"""tune.py's early local Ray (sweep/local_ray.py): which command lines start one, that Tune's
trials take the workers it started with the trial's modules already imported, that a guess
the whole command line contradicts is shut down, and that bad input leaves no Ray behind."""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from sweep.local_ray import (
    WORKER_PRELOAD,
    LocalRay,
    LocalRayOptions,
    options_from_argv,
)

ROOT = Path(__file__).resolve().parents[2]
RAY_SERVICES = ("raylet", "gcs_server")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--space", "focal"], LocalRayOptions()),
        (["--space", "focal", "--num-cpus", "3", "--verbose"], LocalRayOptions(3, True)),
        (["--num-cpus=2", "--set", "lr=0.1"], LocalRayOptions(2, False)),
        (["--space", "focal", "--address", "auto"], None),
        (["--space", "focal", "--resume"], None),
        (["--resume", "sweep-run"], None),
        (["--help"], None),
        (["-h"], None),
        (["--list-spaces"], None),
        (["--list-backbones"], None),
        (["--num-cpus", "two"], None),
        (["--num-cpus", "0"], None),
        (["--space", "focal", "--num-cpus"], None),
        # Not every worker Ray starts would run a trial at once: no warm start.
        (["--num-cpus", "4", "--cpus-per-trial", "2"], None),
        (["--num-cpus", "4", "--gpus-per-trial", "0.5"], None),
        (["--num-cpus", "4", "--max-concurrent", "1"], None),
        (["--num-cpus", "4", "--max-concurrent", "4"], LocalRayOptions(4, False)),
        (["--num-cpus", "4", "--max-concurrent", "16"], LocalRayOptions(4, False)),
        (["--num-cpus", "64"], None),
        (["--num-cpus", "9"], None),
        # Fewer search trials than the warm workers Ray would start (one per CPU).
        (["--num-samples", "1"], LocalRayOptions()),  # 2 trials, 2 CPUs
        (["--num-cpus", "4", "--num-samples", "1"], None),
        (["--num-cpus", "4", "--num-samples", "2", "--arms", "focal"], None),
        (["--num-cpus", "4", "--num-samples", "2", "--arms", "focal,ce"], LocalRayOptions(4)),
        (["--num-cpus", "8"], LocalRayOptions(8, False)),
    ],
)
def test_which_command_lines_start_a_local_ray_early(argv, expected, capsys, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # a small machine, whatever runs this
    assert options_from_argv(argv) == expected
    assert capsys.readouterr() == ("", "")  # the full parser says what is wrong


@pytest.mark.parametrize(
    ("changes", "suits"),
    [
        ({}, True),
        ({"num_cpus": None}, False),
        ({"verbose": True}, False),
        ({"address": "auto"}, False),
        ({"cpus_per_trial": 2.0}, False),  # e.g. an abbreviated option the guess missed
        ({"gpus_per_trial": 1.0}, False),
        ({"max_concurrent": 1}, False),
    ],
)
def test_the_early_ray_suits_only_the_plan_it_guessed(changes, suits):
    fields = {"address": None, "num_cpus": 2, "verbose": False, "cpus_per_trial": 1.0}
    fields |= {"gpus_per_trial": 0.0, "max_concurrent": 0}
    plan = SimpleNamespace(**{**fields, **changes})
    early = LocalRay(LocalRayOptions(num_cpus=2, verbose=False))  # not started
    assert early.suits(plan) is suits


def test_a_guess_the_command_line_contradicts_is_shut_down(monkeypatch):
    import ray

    from sweep import cluster, ray_session

    class Guess:
        closed = False

        def suits(self, plan):
            return False

        def close(self):
            self.closed = True

    plan = type("Plan", (), {"num_cpus": 3, "verbose": False, "address": None})()
    guess = Guess()
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # then no Ray of its own
    monkeypatch.setattr(cluster, "check_cluster", lambda plan: None)
    assert ray_session.start_ray(plan, guess) is False
    assert guess.closed


GPU_PROBE = """
import importlib, json
import torch, torch.cuda

asked = []  # each way torch counts or opens the GPUs, recorded instead of done


def recorder(name):
    def record(*args, **kwargs):
        asked.append(name)
        return 0

    return record


torch._C._cuda_getDeviceCount = recorder("_cuda_getDeviceCount")
torch.cuda._device_count_nvml = recorder("_device_count_nvml")
torch.cuda._lazy_init = recorder("_lazy_init")
for name in MODULES:
    importlib.import_module(name)
print(json.dumps(asked))
"""


def test_the_preloaded_modules_touch_no_gpu():
    """Ray sets a trial's CUDA_VISIBLE_DEVICES when the trial takes the worker, after the
    preload: the preload must not have counted or opened the GPUs already."""
    assert _last_json_line(GPU_PROBE.replace("MODULES", repr(list(WORKER_PRELOAD)))) == []
    # The probe sees a module that does count them.
    probe = GPU_PROBE.replace("MODULES", "[]").replace(
        "print(json.dumps(asked))", "torch.cuda.is_available()\nprint(json.dumps(asked))"
    )
    assert _last_json_line(probe) != []


def _last_json_line(script: str, cwd: Path | None = None):
    """Run ``script`` in a fresh Python with this repository on its path; its last line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_AIR_NEW_OUTPUT": "0"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


WARM_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import psutil
    from sweep.local_ray import LocalRay, LocalRayOptions, let_trials_take_warm_workers

    early = LocalRay.start(LocalRayOptions(num_cpus=2))
    early.take()
    import ray
    from ray import tune

    node = ray._private.worker._global_node
    services = [p.process.pid for ps in node.all_processes.values() for p in ps]
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    before_fit = {p.pid for p in raylet.children()}
    taken = let_trials_take_warm_workers()

    def trainable(config):
        loaded = [m in sys.modules for m in ("trainables.edge.trial", "torch._dynamo")]
        tune.report({"pid": os.getpid(), "loaded": int(all(loaded))})

    grid = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"i": tune.grid_search([0, 1])},
        run_config=tune.RunConfig(storage_path=os.path.abspath("results"), verbose=0),
    ).fit()
    trials = [(r.metrics["pid"], r.metrics["loaded"]) for r in grid]
    early.close()

    def alive(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    print(json.dumps({
        "taken": taken,
        "trials": trials,
        "prestarted": sorted(before_fit),
        "services_alive": [p for p in services if alive(p)],
        "up": ray.is_initialized(),
    }))
    """
)


def test_trials_take_the_workers_started_with_ray_their_modules_imported(tmp_path):
    report = _last_json_line(WARM_SCRIPT, cwd=tmp_path)
    assert report["taken"] is True
    assert len(report["trials"]) == 2
    # Each trial ran in a worker Ray had started before the Tuner did, with the trial's
    # modules imported before it began.
    assert all(pid in report["prestarted"] for pid, _ in report["trials"]), report
    assert all(loaded == 1 for _, loaded in report["trials"])
    assert report["services_alive"] == [] and report["up"] is False


def _ray_services_since(started: float) -> list[int]:
    found = []
    for process in psutil.process_iter(["name", "create_time", "status"]):
        info = process.info
        if info["status"] == psutil.STATUS_ZOMBIE or info["create_time"] < started - 1:
            continue
        if any(name in (info["name"] or "") for name in RAY_SERVICES):
            found.append(process.pid)
    return found


def test_bad_input_after_an_early_start_is_one_line_and_leaves_no_ray(tmp_path):
    started = time.time()
    result = subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), "--space", "focal", "--dataset", "nosuch"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    seconds = time.time() - started
    assert result.returncode == 2
    assert result.stderr.startswith("tune.py: error: unknown dataset 'nosuch'")
    assert result.stderr.count("\n") == 1, result.stderr
    assert list(tmp_path.iterdir()) == []
    # Not seconds of waiting for Ray to start and stop after the error line (measured: the
    # command took 6.7 s so, 1.7 s without an early Ray; 2.4 s now); its processes end with it.
    assert seconds < 5, seconds
    deadline = time.monotonic() + 10
    while _ray_services_since(started) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ray_services_since(started) == []


def test_a_sweep_on_the_early_ray_ends_it(tmp_path):
    """A whole (tiny) sweep through tune.py's early path: it runs, and once the command has
    returned no Ray service it started is left."""
    started = time.time()
    tiny = ["--num-samples", "1", "--max-epochs", "1", "--confirm-seeds", "0", "--quiet"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), "--space", "focal", "--num-cpus", "2", *tiny],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": ""},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loss=focal: 1 search trial," in result.stdout
    assert _ray_services_since(started) == []


def test_urllib3s_socks_notice_stays_silent_whatever_thread_imports_it():
    """requests silences it when imported, but a thread's ``catch_warnings`` can undo that
    while the early Ray imports requests beside the main thread: the notice then came before
    a bad command line's one line. ``quiet_libraries`` silences it before Ray's thread starts."""
    script = (
        "from sweep.console import quiet_libraries\n"
        "quiet_libraries(False)\n"
        "try:\n"
        "    import urllib3.contrib.socks\n"  # what requests imports, without its filter
        "except ImportError:\n"
        "    pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert result.returncode == 0 and result.stderr == ""
