"""Time spent in trials by a frozen-backbone sweep, with the feature cache and without it.

The same sweep (``tune.py --space freeze --arms backbone``, ResNet-18 on digits, a local
weights file standing in for pretrained ones) runs twice, one after the other, each in a
fresh folder with a fresh cache: once as is, once with ``--no-feature-cache``. The time in
trials is the sum over the sweep's trial runs of their MLflow start-to-end time; the cached
sweep pays for computing the features inside its first trials. Both sweeps search the same
configs (the sampler is seeded), so their metrics should agree.

A trial's time also holds what the cache cannot change (MLflow logging, checkpoints, Ray's
reports: seconds per epoch on a small CPU machine), so the loop alone is timed too: one epoch
of one config's ``fit``, in this process on one thread, uncached, then cached from a cold
cache (computing the features), then cached again (reading them, as every later trial does).

    python benchmarks/feature_cache.py                        # 96 px, 400 training images
    python benchmarks/feature_cache.py --image-size 224 --train-limit 0 --max-epochs 6
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METRIC = "val_macro_f1"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=96, help="model input size (96)")
    p.add_argument("--train-limit", type=int, default=400, help="training images; 0 = all (400)")
    p.add_argument("--num-samples", type=int, default=4, help="search trials (4)")
    p.add_argument("--max-epochs", type=int, default=4, help="epochs per trial (4)")
    p.add_argument("--confirm-seeds", type=int, default=1, help="confirmation trials (1)")
    p.add_argument("--num-cpus", type=int, default=2, help="Ray's CPUs, one per trial (2)")
    p.add_argument("--folder", default=None, help="where the sweeps write (default: a temp dir)")
    return p


@dataclass(frozen=True)
class SweepTiming:
    label: str
    wall_s: float  # the whole tune.py command, Ray's start-up included
    trials: int
    trial_s: float  # summed over trials
    best: float  # the best trial's best METRIC
    confirmed: float  # the confirmation trials' mean best METRIC


def make_weights(path: Path, image_size: int) -> None:
    """A random ResNet-18 whose batch-norm statistics are the digits' own, as pretraining
    leaves them for its data: its frozen features are then worth training a head on."""
    import torch
    import torchvision

    from trainables.data import load_dataset
    from trainables.models import IMAGENET_MEAN, IMAGENET_STD, Preprocess

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batch below
    with torch.no_grad():
        images = load_dataset("digits").train_x[:256]
        model.train()(Preprocess(image_size, 3, IMAGENET_MEAN, IMAGENET_STD)(images))
    torch.save(model.state_dict(), path)


def run_sweep(args: argparse.Namespace, folder: Path, weights: Path, cached: bool) -> SweepTiming:
    label = "cached" if cached else "uncached"
    where = folder / label
    where.mkdir(parents=True)
    command = [
        sys.executable,
        str(ROOT / "tune.py"),
        *("--space", "freeze", "--arms", "backbone", "--backbone", "resnet18"),
        *("--weights", str(weights), "--image-size", str(args.image_size)),
        *("--train-limit", str(args.train_limit), "--num-samples", str(args.num_samples)),
        *("--max-epochs", str(args.max_epochs), "--confirm-seeds", str(args.confirm_seeds)),
        *("--num-cpus", str(args.num_cpus), "--experiment", "feature-cache-benchmark"),
        *("--tracking-uri", f"sqlite:///{where / 'mlflow.db'}"),
        *("--storage-path", str(where / "ray_results"), "--quiet"),
        *([] if cached else ["--no-feature-cache"]),
    ]
    # The trials' processes import this tree's code (a copy in another checkout measures it).
    env = {
        **os.environ,
        "FINETUNE_SWEEPS_FEATURE_CACHE": str(where / "features"),
        "PYTHONPATH": str(ROOT),
    }
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=where, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    return _timing(label, wall, f"sqlite:///{where / 'mlflow.db'}")


def _timing(label: str, wall: float, tracking_uri: str) -> SweepTiming:
    """Trial time and metrics from the sweep's MLflow runs (a trial run has a parent)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("feature-cache-benchmark")
    runs = client.search_runs([experiment.experiment_id], max_results=5000)
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    seconds = sum((r.info.end_time - r.info.start_time) / 1000 for r in trials)
    best = [r.data.metrics.get(f"best_{METRIC}", float("nan")) for r in trials]
    confirmed = [
        r.data.metrics.get(f"best_{METRIC}", float("nan"))
        for r in trials
        if r.data.tags.get("role") == "confirmation"
    ]
    mean_confirmed = sum(confirmed) / len(confirmed) if confirmed else float("nan")
    return SweepTiming(label, wall, len(trials), seconds, max(best), mean_confirmed)


def time_loop(args: argparse.Namespace, folder: Path, weights: Path) -> str:
    """One epoch of one config's training loop: seconds uncached, cached from a cold cache and
    from a warm one, and how far apart the runs' metrics are."""
    import torch

    from trainables.config import TrialConfig
    from trainables.data import DataOptions, limit_train, load_dataset
    from trainables.engine import fit
    from trainables.feature_cache import FeatureCache

    torch.set_num_threads(1)  # as in a trial of one CPU
    data = limit_train(load_dataset("digits", DataOptions()), args.train_limit)
    cfg = TrialConfig(
        backbone="resnet18",
        weights=str(weights),
        freeze="backbone",
        image_size=args.image_size,
        max_epochs=1,
        batch_size=64,
    )
    cache = FeatureCache(folder / "loop-features", budget_bytes=2**31)
    runs = {"uncached": cfg.replace(feature_cache=False), "cold": cfg, "warm": cfg}
    seconds, metrics = {}, {}
    for label, run in runs.items():
        start = time.perf_counter()
        metrics[label] = list(fit(run, data, torch.device("cpu"), cache=cache))[-1].metrics
        seconds[label] = time.perf_counter() - start
    apart = max(
        abs(value - metrics["uncached"][key])
        for label in ("cold", "warm")
        for key, value in metrics[label].items()
    )
    return (
        f"loop alone, one epoch: uncached {seconds['uncached']:.1f} s, cached cold "
        f"{seconds['cold']:.1f} s, warm {seconds['warm']:.2f} s "
        f"({seconds['uncached'] / seconds['warm']:.0f}x); metrics at most {apart:.1e} apart"
    )


def format_table(timings: list[SweepTiming]) -> str:
    lines = [
        f"{'sweep':<9} {'trials':>6} {'time in trials s':>16} {'wall s':>7} "
        f"{'best ' + METRIC:>18} {'confirmed mean':>14}"
    ]
    for t in timings:
        lines.append(
            f"{t.label:<9} {t.trials:>6} {t.trial_s:>16.1f} {t.wall_s:>7.1f} "
            f"{t.best:>18.4f} {t.confirmed:>14.4f}"
        )
    cached, uncached = timings
    lines.append(
        f"time in trials, uncached / cached: {uncached.trial_s / cached.trial_s:.1f}x; "
        f"wall: {uncached.wall_s / cached.wall_s:.1f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="feature-cache-bench-") as temporary:
        folder = Path(args.folder or temporary).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / "resnet18.pth"
        make_weights(weights, args.image_size)
        print(
            f"resnet18, frozen, {args.image_size} px, digits with {args.train_limit} training "
            f"images; {args.num_samples} search + {args.confirm_seeds} confirmation trials of "
            f"{args.max_epochs} epochs; {args.num_cpus} trials at once",
            flush=True,
        )
        timings = [run_sweep(args, folder, weights, cached) for cached in (True, False)]
        print(format_table(timings), flush=True)
        print(time_loop(args, folder, weights))


if __name__ == "__main__":
    main()
