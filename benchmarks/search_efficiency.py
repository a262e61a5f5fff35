"""Does the search search? TPE and ASHA against random search at equal trial budgets.

For each dataset, each of ``--seeds`` seeds searches one arm of a space (``--space focal
--arms ce``, smallcnn) with ``--num-samples`` trials under four methods: TPE+ASHA (the tool's
default), random+ASHA, TPE alone and random alone. Each method is one Ray Tune ``Tuner``
built from the tool's own objects: ``sweep.arms.ArmsSearcher`` over Ray's ``OptunaSearch``
with the space's ``ArmDefineByRun`` and ``sweep.methods.arm_sampler``, and
``sweep.methods.arms_scheduler``. The seeds are the Tuner's arms, as a sweep's arms are: each
has its own sampler (seeded by it, as ``--seed`` seeds a sweep's) and its own ASHA, and trains
with that seed; the train/val split is the same for all. The trainable calls the engine
directly (no MLflow, no train-split evaluation) and reports each epoch's best
``val_macro_f1`` so far, as the tool's trial does. Datasets: the embedded ``digits-lt``, and
``fashionmnist`` from Debian's dataset-fashion-mnist (``apt-get install -y
dataset-fashion-mnist``; its gzipped idx files read by ``trainables.data``), a stratified
``--fashion-train`` / ``--fashion-val`` subset at 28 px so an epoch stays cheap.

A config trains once: its per-epoch values are kept (``--cache``), and a later trial with the
same config replays them epoch by epoch (training is seeded and deterministic on the CPU). So
random+ASHA, whose samplers draw random alone's configs, and TPE's random start (the first
``max(2, num_samples // 3)`` trials, drawn by the same seeded random sampler) cost no
training. Epochs are counted as reported, replayed or not.

Printed: the anytime curve (the best value found vs epochs spent, summed over trials in start
order), median over seeds, at a few budgets; the epochs each method needs to reach random
alone's final median best, and their ratio to random alone's budget; the final best of each
method against random alone by the project's paired comparison (``analysis.stats``, paired
by seed); what ASHA cost: in the random+ASHA runs, how often the config that was random
alone's best was stopped early (the same configs), and, on the complete curves of the runs
without ASHA, the tool's ASHA scheduler applied offline in start order. The figure:
``--figure``. Records are kept in ``--records``: a later run adds the methods it lacks (the
variants), and the tables cover every method it holds; ``--first-seed`` runs another set of
seeds (a replication, in records of its own). docs/search_efficiency.md: results.

    python benchmarks/search_efficiency.py                  # 2 datasets x 10 seeds (~30 min)
    python benchmarks/search_efficiency.py --methods tpe/2+asha/rf2,tpe/2  # variants (~10)
    python benchmarks/search_efficiency.py --first-seed 10 --records R.json   # seeds 10..19
    python benchmarks/search_efficiency.py --datasets digits-lt --seeds 3 --num-samples 8
    python benchmarks/search_efficiency.py --analyse-only   # the tables again, from --records
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search_efficiency_numbers import (  # noqa: E402  (beside this script)
    BASELINE,
    TrialRecord,
    anytime_table,
    asha_offline_cost,
    asha_run_cost,
    asha_table,
    comparison_table,
    draw,
    load_records,
    reach_table,
    save_records,
    shared_configs,
    summarise,
    with_every_seed,
)

FASHION_FILES = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


@dataclass(frozen=True)
class Method:
    name: str
    searcher: str  # sweep.methods.SEARCHERS
    scheduler: str  # sweep.methods.SCHEDULERS
    grace_period: int | None = None  # None: --grace-period's, else the tool's default


# In the order they run: the methods without ASHA first, so the ASHA runs replay their configs.
# The four use the tool's sampler and scheduler as they are (sweep.methods).
METHODS = (
    Method("random", "random", "none"),
    Method("tpe", "tpe", "none"),
    Method("random+asha", "random", "asha"),
    Method("tpe+asha", "tpe", "asha"),
    # Variants, run only when --methods names them: tpe/N samples the first 1/N of the trials
    # at random (the tool's N: sweep.methods.STARTUP_SHARE), rfN is ASHA's reduction factor
    # (the tool's: ASHA_REDUCTION_FACTOR), g1 a grace period of 1, indep TPE one parameter at
    # a time. tpe/2+asha/rf2 was the tool's default before the benchmark.
    Method("tpe/2+asha/rf2", "tpe-half", "asha-rf2"),
    Method("tpe/2", "tpe-half", "none"),
    Method("random+asha/rf2", "random", "asha-rf2"),
    Method("tpe/4+asha/rf2", "tpe-quarter", "asha-rf2"),
    Method("tpe/2+asha/rf2/g1", "tpe-half", "asha-rf2", grace_period=1),
    Method("tpe/3+asha/rf2", "tpe", "asha-rf2"),
    Method("tpe/2-indep+asha/rf2", "tpe-half-indep", "asha-rf2"),
    Method("tpe/2+asha/rf3", "tpe-half", "asha"),
)
DEFAULT_METHODS = "random,tpe,random+asha,tpe+asha"

# Variant samplers: 1/N of the trials sampled at random first, and whether TPE models the
# parameters jointly (Optuna 5's default, as the tool's) or one by one (Optuna 4's default).
TPE_VARIANTS = {"tpe-half": (2, True), "tpe-quarter": (4, True), "tpe-half-indep": (2, False)}


def register_variants() -> None:
    from sweep import methods

    for name, (share, multivariate) in TPE_VARIANTS.items():
        if name not in methods.SEARCHERS.names():
            make = functools.partial(
                methods.tpe_sampler, startup_share=share, multivariate=multivariate
            )
            methods.SEARCHERS.register(name, make)
    if "asha-rf2" not in methods.SCHEDULERS.names():
        make = functools.partial(methods.asha_scheduler, reduction_factor=2)
        rungs = lambda plan: methods.asha_rungs(plan.grace_period, plan.max_epochs, 2)  # noqa: E731
        methods.SCHEDULERS.register("asha-rf2", methods.Scheduler(make, rungs))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="digits-lt,fashionmnist")
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0, help="seeds run from it (a replication)")
    p.add_argument("--num-samples", type=int, default=24, help="trials per seed and method")
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--grace-period", type=int, default=None, help="default: the tool's")
    p.add_argument("--space", default="focal")
    p.add_argument("--arm", default="ce")
    p.add_argument("--backbone", default="smallcnn")
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help=f"of {', '.join(m.name for m in METHODS)} (default {DEFAULT_METHODS})",
    )
    p.add_argument("--fashion-train", type=int, default=1000, help="stratified train images")
    p.add_argument("--fashion-val", type=int, default=500, help="stratified val images")
    p.add_argument("--cpus", type=int, default=2, help="Ray's CPUs: trials at once")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "search_efficiency"))
    p.add_argument(
        "--records",
        default="",
        help="default: CACHE/records.json; with --analyse-only, several (comma-separated) pool",
    )
    p.add_argument("--figure", default=str(ROOT / "docs" / "search_efficiency.png"))
    p.add_argument("--analyse-only", action="store_true", help="no runs: the tables from --records")
    p.add_argument(
        "--fresh",
        action="store_true",
        help="run every method again (default: keep the methods --records holds, same seeds)",
    )
    return p


# The data and the plan: the tool's own.
def fashion_root(cache: Path) -> Path:
    """A DATA_ROOT whose FashionMNIST/raw holds Debian's gzipped idx files (links)."""
    raw = cache / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for file in FASHION_FILES.glob("*-ubyte.gz"):
        if not (raw / file.name).exists():
            (raw / file.name).symlink_to(file)
    return raw.parents[1]


def tool_plan(dataset: str, method: Method, args: argparse.Namespace):
    """The tool's plan for one seed's sweep of ``method``, as ``tune.py`` would build it."""
    from sweep.options import parse_args
    from sweep.plan import build_plan

    register_variants()
    argv = [
        *("--space", args.space, "--arms", args.arm, "--backbone", args.backbone),
        *("--dataset", dataset, "--num-samples", str(args.num_samples)),
        *("--max-epochs", str(args.max_epochs), "--seed", "0", "--address", "local"),
        *("--searcher", method.searcher, "--scheduler", method.scheduler),
        *("--storage-path", str(Path(args.cache) / "ray")),
    ]
    grace_period = method.grace_period or args.grace_period
    if grace_period:
        argv += ["--grace-period", str(grace_period)]
    if dataset == "fashionmnist":
        argv += ["--data-root", str(fashion_root(Path(args.cache)))]
        argv += ["--train-limit", str(args.fashion_train)]
    plan = build_plan(parse_args(argv))
    if dataset == "fashionmnist":
        plan = dataclasses.replace(plan, data=limit_val(plan.data, args.fashion_val))
    return plan


def limit_val(data, limit: int):
    """At most ``limit`` validation images, drawn stratified as ``limit_train`` draws."""
    from trainables.data import limit_train

    swapped = dataclasses.replace(data, train_x=data.val_x, train_y=data.val_y)
    kept = limit_train(swapped, limit, 0)
    return dataclasses.replace(data, val_x=kept.train_x, val_y=kept.train_y)


def seed_plan(plan, seed: int):
    """The sweep ``--seed SEED`` would run (its sampler's seed and the trials' seed), on the
    data of seed 0's split, so seeds differ in the search alone."""
    return dataclasses.replace(plan, seed=seed, fixed={**plan.fixed, "seed": seed})


@dataclass(frozen=True)
class SeedArm:
    """The arm's define-by-run space, its trials labelled by seed: the Tuner's arms."""

    define: Any  # search_spaces.ArmDefineByRun
    label: str

    def __call__(self, trial) -> dict[str, Any]:
        return {**self.define(trial), "arm": self.label}


def seed_label(seed: int) -> str:
    return f"seed{seed}"


def seed_searchers(plan, seeds: Sequence[int]) -> dict[str, Any]:
    """Each seed's ``OptunaSearch`` as ``sweep.runner._arm_searchers`` builds an arm's."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import ArmDefineByRun
    from sweep.methods import arm_sampler
    from sweep.tally import tune_metric

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    arm = plan.arms[0]
    searchers = {}
    for seed in seeds:
        own = seed_plan(plan, seed)
        space = ArmDefineByRun(own.space, arm, own.context, own.fixed)
        searchers[seed_label(seed)] = OptunaSearch(
            space=SeedArm(space, seed_label(seed)),
            metric=tune_metric(own),
            mode=own.mode,
            sampler=arm_sampler(own, arm),
        )
    return searchers


# The trainable: the engine, each config trained once.
def config_key(config: dict[str, Any]) -> str:
    kept = {k: v for k, v in config.items() if k != "arm"}
    return hashlib.sha1(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def trained_epochs(config: dict[str, Any], data) -> Iterator[tuple[float | None, bool]]:
    """Each epoch's val metric (None once it diverged), trained by the engine."""
    import torch

    from trainables.config import TrialConfig
    from trainables.engine import (
        TrainingDiverged,
        build_training_state,
        evaluate,
        pick_device,
        split_metrics,
        train_one_epoch,
    )

    cfg = TrialConfig.from_dict({k: v for k, v in config.items() if k != "arm"})
    torch.set_num_threads(cfg.num_threads)
    device = pick_device()
    state = build_training_state(cfg, data, device)
    common = {"amp": cfg.amp, "channels_last": cfg.channels_last}
    for _ in range(cfg.max_epochs):
        try:
            train_one_epoch(
                state.model,
                state.criterion,
                state.optimizer,
                data.train_x,
                data.train_y,
                device,
                batch_size=cfg.batch_size,
                rng=state.rng,
                **common,
            )
            val = evaluate(
                state.model,
                state.criterion,
                data.val_x,
                data.val_y,
                device,
                task=data.task,
                **common,
            )
            value = split_metrics(val, data, "val")[cfg.metric]
            if not np.isfinite(value):
                raise TrainingDiverged(f"{cfg.metric} is {value}")
        except TrainingDiverged:
            yield None, False
            return
        yield float(value), False


def cached_epochs(path: Path) -> Iterator[tuple[float | None, bool]] | None:
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return iter([(v, True) for v in saved["values"]])


def replay_trial(config: dict[str, Any], *, data, cache: str) -> None:
    """Ray Tune's function trainable: the epochs' best value so far, reported each epoch as
    ``trainables.edge.trial`` reports them; a diverged trial as it reports one."""
    from ray import tune

    from trainables.contract import best_metric
    from trainables.edge.trial import DIVERGED_KEY

    metric = config["metric"]
    path = Path(cache) / f"{config_key(config)}.json"
    epochs = cached_epochs(path) or trained_epochs(config, data)
    seen: list[float | None] = []
    best = float("nan")
    for epoch, (value, replayed) in enumerate(epochs, start=1):
        seen.append(value)
        if value is None:
            tune.report({best_metric(metric): best, "epoch": epoch, DIVERGED_KEY: 1})
            break
        best = value if np.isnan(best) else max(best, value)
        if len(seen) == config["max_epochs"] and not replayed:
            save_curve(path, seen)  # before the last report: ASHA may end the trial in it
        report = {metric: value, best_metric(metric): best, "epoch": epoch}
        tune.report({**report, "replayed": int(replayed)})
    if seen and seen[-1] is None and not path.is_file():
        save_curve(path, seen)


def save_curve(path: Path, values: list[float | None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(f".{os.getpid()}.part")
    part.write_text(json.dumps({"values": values}))
    part.replace(path)


# One method's Tuner.
def trial_log():
    """A callback keeping every trial's start order and reports, in the driver."""
    from ray.tune import Callback

    class TrialLog(Callback):
        def __init__(self) -> None:
            self.started: list[str] = []
            self.configs: dict[str, dict[str, Any]] = {}
            self.results: dict[str, list[dict[str, Any]]] = {}

        def on_trial_start(self, iteration, trials, trial, **info) -> None:
            if trial.trial_id not in self.configs:
                self.started.append(trial.trial_id)
                self.configs[trial.trial_id] = dict(trial.config)

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            self.results.setdefault(trial.trial_id, []).append(dict(result))

    return TrialLog()


def run_method(
    dataset: str, method: Method, seeds: Sequence[int], args: argparse.Namespace
) -> list[TrialRecord]:
    from ray import tune

    from sweep.arms import ArmsSearcher
    from sweep.methods import arms_scheduler
    from sweep.runner import short_trial_dirname
    from sweep.tally import tune_metric

    plan = tool_plan(dataset, method, args)
    labels = tuple(seed_label(s) for s in seeds)
    searcher = ArmsSearcher(
        seed_searchers(plan, seeds), plan.num_samples, tune_metric(plan), plan.mode,
        plan.max_epochs,
    )  # fmt: skip
    log = trial_log()
    cache = Path(args.cache) / "curves" / data_tag(dataset, args)
    trainable = tune.with_resources(
        tune.with_parameters(replay_trial, data=plan.data, cache=str(cache)), {"cpu": 1}
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=arms_scheduler(dataclasses.replace(plan, arms=labels)),
            num_samples=plan.num_samples * len(seeds),
            max_concurrent_trials=args.cpus,
            trial_dirname_creator=short_trial_dirname,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{dataset}-{method.name}-{int(time.time())}",
            storage_path=str(Path(args.cache) / "ray"),
            callbacks=[log],
            verbose=0,
        ),
    )
    tuner.fit()
    return records_of(log, dataset, method, plan.fixed["metric"])


def data_tag(dataset: str, args: argparse.Namespace) -> str:
    if dataset == "fashionmnist":
        return f"{dataset}-{args.fashion_train}-{args.fashion_val}"
    return dataset


def records_of(log, dataset: str, method: Method, metric: str) -> list[TrialRecord]:
    from trainables.contract import best_metric
    from trainables.edge.trial import DIVERGED_KEY

    orders: dict[str, int] = {}
    records = []
    for trial_id in log.started:
        config = log.configs[trial_id]
        seed = int(config["seed"])
        orders[seed] = orders.get(seed, 0) + 1
        results = log.results.get(trial_id, [])
        diverged = any(r.get(DIVERGED_KEY) for r in results)
        values = [float(r[best_metric(metric)]) for r in results if not r.get(DIVERGED_KEY)]
        replayed = bool(results) and all(
            r.get("replayed") for r in results if not r.get(DIVERGED_KEY)
        )
        searched = {k: config.get(k) for k in ("lr", "momentum", "batch_size", "freeze", "gamma")}
        records.append(
            TrialRecord(
                dataset, method.name, seed, orders[seed], values, diverged, replayed, searched
            )
        )
    return records


def run_all(args: argparse.Namespace) -> list[TrialRecord]:
    import ray

    from sweep.local_ray import LocalRayOptions, local_ray_settings

    chosen = [m for m in METHODS if m.name in args.methods.split(",")]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    # Ray's workers import the project as the driver does; under a searcher Ray starts one
    # trial at a time unless told otherwise (as ``sweep.runner`` does).
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
    )
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(args.cpus))
    ray.init(**local_ray_settings(LocalRayOptions(num_cpus=args.cpus)))
    records = [] if args.fresh else kept_records(Path(args.records), seeds)
    done = {(r.dataset, r.method) for r in records}
    try:
        for dataset in args.datasets.split(","):
            for method in chosen:
                if (dataset, method.name) in done:
                    continue
                started = time.perf_counter()
                found = run_method(dataset, method, seeds, args)
                records += found
                trained = sum(r.epochs for r in found if not r.replayed)
                print(
                    f"{dataset} {method.name}: {len(found)} trials, "
                    f"{sum(r.epochs for r in found)} epochs ({trained} trained), "
                    f"{time.perf_counter() - started:.0f} s",
                    flush=True,
                )
                save_records(records, Path(args.records))
    finally:
        ray.shutdown()
    return records


def kept_records(path: Path, seeds: Sequence[int]) -> list[TrialRecord]:
    """The records of an earlier run with the same seeds, to add methods to (or resume)."""
    if not path.is_file():
        return []
    records = load_records(path)
    return records if {r.seed for r in records} == set(seeds) else []


def report(records: Sequence[TrialRecord], args: argparse.Namespace) -> None:
    metric = "val_macro_f1"
    budget = args.num_samples * args.max_epochs
    datasets = list(dict.fromkeys(r.dataset for r in records))
    summaries = [summarise(records, d, budget) for d in datasets]
    for summary in summaries:
        print(f"\n{anytime_table(summary)}\n\n{reach_table(summary)}")
        print(f"\n{comparison_table(summary, metric)}")
        print(f"\n{shared_configs(records, summary.dataset, 'tpe+asha', 'tpe')} trials")
    costs = []
    for dataset in datasets:
        of_dataset = [r for r in records if r.dataset == dataset]
        plan = tool_plan(dataset, METHODS[0], args)
        costs.append((dataset, asha_run_cost(of_dataset)))
        for scheduler in asha_schedulers(records):
            costs += [
                (dataset, asha_offline_cost(plan, of_dataset, m, scheduler))
                for m in (BASELINE, "tpe")
            ]
    print(f"\n{asha_table(costs)}")
    draw(summaries, Path(args.figure))
    print(f"\nfigure: {args.figure}")


def asha_schedulers(records: Sequence[TrialRecord]) -> list[str]:
    """The ASHA schedulers the recorded methods ran, the tool's first."""
    ran = {r.method for r in records}
    names = {m.scheduler for m in METHODS if m.name in ran and m.scheduler.startswith("asha")}
    return sorted(names, key=lambda name: (name != "asha", name))


def main(args: argparse.Namespace) -> None:
    args.records = args.records or str(Path(args.cache) / "records.json")
    if not args.analyse_only:
        report(run_all(args), args)
        return
    pooled = [r for path in args.records.split(",") for r in load_records(Path(path))]
    records, left_out = with_every_seed(pooled)
    if left_out:
        print(f"not run on every seed, left out: {', '.join(left_out)}")
    report(records, args)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
