"""One real, tiny sweep on local Ray, run once per test session and shared by every test that
reads what a finished sweep leaves behind (``sweep``); ``in_tmp`` for tests that run
``tune.main`` in this process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
ARMS = ("focal", "ce")
SEEDS = (1, 2)  # the confirmation seeds: those after the search's (--seed 0)
OPTUNA_DB = "optuna.db"  # --optuna-storage: the arms' studies in a database too


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """The folder it ran in, a client of its store, its runs, and what it printed."""
    folder = tmp_path_factory.mktemp("sweep")
    command = [
        sys.executable,
        str(ROOT / "tune.py"),
        "--space",
        "focal",
        "--num-samples",
        "2",
        "--max-epochs",
        "2",
        "--grace-period",
        "1",
        "--confirm-seeds",
        str(len(SEEDS)),
        "--num-cpus",
        "2",
        "--optuna-storage",
        f"sqlite:///{folder / OPTUNA_DB}",
        "--quiet",
    ]
    result = subprocess.run(
        command,
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("focal")
    runs = client.search_runs([experiment.experiment_id])
    return folder, client, runs, result.stdout


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A fresh working folder and the default MLflow store (a file in it)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path
