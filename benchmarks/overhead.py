"""What a sweep costs beyond the training: the sweep against the same trial configs trained by
the project's own ``fit`` in plain worker processes, side by side in one run.

For each workload, ``tune.py --space focal`` runs with nothing stopped early (the grace period
is the last epoch) and no confirmation phase; then every trial's resolved config (its
``config.json`` in MLflow) is trained again by ``fit`` in as many plain processes as the sweep
had CPUs. The table prints both wall times and their ratio, and where each sweep's fixed cost
went (from its runs' MLflow times). What is left, the sweep's extra time while its trials
run, is printed per trial, and split into a part per trial and one per epoch by least squares
over the workloads (unstable when the machine is noisy: compare runs). Where tune.py's
workers start with Ray and import the trial's modules first (``sweep.local_ray``), those
imports (torch's compiler stack among them, which an optimizer's first step used to import)
count in the workers' start, before the first trial's run opens, not while trials run; the
plain loop's first trial in each process still imports the compiler stack inside its clock.
Of the extra time, the part inside the trials' MLflow runs (logging, reports, checkpoints)
is the runs' summed time less the plain trials' summed time, over the processes that ran
them at once; the rest is between runs (Ray starting each trial, its data, the run's lookup).
Last, the start-up floor (``startup_floor.py``): the CPU the libraries' own start takes on
this machine, the least the fixed cost can be, measured in the same sitting.

With ``--confirm-seeds N`` each arm's best config is also run on N seeds, and the plain loop
trains those configs too: the sweep's confirmation runs, and what starting them costs, count.

    python benchmarks/overhead.py                      # small CNN, three workloads (~4 min)
    python benchmarks/overhead.py --workloads 8x6,8x12,16x6 --backbone smallcnn
    python benchmarks/overhead.py --workloads 8x6 --confirm-seeds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--workloads",
        default="8x6,8x12,16x6",
        help="comma-separated TRIALSxEPOCHS (trials in all, split evenly over the 2 arms)",
    )
    p.add_argument("--backbone", default="smallcnn")
    p.add_argument("--image-size", type=int, default=0)
    p.add_argument("--cpus", type=int, default=2, help="Ray's CPUs and the plain processes")
    p.add_argument("--extra", default="", help="more tune.py options, e.g. '--weights w.pth'")
    p.add_argument(
        "--confirm-seeds",
        type=int,
        default=0,
        help="confirmation runs per arm (default 0: the search alone)",
    )
    p.add_argument(
        "--no-floor",
        dest="floor",
        action="store_false",
        help="skip the start-up floor (startup_floor.py) printed after the workloads (~20 s)",
    )
    return p


def run_sweep(
    folder: Path, trials: int, epochs: int, args: argparse.Namespace
) -> tuple[float, float, float]:
    """The sweep's wall time, when it started (epoch seconds), and how long Ray's processes
    outlived it."""
    command = [
        *(sys.executable, str(ROOT / "tune.py"), "--space", "focal"),
        *("--num-samples", str(trials // 2), "--max-epochs", str(epochs)),
        *("--grace-period", str(epochs), "--confirm-seeds", str(args.confirm_seeds), "--quiet"),
        *("--backbone", args.backbone, "--num-cpus", str(args.cpus)),
        *("--image-size", str(args.image_size), *args.extra.split()),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(ROOT)}
    started, wall = time.time(), time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - wall
    return wall, started, wait_for_ray_to_end()


RAY_PROCESSES = ("raylet", "gcs_server", "ray::")


def wait_for_ray_to_end(timeout: float = 30.0) -> float:
    """Until no process of a local Ray is left (returns the seconds waited): one still ending
    would take CPU from the plain loop timed next. Any Ray on the machine counts: run the
    benchmark alone."""
    import psutil

    start = time.monotonic()
    while time.monotonic() < start + timeout:
        names = []
        for process in psutil.process_iter(["name", "cmdline", "status"]):
            with contextlib.suppress(psutil.Error):
                info = process.info
                if info["status"] != psutil.STATUS_ZOMBIE:  # ended, not yet reaped
                    names.append(" ".join([info["name"] or "", *(info["cmdline"] or [])]))
        if not any(marker in name for name in names for marker in RAY_PROCESSES):
            return time.monotonic() - start
        time.sleep(0.1)
    print(f"warning: Ray's processes still running after {timeout:.0f} s", file=sys.stderr)
    return timeout


def where_the_fixed_cost_goes(
    folder: Path, started: float, wall: float
) -> tuple[str, float, float]:
    """From the runs' MLflow times: the driver's start (imports, validation, Ray, the store)
    until the parent run exists; the workers' start until the first trial's run exists; and
    from the last trial's end to the process's (the answer, models, Ray's shutdown). Returns
    them in words, their sum, and the trial runs' summed time (each from open to end)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("focal")
    runs = client.search_runs([experiment.experiment_id])
    parent = min(r.info.start_time for r in runs if r.data.tags.get("role") == "sweep") / 1000
    trials = [r for r in runs if r.data.tags.get("role") != "sweep"]
    first = min(r.info.start_time for r in trials) / 1000
    last = max(r.info.end_time for r in trials) / 1000
    parts = (parent - started, first - parent, started + wall - last)
    words = "driver start {:.1f} s, workers' start {:.1f} s, after the last trial {:.1f} s"
    in_runs = sum((r.info.end_time - r.info.start_time) / 1000 for r in trials)
    return words.format(*parts), sum(parts), in_runs


def trial_configs(folder: Path) -> list[dict]:
    """Every trial's resolved config, search trials and confirmation runs, in the order the
    sweep started them: the plain processes take them in that order, one as each is free, so
    both pack the trials onto the processes alike (MLflow's own order, newest first, is the
    reverse of the sweep's, and a different packing moves the makespan by up to a trial)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("focal")
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.role != 'sweep'",
        order_by=["attributes.start_time ASC"],
    )
    return [
        json.loads(Path(client.download_artifacts(r.info.run_id, "config.json")).read_text())
        for r in runs
    ]


def _config(config: dict):
    """The trial's config, and torch's threads set as the trial sets them."""
    import torch

    from trainables.config import TrialConfig

    cfg = TrialConfig.from_dict(config)
    torch.set_num_threads(cfg.num_threads)
    return cfg


def _load(cfg):
    """The trial's data, as the sweep's driver loads it."""
    from trainables.data import DataOptions, load_dataset

    options = DataOptions(
        split_seed=cfg.split_seed, val_fraction=cfg.val_fraction, image_size=cfg.image_size
    )
    return load_dataset(cfg.dataset, options)


def train_plain(config: dict) -> float:
    """One trial in a plain process: load the data, build the model, every epoch of ``fit``."""
    import torch

    from trainables.engine import TrainingDiverged, fit

    cfg = _config(config)
    data = _load(cfg)
    started = time.perf_counter()
    try:
        for _ in fit(cfg, data, torch.device("cpu")):
            pass
    except TrainingDiverged:  # the sweep's trial ends there too
        pass
    return time.perf_counter() - started


def _warm(config: dict, ready: Any) -> None:
    """Each pool process's imports and a first load of the data, before the clock starts: the
    plain loop is the training (and each trial's load of data already read once) alone. Puts
    an empty string when done, or the error that stopped it."""
    try:
        import trainables.engine  # noqa: F401

        _load(_config(config))
    except Exception:
        ready.put(traceback.format_exc())
        raise
    ready.put("")


def run_plain(configs: list[dict], processes: int) -> tuple[float, float]:
    """The plain loop's wall time, and the sum of its trials' own times."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    with context.Pool(processes, initializer=_warm, initargs=(configs[0], ready)) as pool:
        for _ in range(processes):  # every process warmed, not one process twice
            error = ready.get(timeout=600)
            if error:
                raise RuntimeError(f"a plain process could not start:\n{error}")
        started = time.perf_counter()
        seconds = pool.map(train_plain, configs, chunksize=1)
        return time.perf_counter() - started, sum(seconds)


def overhead_fit(rows: list[tuple[int, int, float]]) -> tuple[float, float]:
    """Least squares of the extra time while trials run (the sweep less its fixed cost less
    the plain loop) = per_trial * trials + per_epoch * trials * epochs."""
    import numpy as np

    design = np.array([[t, t * e] for t, e, _ in rows], dtype=float)
    extra = np.array([x for _, _, x in rows])
    coef, *_ = np.linalg.lstsq(design, extra, rcond=None)
    return float(coef[0]), float(coef[1])


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    rows = []
    print(f"{'workload':>10} {'plain s':>8} {'sweep s':>8} {'ratio':>6}", flush=True)
    for workload in args.workloads.split(","):
        trials, epochs = (int(v) for v in workload.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            sweep, started, lingered = run_sweep(Path(tmp), trials, epochs, args)
            fixed, fixed_s, in_runs = where_the_fixed_cost_goes(Path(tmp), started, sweep)
            configs = trial_configs(Path(tmp))
            plain, in_fit = run_plain(configs, args.cpus)
        extra = sweep - fixed_s - plain
        trials = len(configs)  # with the confirmation runs
        # Time inside the runs, run on args.cpus processes at once: its share of the wall time.
        in_runs_wall = (in_runs - in_fit) / args.cpus
        rows.append((trials, epochs, extra))
        print(
            f"{workload:>10} {plain:8.1f} {sweep:8.1f} {sweep / plain:6.2f}  ({fixed}; while "
            f"trials ran {extra:+.1f} s, {extra / trials:+.2f} s per trial, of which inside the "
            f"trials' runs {in_runs_wall / trials:+.2f} s (runs {in_runs:.1f} s, plain trials "
            f"{in_fit:.1f} s in all, on {args.cpus} processes); Ray's processes ended "
            f"{lingered:.1f} s after the sweep, before the plain loop started)",
            flush=True,
        )
    if len(rows) >= 2:
        per_trial, per_epoch = overhead_fit(rows)
        print(
            f"while trials ran: {per_trial:.2f} s per trial, {per_epoch:.3f} s per trial-epoch "
            "(least squares over the workloads)"
        )
    if args.floor:
        from startup_floor import format_floor, machine_cpus, measure  # this script's folder

        print(format_floor(measure(args.cpus), machine_cpus()), flush=True)


if __name__ == "__main__":
    main()
