"""A trial's memory: Ray's memory monitor killed the trials that went past what a worker has
(issue 26), and the sweep ended on a traceback. Each check runs in a process of its own and
reads the kernel's peak of its resident memory (``VmHWM``)."""

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
GB = 1e9
LIMIT = 2 * GB  # what a trial may take: issue 26's goal for every space's smoke sweep

ONE_TRIAL = """
import json, re, sys
from pathlib import Path
import torch
from trainables.config import TrialConfig
from trainables.data import DataOptions, load_dataset
from trainables.engine import build_training_state, evaluate_test, fit
from trainables.edge.trial import copy_trained_state

torch.set_num_threads(1)
cfg = TrialConfig.from_dict(json.loads(sys.argv[1]))
data = load_dataset(cfg.dataset, DataOptions())
cpu = torch.device("cpu")
state = build_training_state(cfg, data, cpu)
for _ in fit(cfg, data, cpu, state):
    pass
evaluate_test(cfg, data, cpu, state, copy_trained_state(state))
status = Path("/proc/self/status").read_text()
peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024
print(json.dumps({"peak": peak, "train": len(data.train_y)}))
"""


def _run(script: str, *args: str, timeout: float = 300) -> dict:
    """The last line ``script`` prints, as JSON, run in a process of its own."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_triplet_svm_trial_with_batch_all_mining_stays_within_a_workers_memory():
    # The losses space's triplet-svm arm: the test split's evaluation (batches of 256, 256-d
    # embeddings, 10 classes) mined 1.4 million triplets and gathered their embeddings: 9 to
    # 11 GB. The small CNN stands in for DenseNet-121: the loss took the memory, not the net.
    config = {
        "dataset": "digits-lt",
        "backbone": "smallcnn",
        "head_hidden": [256],
        "loss": "triplet-only",
        "classifier": "svm",
        "margin": 0.5,
        "mining": "batch_all",
        "batch_size": 64,
        "max_epochs": 1,
        "role": "confirmation",
    }
    result = _run(ONE_TRIAL, json.dumps(config))
    assert result["train"] > 256  # evaluation batches as full as in the sweep
    assert result["peak"] < LIMIT, f"peak {result['peak'] / GB:.2f} GB"


TRIAL_TITLE = "ray::ImplicitFunc"  # a Ray worker's title while it holds a trial


def _high_water_mark(pid: int) -> int:
    """The process's peak resident memory; 0 once it has ended (a zombie has none)."""
    with contextlib.suppress(OSError):
        found = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
        return int(found.group(1)) * 1024 if found else 0
    return 0


def _trial_peaks(sweep: subprocess.Popen) -> dict[int, int]:
    """Each trial worker's peak resident memory while ``sweep`` runs, by pid."""
    peaks: dict[int, int] = {}
    driver = psutil.Process(sweep.pid)
    while sweep.poll() is None:
        with contextlib.suppress(psutil.Error):
            for child in driver.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if child.pid in peaks or " ".join(child.cmdline()).startswith(TRIAL_TITLE):
                        peaks[child.pid] = max(peaks.get(child.pid, 0), _high_water_mark(child.pid))
        time.sleep(0.2)
    return peaks


@pytest.mark.slow
def test_the_workers_of_a_smoke_sweep_stay_within_the_memory_a_trial_may_take(tmp_path):
    # Issue 26: the backbones space's smoke sweep (21 trials on 2 workers, each running trial
    # after trial) grew its workers by 0.1 to 0.2 GB a trial, to 2.4 GB: what earlier trials
    # had freed stayed in reference cycles and in malloc's arenas.
    command = [sys.executable, str(ROOT / "tune.py"), "--space", "backbones", "--quiet"]
    command += ["--num-samples", "2", "--max-epochs", "1"]
    output = tmp_path / "output.txt"
    with output.open("w") as out:
        # The workers import this tree too, not an installed copy of the project.
        env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(ROOT)}
        sweep = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
        try:
            peaks = _trial_peaks(sweep)
        finally:
            if sweep.poll() is None:
                sweep.kill()
    assert sweep.returncode == 0, output.read_text()[-3000:]
    assert peaks
    assert max(peaks.values()) < LIMIT, f"peaks {[round(p / GB, 2) for p in peaks.values()]} GB"
