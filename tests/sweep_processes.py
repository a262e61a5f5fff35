"""A sweep as a user's process: started in its own process group, reaped with whatever it
left in that group, and its finished runs counted straight from the store while it runs."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def start_sweep(folder: Path, args: list[str]) -> subprocess.Popen:
    """``tune.py ARGS`` in ``folder`` (its default MLflow store there), unbuffered."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tune.py"), *args],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONUNBUFFERED": "1"},
        start_new_session=True,  # its own process group: a terminal's Ctrl-C reaches it all
    )


def reap(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what a dead driver left in its group
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, out, err


def finished_runs(folder: Path, role: str) -> int:
    """Runs of ``role`` that ended FINISHED, read straight from the store while it runs."""
    try:
        with sqlite3.connect(folder / "mlflow.db", timeout=1) as db:
            return db.execute(
                "select count(*) from runs r join tags t on t.run_uuid = r.run_uuid "
                "where t.key = 'role' and t.value = ? and r.status = 'FINISHED'",
                (role,),
            ).fetchone()[0]
    except sqlite3.Error:
        return 0
