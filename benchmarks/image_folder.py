"""Loading an image folder: a plain parallel Pillow decode against this tree's cold load
(empty image cache) and warm load (cache present), and optionally an old revision's load, side
by side in one run.

The folder: N JPEGs of 256x256 in 10 class folders (``--images``, default 10,000), made once
and kept under ``--folder`` (default: the system's temp folder) for later runs. Each load runs
in a process of its own, as ``tune.py`` would load it, at 224 px (``--image-size``). While it
runs, the resident memory of the process and all its children is summed every
``--interval`` seconds; the peak is the table's (or the main process's own high-water mark,
``VmHWM``, where that is higher: a peak between two readings). "Beyond start-up" is the load
alone, without the interpreter's start and the imports (timed inside the process).

``--against REV`` also runs the cold load of a git revision (a ``git worktree``, removed
after), unless its estimated peak (3.4x the decoded data, measured on 10,000 images) exceeds
the machine's memory: then it prints why it was not run. Linux only.

    python benchmarks/image_folder.py --against HEAD~3
    python benchmarks/image_folder.py --images 50000 --against HEAD~3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GB = 1e9
CLASSES = 10
SOURCE_SIDE = 256
OLD_PEAK_FACTOR = 3.4  # the one-file-at-a-time load's peak over its decoded data (10k images)

LOAD = """
import json, sys, time
started = time.perf_counter()
from trainables.data import DataOptions, load_dataset
import psutil
imported, baseline = time.perf_counter(), psutil.Process().memory_info().rss
data = load_dataset(f"imagefolder:{sys.argv[1]}", DataOptions(image_size=int(sys.argv[2])))
done = time.perf_counter()
cached = getattr(data, "backing", None) is not None
images = len(data.train_y) + len(data.val_y) + len(data.test_y)
print(json.dumps({"startup": imported - started, "load": done - imported, "baseline": baseline,
                  "images": images, "cached": cached}))
"""

PLAIN = """
import json, os, sys, time
from multiprocessing import get_context
from pathlib import Path
started = time.perf_counter()
import numpy as np
import psutil
from PIL import Image

def decode(args):
    paths, size = args
    out = np.empty((len(paths), 3, size, size), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as img:
            img.draft(img.mode, (size, size))
            img = img.convert("RGB").resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(img).transpose(2, 0, 1)
    return out

if __name__ == "__main__":
    root, size = Path(sys.argv[1]), int(sys.argv[2])
    imported, baseline = time.perf_counter(), psutil.Process().memory_info().rss
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    images = np.empty((len(paths), 3, size, size), np.uint8)
    chunks = [(paths[i : i + 64], size) for i in range(0, len(paths), 64)]
    with get_context("forkserver").Pool(len(os.sched_getaffinity(0))) as pool:
        for i, chunk in enumerate(pool.imap(decode, chunks)):
            images[i * 64 : i * 64 + len(chunk)] = chunk
    done = time.perf_counter()
    print(json.dumps({"startup": imported - started, "load": done - imported,
                      "baseline": baseline, "images": len(images), "cached": False}))
"""


@dataclass
class Run:
    """One load: wall seconds of the whole process, its own timings, its tree's peak RSS."""

    label: str
    wall: float = 0.0
    load: float = 0.0
    startup: float = 0.0
    baseline: int = 0
    peak: int = 0
    images: int = 0
    cached: bool = False
    skipped: str = ""  # why it did not run


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=10_000, help="JPEGs in the folder (10000)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--folder", default="", help="where the generated folders are kept")
    p.add_argument("--against", default="", help="also the cold load of this git revision")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between readings")
    return p


def make_folder(root: Path, n: int) -> Path:
    """``n`` JPEGs of smooth random content (photo-sized files), made once."""
    from PIL import Image

    folder = root / f"jpegs-{n}"
    if (folder / ".complete").exists():
        return folder
    rng = np.random.default_rng(0)
    for i in range(n):
        path = folder / f"class{i % CLASSES}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((SOURCE_SIDE, SOURCE_SIDE), Image.BICUBIC).save(
            path, quality=90
        )
    (folder / ".complete").write_text("")
    return folder


def measure(
    label: str, command: list[str], env: dict[str, str], interval: float, cwd: Path = ROOT
) -> Run:
    """``command`` run to its end in ``cwd``, the RSS of its process tree summed every
    ``interval``. ``python -c`` puts ``cwd`` first on sys.path, before PYTHONPATH: the tree
    to import must be ``cwd``."""
    import psutil

    run, started = Run(label), time.perf_counter()
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    root, stop = psutil.Process(process.pid), threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total = 0
            with contextlib.suppress(psutil.Error):
                for proc in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += proc.memory_info().rss
            # The kernel's own peak of the main process: a peak between two readings counts.
            run.peak = max(run.peak, total, high_water_mark(process.pid))
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = process.communicate()
    run.wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{label} failed ({process.returncode}):\n{err.decode()[-3000:]}")
    record = json.loads(out.decode().strip().splitlines()[-1])
    run.load, run.startup, run.baseline = record["load"], record["startup"], record["baseline"]
    run.images, run.cached = record["images"], record["cached"]
    return run


def high_water_mark(pid: int) -> int:
    """The process's peak resident memory in bytes (``VmHWM``; 0 once it has ended)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        return int(next(line for line in lines if line.startswith("VmHWM:")).split()[1]) * 1024
    return 0


def load_command(tree: Path, folder: Path, size: int) -> list[str]:
    return [sys.executable, "-c", LOAD, str(folder), str(size)]


def tree_env(tree: Path, cache: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(tree),
        "FINETUNE_SWEEPS_IMAGE_CACHE_DIR": str(cache),
        "FINETUNE_SWEEPS_IMAGE_CACHE_GIB": "100",
    }


def run_against(rev: str, folder: Path, args: argparse.Namespace, data_bytes: int) -> Run:
    """The old revision's cold load, in a worktree of its own; not run where its estimated
    peak would not fit in this machine's memory."""
    import psutil

    label = f"{rev} cold"
    need, have = OLD_PEAK_FACTOR * data_bytes, psutil.virtual_memory().total
    if need > 0.9 * have:
        why = f"needs ~{need / GB:.0f} GB ({OLD_PEAK_FACTOR}x {data_bytes / GB:.1f} GB)"
        return Run(label, skipped=f"not run: {why}, this machine has {have / GB:.0f} GB")
    with tempfile.TemporaryDirectory() as scratch:
        tree = Path(scratch) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
        try:
            env = tree_env(tree, Path(scratch) / "cache")
            command = load_command(tree, folder, args.image_size)
            return measure(label, command, env, args.interval, cwd=tree)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


def table(runs: list[Run], n: int, size: int, data_bytes: int) -> str:
    lines = [
        f"image folder: {n} JPEGs of {SOURCE_SIDE}x{SOURCE_SIDE} in {CLASSES} classes, decoded "
        f"at {size} px: {data_bytes / GB:.2f} GB; {len(os.sched_getaffinity(0))} cores",
        f"{'load':<28}{'wall s':>8}{'load s':>9}{'peak RSS GB':>13}{'RSS/(data+base)':>17}",
    ]
    for run in runs:
        if run.skipped:
            lines.append(f"{run.label:<28}{run.skipped}")
            continue
        ratio = run.peak / (data_bytes + run.baseline)
        lines.append(
            f"{run.label:<28}{run.wall:>8.2f}{run.load:>9.2f}{run.peak / GB:>13.2f}{ratio:>17.2f}"
        )
    return "\n".join(lines)


def targets(runs: dict[str, Run], data_bytes: int) -> str:
    plain, cold, warm = runs["plain"], runs["cold"], runs["warm"]
    return "\n".join(
        [
            f"cold wall / plain wall: {cold.wall / plain.wall:.2f} (target <= 1.3)",
            f"warm load beyond start-up: {warm.load:.2f} s (target <= 1 s for 10k)",
            f"cold peak RSS / (data + baseline): {cold.peak / (data_bytes + cold.baseline):.2f} "
            "(target <= 1.3)",
        ]
    )


def main(args: argparse.Namespace) -> None:
    base = Path(args.folder or Path(tempfile.gettempdir()) / "finetune-sweeps-bench")
    folder = make_folder(base, args.images)
    data_bytes = args.images * 3 * args.image_size**2
    runs: dict[str, Run] = {}
    with tempfile.TemporaryDirectory(dir=base) as cache:
        script = Path(cache) / "plain.py"  # a file: the pool's workers import its function
        script.write_text(PLAIN)
        plain = [sys.executable, str(script), str(folder), str(args.image_size)]
        runs["plain"] = measure(
            "plain PIL (draft, all cores)", plain, dict(os.environ), args.interval
        )
        env = tree_env(ROOT, Path(cache))
        command = load_command(ROOT, folder, args.image_size)
        runs["cold"] = measure("this tree, cold", command, env, args.interval)
        runs["warm"] = measure("this tree, warm", command, env, args.interval)
    if args.against:
        runs["against"] = run_against(args.against, folder, args, data_bytes)
    print(table(list(runs.values()), args.images, args.image_size, data_bytes))
    print(targets(runs, data_bytes))
    if not runs["cold"].cached or not runs["warm"].cached:
        print("warning: this tree's loads did not use the image cache")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
