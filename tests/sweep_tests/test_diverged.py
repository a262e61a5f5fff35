"""A pinned absurd learning rate: every trial diverges, is recorded as such, and none is
retried or ends in a traceback."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_diverged_trials_are_findings_not_errors(tmp_path):
    command = [
        *(sys.executable, str(ROOT / "tune.py"), "--space", "focal", "--set", "lr=1e12"),
        *("--num-samples", "2", "--max-epochs", "2", "--confirm-seeds", "0"),
        *("--train-limit", "150", "--max-failures", "2", "--num-cpus", "2", "--quiet"),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 1, result.stderr[-3000:]  # no arm has a result
    assert "Traceback" not in result.stderr and "Error" not in result.stderr
    assert result.stdout.count("2 search trials, 0 stopped early by ASHA, 2 diverged") == 2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("focal")
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'search'")
    assert len(runs) == 4  # one run per trial: nothing was retried
    for run in runs:
        assert run.info.status == "FAILED"
        assert run.data.tags["outcome"] == "diverged"
        assert run.data.tags["diverged_epoch"] in {"1", "2"}
        # A batch's loss, an epoch's loss, or the weights and buffers the next epoch starts from.
        assert re.match(
            r"(training loss is .* at batch \d+|\w+_loss is \S+ at the end of the epoch|"
            r"(model|criterion)\.\S+ holds a NaN or an infinity at the end of the epoch)$",
            run.data.tags["diverged_reason"],
        ), run.data.tags["diverged_reason"]
        assert run.data.params["lr"] == "1000000000000.0"
    trials = list((tmp_path / "ray_results").glob("focal-[0-9]*/trial_*"))
    assert len(trials) == 4 and not any((t / "error.txt").exists() for t in trials)
