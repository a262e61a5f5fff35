"""The memory a trial takes: each space's smoke sweep (``tune.py --space S --num-samples 2
--max-epochs 1``, embedded data, defaults otherwise), the peak resident memory of its trial
processes, side by side in one run.

Each sweep runs as a user runs it, in a temporary folder of its own (its MLflow store and Ray
results there). While it runs, every process of its local Ray that runs a trial (the actor Ray
Tune runs a function trainable in, titled ``ray::ImplicitFunc...``) is read every
``--interval`` seconds: its high-water mark of resident memory (``VmHWM`` in
``/proc/PID/status``, the kernel's own peak, so a peak between two readings still counts). A
worker runs several trials one after the other, so its peak is that of its largest trial,
after those before it. A worker killed by Ray's memory monitor counts at its last reading
(Ray kills on the whole machine's use: run the benchmark alone). Linux only.

``--against REV`` runs the same sweeps on the tree of a git revision too (``git archive``, the
working tree untouched), and prints both columns.

    python benchmarks/trial_memory.py                        # every space (~20 min on 2 CPUs)
    python benchmarks/trial_memory.py --spaces losses,svm --against HEAD~1
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psutil

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
# The title of a Ray worker process while it holds a trial (Ray Tune's function trainable).
TRIAL_TITLE = "ray::ImplicitFunc"
# Ray's words when its memory monitor kills a worker, in the sweep's output.
KILLED_MARKERS = ("OutOfMemoryError", "running low on memory")


@dataclass
class SweepMemory:
    """One sweep's readings: each worker's peak resident memory (bytes) by pid."""

    space: str
    peaks: dict[int, int] = field(default_factory=dict)
    driver_peak: int = 0
    trials: int = 0
    exit_code: int = 0
    seconds: float = 0.0
    killed: bool = False

    @property
    def trial_peaks(self) -> list[int]:
        return sorted(self.peaks.values(), reverse=True)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spaces", default="", help="comma-separated (default: every space)")
    p.add_argument("--num-samples", type=int, default=2)
    p.add_argument("--max-epochs", type=int, default=1)
    p.add_argument("--extra", default="", help="more tune.py options, e.g. '--confirm-seeds 1'")
    p.add_argument("--interval", type=float, default=0.2, help="seconds between readings")
    p.add_argument("--limit-gb", type=float, default=2.0, help="flag peaks above this")
    p.add_argument("--against", default="", help="also run the tree of this git revision")
    return p


def high_water_mark(pid: int) -> int:
    """The process's peak resident memory in bytes (0 once it has ended)."""
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/status").read_text()
        match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
        return int(match.group(1)) * 1024 if match else 0
    return 0


def read_workers(driver: psutil.Process, reading: SweepMemory) -> None:
    """One reading of every trial's worker under the sweep's driver."""
    import psutil

    children = []
    with contextlib.suppress(psutil.Error):
        reading.driver_peak = max(reading.driver_peak, high_water_mark(driver.pid))
        children = driver.children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            if child.pid in reading.peaks or " ".join(child.cmdline()).startswith(TRIAL_TITLE):
                peak = high_water_mark(child.pid)  # a worker between trials: titled IDLE
                reading.peaks[child.pid] = max(reading.peaks.get(child.pid, 0), peak)


def run_sweep(space: str, tree: Path, args: argparse.Namespace) -> SweepMemory:
    """``tune.py`` of ``tree`` on ``space`` in a folder of its own, its workers read as it
    runs."""
    import psutil

    command = [
        *(sys.executable, str(tree / "tune.py"), "--space", space, "--quiet"),
        *("--num-samples", str(args.num_samples), "--max-epochs", str(args.max_epochs)),
        *args.extra.split(),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(tree)}
    reading, started = SweepMemory(space), time.perf_counter()
    with tempfile.TemporaryDirectory() as folder, tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=output, stderr=output)
        driver = psutil.Process(process.pid)
        while process.poll() is None:
            read_workers(driver, reading)
            time.sleep(args.interval)
        output.seek(0)
        text = output.read()
        reading.trials = count_trials(Path(folder) / "mlflow.db")
    reading.exit_code, reading.seconds = process.returncode, time.perf_counter() - started
    reading.killed = any(marker in text for marker in KILLED_MARKERS)
    if reading.exit_code != 0:
        print(f"{space}: exit {reading.exit_code}; the output's end:\n{text[-2000:]}")
    return reading


def count_trials(store: Path) -> int:
    """The sweep's trial runs in its MLflow store (the runs tagged with a role but the sweep's)."""
    import sqlite3

    with contextlib.suppress(sqlite3.Error), sqlite3.connect(store) as db:
        query = "select count(*) from tags where key = 'role' and value != 'sweep'"
        return db.execute(query).fetchone()[0]
    return 0


def describe(reading: SweepMemory | None, limit: float) -> str:
    """``max / median GB (workers for trials)`` of the trial processes' peaks, flagged above
    ``limit``, killed by Ray, or ended with an error."""
    if reading is None:
        return "-"
    peaks = reading.trial_peaks
    if not peaks:
        return f"no trial (exit {reading.exit_code})"
    top, middle = peaks[0] / GB, peaks[len(peaks) // 2] / GB
    flags = "!" if top > limit else ""
    flags += " killed" if reading.killed else ""
    flags += f" exit {reading.exit_code}" if reading.exit_code else ""
    return f"{top:.2f} / {middle:.2f} ({len(peaks)} for {reading.trials}){flags}"


def print_table(
    rows: list[tuple[str, SweepMemory | None, SweepMemory]], against: str, limit: float
) -> None:
    print(
        f"\npeak resident memory of the trial processes, GB: max / median (worker processes "
        f"for trials); '!' above {limit:g} GB"
    )
    columns = ([against] if against else []) + ["this tree"]
    print(f"{'space':<11} " + " ".join(f"{c:>30}" for c in columns) + f" {'driver GB':>10}")
    for space, old, new in rows:
        cells = ([describe(old, limit)] if against else []) + [describe(new, limit)]
        line = f"{space:<11} " + " ".join(f"{c:>30}" for c in cells)
        print(f"{line} {new.driver_peak / GB:>10.2f}   ({new.seconds:.0f} s)")


def extract(revision: str, folder: Path) -> Path:
    """The files of ``revision`` in ``folder`` (the working tree and index untouched)."""
    archive = folder / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", revision], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder / "tree", filter="data")
    return folder / "tree"


def space_names(spec: str) -> list[str]:
    if spec:
        return spec.split(",")
    from search_spaces import list_spaces

    return [space.name for space in list_spaces()]


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        old_tree = extract(args.against, Path(folder)) if args.against else None
        for space in space_names(args.spaces):
            old = run_sweep(space, old_tree, args) if old_tree else None
            new = run_sweep(space, ROOT, args)
            rows.append((space, old, new))
            print(f"{space}: {describe(old, args.limit_gb)} -> {describe(new, args.limit_gb)}")
    print_table(rows, args.against, args.limit_gb)


if __name__ == "__main__":
    main()
