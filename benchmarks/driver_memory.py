"""Driver memory over a long sweep: the resident memory of ``tune.py`` after 10 finished trials
against after 100 (the aim: within 10%), sampled while the sweep runs.

    python benchmarks/driver_memory.py                  # 100 one-epoch trials (~4 min here)
    python benchmarks/driver_memory.py --trials 200 --marks 10,100,200
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100, help="search trials in all (2 arms)")
    p.add_argument("--marks", default="10,50,100", help="finished-trial counts to sample at")
    p.add_argument("--cpus", type=int, default=2)
    return p


def resident_mib(pid: int) -> float:
    """VmRSS of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def finished_trials(db: Path) -> int:
    """Child runs that have ended, counted straight from the SQLite store."""
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            row = con.execute(
                "SELECT COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = 'role' AND t.value = 'search' AND r.status != 'RUNNING'"
            ).fetchone()
    except sqlite3.OperationalError:  # the tables are not there yet, or the store is busy
        return 0
    return int(row[0])


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    marks = sorted(int(m) for m in args.marks.split(","))
    command = [
        *(sys.executable, str(ROOT / "tune.py"), "--space", "focal"),
        *("--num-samples", str(args.trials // 2), "--max-epochs", "1", "--grace-period", "1"),
        *("--confirm-seeds", "0", "--train-limit", "100", "--num-cpus", str(args.cpus)),
        "--quiet",
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(ROOT)}
    samples: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "mlflow.db"
        sweep = subprocess.Popen(command, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        started = time.perf_counter()
        while sweep.poll() is None and len(samples) < len(marks):
            done = finished_trials(db)
            for mark in marks:
                if done >= mark and mark not in samples:
                    samples[mark] = resident_mib(sweep.pid)
                    print(
                        f"after {done:4d} trials ({time.perf_counter() - started:5.0f} s): "
                        f"driver RSS {samples[mark]:7.1f} MiB",
                        flush=True,
                    )
            time.sleep(0.2)
        sweep.wait()
    first, last = marks[0], marks[-1]
    if first in samples and last in samples:
        print(
            f"driver memory after {last} trials / after {first}: "
            f"{samples[last] / samples[first]:.3f}"
        )


if __name__ == "__main__":
    main()
