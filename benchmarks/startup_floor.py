"""The least a sweep's start can cost on this machine: the CPU that the libraries' own start-up
takes before any trial can run, with nothing of a sweep around it. Measured in fresh processes:

- the driver's imports (``sweep.plan`` and ``sweep.runner``: torch, Ray Tune, MLflow, Optuna);
- a local Ray started as ``tune.py`` starts it (``sweep.local_ray``'s settings: one worker per
  CPU, each importing the trial's modules), until every worker has them; the CPU of each of
  Ray's processes, the workers apart, and the wall time of ``ray.init`` and ``ray.shutdown``.

That CPU spread over the machine's cores, plus Ray's shutdown, is a lower bound of what a
sweep's start and end cost here (the sweep also opens its MLflow store and logs each arm's
model). ``overhead.py`` prints it beside its sweeps' fixed cost; a second warm worker still
importing when the first trial's run opens charges the rest of its CPU to "while trials
ran" there, so compare the floor with the fixed cost and that extra together.

    python benchmarks/startup_floor.py               # 2 CPUs, as the sweeps here (~20 s)
    python benchmarks/startup_floor.py --cpus 4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DRIVER_IMPORTS = "import sweep.plan, sweep.runner"

# Runs in a fresh process: a local Ray as tune.py starts one, then one task per CPU (each
# waits for a worker that has imported the trial's modules), then every Ray process's CPU.
RAY_SCRIPT = """
import json, os, sys, time
import psutil, ray
from sweep.local_ray import (LocalRayOptions, WORKER_PRELOAD, local_ray_settings,
                             warm_worker_settings)

cpus = int(sys.argv[1])
start = time.perf_counter()
ray.init(**local_ray_settings(LocalRayOptions(num_cpus=cpus)),
         _system_config=warm_worker_settings())
init_s = time.perf_counter() - start

@ray.remote(num_cpus=1)
def loaded():
    time.sleep(0.5)  # keeps its worker busy, so the next task takes another
    return os.getpid(), all(name in sys.modules for name in WORKER_PRELOAD)

ready = ray.get([loaded.remote() for _ in range(cpus)])
ready_s = time.perf_counter() - start - 0.5
processes = {}
for child in psutil.Process().children(recursive=True):
    try:
        times = child.cpu_times()
        title = " ".join(child.cmdline())[:60]  # Ray's workers and agents: "ray::..."
        processes[f"{child.pid} {title}"] = times.user + times.system
    except psutil.Error:
        pass
start = time.perf_counter()
ray.shutdown()
print(json.dumps({"init_s": init_s, "ready_s": ready_s, "shutdown_s": time.perf_counter() - start,
                  "task_workers": len({pid for pid, _ in ready}),
                  "workers_loaded": all(ok for _, ok in ready), "processes": processes}))
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpus", type=int, default=2, help="Ray's CPUs, one warm worker each (2)")
    return p


def check_cpus(parser: argparse.ArgumentParser, cpus: int) -> None:
    """Only where tune.py starts warm workers (``sweep.local_ray``)."""
    sys.path.insert(0, str(ROOT))
    from sweep.local_ray import WARM_WORKERS_MAX_CPUS

    if not 1 <= cpus <= WARM_WORKERS_MAX_CPUS:
        parser.error(
            f"--cpus {cpus}: tune.py starts warm workers for 1 to {WARM_WORKERS_MAX_CPUS} CPUs"
        )


def child_cpu(command: list[str]) -> tuple[float, str]:
    """The CPU seconds a child process used, and what it printed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return used, done.stdout


def measure(cpus: int) -> dict[str, float]:
    """CPU seconds of each part of the start, and Ray's wall times."""
    driver, _ = child_cpu([sys.executable, "-c", DRIVER_IMPORTS])
    _, printed = child_cpu([sys.executable, "-c", RAY_SCRIPT, str(cpus)])
    ray = json.loads(printed.strip().splitlines()[-1])
    if not ray["workers_loaded"]:
        raise RuntimeError("a module of WORKER_PRELOAD failed to import (see Ray's worker logs)")
    if ray["task_workers"] != cpus:
        raise RuntimeError(f"{ray['task_workers']} workers ran the {cpus} tasks, not {cpus}")
    workers = [s for name, s in ray["processes"].items() if _is_worker(name)]
    helpers = sum(s for name, s in ray["processes"].items() if not _is_worker(name))
    return {
        "driver_imports": driver,
        "worker_count": len(workers),
        "workers": sum(workers),
        "worker_each": max(workers, default=0.0),
        "ray_processes": helpers,
        "init_s": ray["init_s"],
        "ready_s": ray["ready_s"],
        "shutdown_s": ray["shutdown_s"],
    }


def _is_worker(name: str) -> bool:
    """A worker process of Ray's (its name is ``ray::`` and what it runs), not an agent."""
    process = name.split(" ", 1)[1]
    return process.startswith("ray::") and "Agent" not in process


def machine_cpus() -> int:
    return len(os.sched_getaffinity(0))


def format_floor(floor: dict[str, float], cores: int) -> str:
    """In words: the CPU, and the fixed cost it sets at least (the CPU spread evenly over the
    machine's ``cores``, then Ray's shutdown, which the sweep waits for)."""
    cpu = floor["driver_imports"] + floor["workers"] + floor["ray_processes"]
    least = cpu / cores + floor["shutdown_s"]
    return (
        f"start-up floor on {cores} cores: {cpu:.1f} CPU-s = driver's imports "
        f"{floor['driver_imports']:.1f} + {floor['worker_count']:.0f} warm workers "
        f"{floor['workers']:.1f} (at most "
        f"{floor['worker_each']:.1f} each) + Ray's other processes {floor['ray_processes']:.1f}"
        f"; with Ray's shutdown ({floor['shutdown_s']:.1f} s) a fixed cost of at least "
        f"{least:.1f} s (ray.init alone {floor['init_s']:.1f} s, workers ready at "
        f"{floor['ready_s']:.1f} s)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    check_cpus(parser, args.cpus)
    start = time.perf_counter()
    print(format_floor(measure(args.cpus), machine_cpus()))
    print(f"(measured in {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
