"""Runs a ``SweepPlan`` on Ray Tune: an equal-budget Optuna search per arm with ASHA early
stopping, then each arm's best config re-run on paired seeds. Trials log to MLflow themselves;
the callbacks here only print progress and close the runs of trials Ray stopped."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from ray.tune import Callback

from sweep.arms import ArmsScheduler, ArmsSearcher
from sweep.plan import SweepPlan, UsageError
from trainables import tracking
from trainables.trial import TrackingTarget, train_trial


@dataclass
class ArmResult:
    arm: str
    best_config: dict[str, Any] | None = None
    best_value: float = float("nan")
    search_trials: int = 0
    stopped_early: int = 0
    failed: int = 0
    first_error: str = ""
    confirmation_values: list[float] = field(default_factory=list)


def start_ray(plan: SweepPlan) -> bool:
    """Connect to ``--address`` or start a local Ray; False when this process already had one
    (a notebook or a test session), which is then left running. Then refuse a sweep the
    cluster can never run (``sweep.cluster``), shutting down a Ray started here."""
    import ray

    from sweep import cluster

    if ray.is_initialized():
        cluster.check_cluster(plan)
        return False

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": not plan.quiet,
    }
    if plan.address:
        cluster.check_reachable(plan.address)  # Ray itself retries for minutes
        kwargs["address"] = plan.address
        # Trials get the store from their TrackingTarget; this covers any other MLflow call
        # on the nodes, whatever their own environment holds.
        kwargs["runtime_env"] = {"env_vars": {"MLFLOW_TRACKING_URI": plan.tracking_uri}}
    elif plan.num_cpus:
        kwargs["num_cpus"] = plan.num_cpus
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as err:
        if not plan.address:
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"cannot join the Ray cluster at {plan.address}: {reason}") from None
    try:
        cluster.check_cluster(plan)
    except BaseException:
        ray.shutdown()
        raise
    return True


def short_trial_dirname(trial) -> str:
    # Ray's default folder name spells out the whole config, past some filesystems' limits.
    return f"trial_{trial.trial_id}"


def _tune_metric(plan: SweepPlan) -> str:
    # Each trial reports its best-so-far value: Optuna learns from a trial's best epoch, and
    # ASHA compares trials by it, which a single noisy epoch cannot swing.
    return f"best_{plan.metric}"


def _trainable(plan: SweepPlan, target: TrackingTarget):
    from ray import tune

    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    return tune.with_resources(
        tune.with_parameters(train_trial, data=plan.data, tracking=target), resources
    )


def _run_config(plan: SweepPlan, name: str, callbacks: list) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=plan.storage_path,
        callbacks=callbacks,
        verbose=0 if plan.quiet else 1,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
    )


def search_arms(
    plan: SweepPlan, trainable: Any, target: TrackingTarget, stamp: str
) -> list[ArmResult]:
    """``plan.num_samples`` Optuna (TPE) trials per arm, all arms in one Tuner, each arm
    early-stopped by its own ASHA."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import ArmDefineByRun

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    metric = _tune_metric(plan)
    startup = max(2, plan.num_samples // 2)
    searchers = {
        arm: OptunaSearch(
            space=ArmDefineByRun(plan.space, arm, plan.context, plan.fixed),
            metric=metric,
            mode=plan.mode,
            # Same seed per arm: the random start-up trials of every arm share their
            # common hyperparameters, a paired start before TPE takes over.
            sampler=optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=startup),
        )
        for arm in plan.arms
    }
    scheduler = ArmsScheduler(
        lambda: ASHAScheduler(
            time_attr="training_iteration",
            metric=metric,
            mode=plan.mode,
            max_t=plan.max_epochs,
            grace_period=plan.grace_period,
            reduction_factor=2,
        ),
        plan.arms,
    )
    total = plan.num_samples * len(plan.arms)
    progress = Progress(plan, "search", total)
    # Ray starts one trial at a time under a searcher unless told otherwise; allow as many
    # as can run at once, so trials start together and an autoscaler sees the demand.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(_trials_at_once(plan)))
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=ArmsSearcher(searchers, plan.num_samples, metric, plan.mode),
            scheduler=scheduler,
            num_samples=total,
            max_concurrent_trials=plan.max_concurrent or None,
            trial_dirname_creator=short_trial_dirname,
            reuse_actors=True,  # a new trial skips the worker's start-up and imports
        ),
        run_config=_run_config(
            plan,
            f"{plan.space.name}-search-{stamp}",
            [progress, CloseRuns(target, plan.max_epochs)],
        ),
    )
    grid = tuner.fit()
    arms = {arm: ArmResult(arm) for arm in plan.arms}
    for result in grid:
        arm = arms[result.config["arm"]]
        arm.search_trials += 1
        if result.error is not None:
            arm.failed += 1
            arm.first_error = arm.first_error or _error_line(result)
        metrics = result.metrics or {}
        arm.stopped_early += stopped_early(metrics, plan.max_epochs)
        value = metrics.get(metric)
        if value is not None and (
            arm.best_config is None or _better(value, arm.best_value, plan.mode)
        ):
            arm.best_config, arm.best_value = dict(result.config), float(value)
    return list(arms.values())


def stopped_early(result: dict, max_epochs: int) -> bool:
    """Reported some epochs but not all: the scheduler ended it (errors are counted apart)."""
    return 0 < result.get("training_iteration", 0) < max_epochs


def _error_line(result) -> str:
    """The exception's last line and where Ray keeps the whole traceback."""
    text = str(result.error).strip().splitlines()
    where = f" (traceback: {result.path}/error.txt)" if result.path else ""
    return (text[-1] if text else type(result.error).__name__) + where


def _trials_at_once(plan: SweepPlan) -> int:
    """``--max-concurrent`` when given, else what the nodes alive now can run together."""
    import ray

    if plan.max_concurrent:
        return plan.max_concurrent
    resources = ray.cluster_resources()
    fits = [resources.get("CPU", 1) / max(plan.cpus_per_trial, 1e-9)]
    if plan.gpus_per_trial:
        fits.append(resources.get("GPU", 0) / plan.gpus_per_trial)
    return max(1, int(min(fits)))


def _better(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best


def confirm(
    plan: SweepPlan, trainable: Any, arms: list[ArmResult], target: TrackingTarget, stamp: str
) -> None:
    """Each arm's best config on every confirmation seed, all run to the last epoch. Arms
    share the split and, per seed, the initial weights, so runs pair up by seed."""
    from ray import tune

    variants = [
        {**arm.best_config, "seed": seed, "role": "confirmation"}
        for arm in arms
        if arm.best_config
        for seed in plan.confirm_seeds
    ]
    if not variants:
        return
    metric = _tune_metric(plan)
    progress = Progress(plan, "confirmation", len(variants))
    tuner = tune.Tuner(
        trainable,
        param_space={"variant": tune.grid_search(variants)},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=plan.max_concurrent or None,
            trial_dirname_creator=short_trial_dirname,
            reuse_actors=True,
        ),
        run_config=_run_config(
            plan,
            f"{plan.space.name}-confirm-{stamp}",
            [progress, CloseRuns(target, plan.max_epochs)],
        ),
    )
    by_arm = {arm.arm: arm for arm in arms}
    for result in tuner.fit():
        if result.metrics and metric in result.metrics:
            by_arm[result.config["variant"]["arm"]].confirmation_values.append(
                float(result.metrics[metric])
            )


def run_sweep(plan: SweepPlan) -> tuple[list[ArmResult], str, str]:
    """The whole sweep under one MLflow parent run; returns the arms, experiment and run ids."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started_ray = start_ray(plan)  # first: a sweep the cluster cannot run leaves no MLflow run
    status, parent = "FAILED", None
    try:
        experiment_id = tracking.ensure_experiment(plan.tracking_uri, plan.experiment)
        parent = tracking.start_parent_run(
            plan.tracking_uri,
            experiment_id,
            f"{plan.space.name}-sweep-{stamp}",
            tags={
                "space": plan.space.name,
                "factor": plan.space.factor,
                "arms": ",".join(plan.arms),
                "metric": plan.metric,
                "mode": plan.mode,
            },
            params=plan.options,
        )
        tracking.log_json(plan.tracking_uri, parent, _class_summary(plan), "data/classes.json")
        target = TrackingTarget(plan.tracking_uri, experiment_id, parent)
        # Built once, so the dataset enters Ray's object store once for both phases.
        trainable = _trainable(plan, target)
        arms = search_arms(plan, trainable, target, stamp)
        confirm(plan, trainable, arms, target, stamp)
        status = "FINISHED"
        return arms, experiment_id, parent
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if parent is not None:
            tracking.end_run(plan.tracking_uri, parent, status)
        if started_ray:
            import ray

            ray.shutdown()


def _class_summary(plan: SweepPlan) -> dict[str, Any]:
    data = plan.data
    return {
        "dataset": data.name,
        "classes": list(data.classes),
        "train_counts": data.class_counts("train").tolist(),
        "val_counts": data.class_counts("val").tolist(),
        "multilabel": data.multilabel,
    }


class Progress(Callback):
    """One line per finished trial: counts of done, running and stopped, and the best so far."""

    def __init__(self, plan: SweepPlan, phase: str, total: int) -> None:
        self.metric = _tune_metric(plan)
        self.mode = plan.mode
        self.max_epochs = plan.max_epochs
        self.phase = phase
        self.total = total
        self.quiet = plan.quiet
        self.done = 0
        self.stopped_early = 0
        self.best: float | None = None

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        self.done += 1
        self.stopped_early += stopped_early(result, self.max_epochs)
        value = result.get(self.metric)
        if value is not None and (
            self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        ):
            self.best = float(value)
        running = sum(t.status == "RUNNING" for t in trials)
        if not self.quiet:
            best = "n/a" if self.best is None else f"{self.best:.4f}"
            print(
                f"[{self.phase}] {self.done}/{self.total} trials done "
                f"({self.stopped_early} stopped early), {running} running; "
                f"best {self.metric.removeprefix('best_')} so far {best}",
                flush=True,
            )


class CloseRuns(Callback):
    """Ends the MLflow run of a trial Ray stopped early or lost: the trial cannot do it."""

    def __init__(self, target: TrackingTarget, max_epochs: int) -> None:
        self.target = target
        self.max_epochs = max_epochs

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        run_id = result.get("mlflow_run_id")
        if run_id:
            outcome = "stopped_early" if stopped_early(result, self.max_epochs) else "completed"
            tracking.set_tags(self.target.uri, run_id, {"outcome": outcome})
            tracking.end_run(self.target.uri, run_id, "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if run_id:
            tracking.set_tags(self.target.uri, run_id, {"outcome": "failed"})
            tracking.end_run(self.target.uri, run_id, "FAILED")
