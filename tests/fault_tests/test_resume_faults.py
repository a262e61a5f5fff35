"""``tune.py --resume`` on the real command line: a sweep whose name holds a quote is found
(MLflow's filter parser raised on it: a traceback, exit 1), and where there is no store the
refusal leaves none behind (MLflow laid an empty mlflow.db before the refusal)."""

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[2]


def _tune(args: list[str], *, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), *args],
        cwd=cwd,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr.strip().splitlines()


def test_resume_with_no_store_refuses_and_leaves_none(tmp_path):
    result = _tune(["--space", "focal", "--resume"], cwd=tmp_path)
    assert result.returncode == 2
    assert _lines(result) == [
        f"tune.py: error: no MLflow store at {tmp_path / 'mlflow.db'}; nothing to resume (run "
        "this where the sweep ran, or pass the --tracking-uri it used)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_sweep_named_with_quotes_is_found_by_name(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("focal")
    name = "a'b\"c"  # both quotes: no MLflow filter string can hold it
    run = client.create_run(experiment, run_name=name, tags={"role": "sweep"}).info.run_id
    newer = client.create_run(experiment, run_name="newer", tags={"role": "sweep"}).info.run_id
    for finished in (run, newer):  # refused as finished, naming the run it found
        client.set_terminated(finished)
    found = _tune(["--space", "focal", "--resume", name], cwd=tmp_path)
    assert found.returncode == 2
    assert _lines(found) == [
        f"tune.py: error: sweep {name} (run {run}) has finished; nothing to resume"
    ]
    missing = _tune(["--space", "focal", "--resume", "x'y"], cwd=tmp_path)
    assert missing.returncode == 2
    assert _lines(missing) == [
        "tune.py: error: no sweep run with id or name \"x'y\" in experiment 'focal'; nothing to "
        "resume"
    ]
