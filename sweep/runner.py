"""Runs a ``SweepPlan`` on Ray Tune: an equal-budget Optuna search per arm with ASHA early
stopping, then each arm's best config re-run on paired seeds. Trials log to MLflow themselves;
the callbacks (``sweep.callbacks``) print progress and close the runs of trials Ray stopped.

Both phases are one Ray Tune experiment under ``--storage-path``, named by the sweep's stamp
(``sweep.arms``: the searcher issues the confirmation runs once the search has ended, so they
run on the workers the search started). An experiment that exists is continued with
``Tuner.restore`` (searcher, scheduler and trials as they were), so ``tune.py --resume`` is
the same code path as a first run."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sweep.arms import ArmsScheduler, ArmsSearcher
from sweep.callbacks import (
    CloseRuns,
    DriverOptions,
    Progress,
    ReconcileSearcher,
    SchedulerState,
    SweepProgress,
    better,
    better_candidate,
    diverged,
    outcome_of,
    resumed_with,
    search_value,
)
from sweep.callbacks import stopped_early as stopped_early
from sweep.console import quiet_libraries
from sweep.lease import Holder, Lease
from sweep.local_ray import (
    LocalRay,
    LocalRayOptions,
    let_trials_take_warm_workers,
    local_ray_settings,
)
from sweep.plan import SweepPlan, UsageError
from sweep.ray_address import LOCAL
from sweep.resume import resume_command
from sweep.winner import finish_models, models_from_checkpoints
from trainables import contract, tracking
from trainables.checkpoint_pacing import CheckpointPolicy
from trainables.trial import TrackingTarget, train_trial

# Ray saves the experiment's state every few seconds: a killed driver loses at most that much
# of what the sweep knew (finished trials it had not yet recorded run again, briefly).
EXPERIMENT_STATE_PERIOD_S = "2"
ASHA_REDUCTION_FACTOR = 2
STAMP_FORMAT = "%Y%m%d-%H%M%S"  # tune.py's stamp of a sweep: when it started


class SweepInterrupted(Exception):
    """Ctrl-C (or a signal) stopped the sweep; its state is saved and ``--resume`` goes on."""

    def __init__(self, parent_run_id: str) -> None:
        super().__init__(parent_run_id)
        self.parent_run_id = parent_run_id


@dataclass
class ArmResult:
    arm: str
    best_config: dict[str, Any] | None = None
    best_value: float = float("nan")
    search_trials: int = 0
    stopped_early: int = 0
    diverged: int = 0
    nonfinite: int = 0  # ended normally, but some reported metric was NaN or infinite
    # Trials (of both phases) that could have trained on cached features and did not, and
    # the first one's reason (trainables.feature_cache).
    uncached: int = 0
    uncached_reason: str = ""
    failed: int = 0
    first_error: str = ""
    confirmation_values: list[float] = field(default_factory=list)
    confirmation_diverged: int = 0
    confirmation_failed: int = 0
    best_trial_path: str | None = None  # where Ray keeps the trial's checkpoint
    best_confirmation_path: str | None = None
    best_confirmation_value: float | None = None
    # The trained model (sweep.winner): the MLflow runs of the best trial and best seed, the
    # search trial's last checkpoint, the arm's model and, for the winner, its registration.
    best_trial_run_id: str | None = None
    best_trial_checkpoint: Any = None
    best_confirmation_run_id: str | None = None
    model_uri: str | None = None
    registered_model: str | None = None


def start_ray(plan: SweepPlan, early: LocalRay | None = None) -> bool:
    """Connect to ``--address`` or start a local Ray (or use ``early``, the one ``tune.py``
    started as it started, when it suits the plan); False when this process already had one
    (a notebook or a test session), which is then left running. Then refuse a sweep the
    cluster can never run (``sweep.cluster``), shutting down a Ray started here."""
    import ray

    from sweep import cluster

    quiet_libraries(plan.verbose)
    if early is not None:
        if early.suits(plan) and early.take():
            let_trials_take_warm_workers()
            return _check_cluster_or_stop(plan, early.close)
        early.close()  # started on a guess the whole command line contradicts, or none
    if ray.is_initialized():
        cluster.check_cluster(plan)
        return False
    kwargs = local_ray_settings(LocalRayOptions(plan.num_cpus, plan.verbose))
    joins = plan.address not in (None, LOCAL)  # --address local: a Ray of the sweep's own
    if joins:
        cluster.check_reachable(plan.address)  # Ray itself retries for minutes
        kwargs.pop("num_cpus", None)
        kwargs["address"] = plan.address
        # Trials get the store from their TrackingTarget; this covers any other MLflow call
        # on the nodes, whatever their own environment holds.
        kwargs["runtime_env"] = {"env_vars": {"MLFLOW_TRACKING_URI": plan.tracking_uri}}
    else:
        # Ray starts one idle worker per CPU for its first driver. Started here, after the
        # driver's imports, they only slow the trials' own start on a small machine (the
        # local Ray starts 0.7 s sooner without them); tune.py's early Ray does use them.
        kwargs["_system_config"] = {"prestart_worker_first_driver": False}
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError) as err:
        if not joins:
            raise
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UsageError(f"cannot join the Ray cluster at {plan.address}: {reason}") from None
    return _check_cluster_or_stop(plan, ray.shutdown)


def _check_cluster_or_stop(plan: SweepPlan, stop) -> bool:
    from sweep import cluster

    try:
        cluster.check_cluster(plan)
    except BaseException:
        stop()
        raise
    return True


def short_trial_dirname(trial) -> str:
    # Ray's default folder name spells out the whole config, past some filesystems' limits.
    return f"trial_{trial.trial_id}"


def _tune_metric(plan: SweepPlan) -> str:
    # Each trial reports its best-so-far value: Optuna learns from a trial's best epoch, and
    # ASHA compares trials by it, which a single noisy epoch cannot swing.
    return contract.best_metric(plan.metric)


def _trainable(plan: SweepPlan, target: TrackingTarget):
    from ray import tune

    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    checkpoints = CheckpointPolicy(
        asha_rungs(plan.grace_period, plan.max_epochs), model_roles=models_from_checkpoints(plan)
    )
    return tune.with_resources(
        tune.with_parameters(train_trial, data=plan.data, tracking=target, checkpoints=checkpoints),
        resources,
    )


def _run_config(plan: SweepPlan, name: str, callbacks: list) -> Any:
    from ray import tune

    return tune.RunConfig(
        name=name,
        storage_path=plan.storage_path,
        callbacks=callbacks,
        verbose=1 if plan.verbose else 0,
        # Two: the experiment state a killed driver leaves can lag one checkpoint behind, and
        # must still find the one it names. A finished sweep prunes them (prune_checkpoints).
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
    )


def driver_options(plan: SweepPlan, target: TrackingTarget) -> DriverOptions:
    # With --verbose Ray prints between our lines: a view redrawn in place would overwrite them.
    live = False if plan.verbose else None
    return DriverOptions(plan.quiet, live, _trials_at_once(plan), target)


def _progress(plan: SweepPlan, phase: str, total: int, driver: DriverOptions) -> Progress:
    return Progress(
        phase,
        total,
        _tune_metric(plan),
        plan.mode,
        plan.max_epochs,
        driver.quiet,
        arms=plan.arms,
        slots=driver.slots,
        live=driver.live,
    )


def experiment_name(plan: SweepPlan) -> str:
    """The sweep's Ray Tune experiment, both phases in one."""
    return f"{plan.space.name}-{plan.stamp}"


def _fit(plan: SweepPlan, trainable: Any, build, target: TrackingTarget):
    """Continue the sweep's experiment where it stands, or start it with ``build()``. Raises
    ``KeyboardInterrupt`` when Ctrl-C ended it before every trial did."""
    from ray import tune

    path = os.path.join(plan.storage_path, experiment_name(plan))
    repair_experiment_state(Path(path))
    if tune.Tuner.can_restore(path):
        with resumed_with(driver_options(plan, target)):  # the callbacks follow this command
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True)
    else:
        tuner = build()
    grid = _fit_watching_ctrl_c(tuner)
    # Trials a killed driver saw end, but did not get to close; one query, not one per trial.
    running = {r.info.run_id for r in _child_runs(target, running=True)}
    for result in grid:
        run_id = (result.metrics or {}).get("mlflow_run_id")
        if run_id in running and result.error is None:
            tracking.end_trial_run(target.uri, run_id, outcome_of(result.metrics, plan.max_epochs))
    return grid


def _child_runs(target: TrackingTarget, running: bool = False) -> list:
    return tracking.child_runs(
        target.uri, target.experiment_id, target.parent_run_id, running=running
    )


def repair_experiment_state(folder: Path) -> list[Path]:
    """Mend state files a killed driver left empty. Ray writes them atomically to a staging
    folder and copies them to a local ``--storage-path`` in the background; a kill during the
    copy leaves an empty file, and a restore that reads it silently starts the phase over.
    The staging copy (under Ray's temporary folder) is whole: put it back, else drop the empty
    file so Ray reads an older one. Returns the files mended or dropped."""
    if "://" in str(folder) or not folder.is_dir():
        return []
    mended = []
    states = (f for f in folder.iterdir() if f.suffix in {".json", ".pkl"} and f.is_file())
    for broken in (f for f in states if f.stat().st_size == 0):
        staged = sorted(
            _ray_temp_dir().glob(
                f"session_*/artifacts/*/{folder.name}/driver_artifacts/{broken.name}"
            ),
            key=lambda f: f.stat().st_mtime,
        )
        whole = [f for f in staged if f.stat().st_size > 0]
        if whole:
            shutil.copyfile(whole[-1], broken)
        else:
            broken.unlink()
        mended.append(broken)
    return mended


def _ray_temp_dir() -> Path:
    return Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _fit_watching_ctrl_c(tuner: Any) -> Any:
    """``tuner.fit()``, raising ``KeyboardInterrupt`` when Ctrl-C ended it. Ray catches the
    first Ctrl-C, saves the experiment and returns normally, putting back the handler it
    found: a marker handler installed here tells that apart from a finished fit."""
    if threading.current_thread() is not threading.main_thread():
        return tuner.fit()
    previous = signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    try:
        grid = tuner.fit()
        if signal.getsignal(signal.SIGINT) is _raise_keyboard_interrupt:
            raise KeyboardInterrupt
        return grid
    finally:
        signal.signal(signal.SIGINT, previous)


def search_and_confirm(plan: SweepPlan, trainable: Any, target: TrackingTarget) -> list[ArmResult]:
    """``plan.num_samples`` Optuna (TPE) trials per arm, all arms in one Tuner, each arm
    early-stopped by its own ASHA; then, in the same Tuner, each arm's best config on every
    confirmation pair (``sweep.arms``)."""
    # Ray starts one trial at a time under a searcher unless told otherwise; allow as many
    # as can run at once, so trials start together and an autoscaler sees the demand.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(_trials_at_once(plan)))
    grid = _fit(plan, trainable, lambda: _sweep_tuner(plan, trainable, target), target)
    arms = {arm: ArmResult(arm) for arm in plan.arms}
    for result in grid:
        config = result.config or {}  # a trial the searcher had not yet filled in has none
        if not config:
            continue
        _count_uncached(arms[config["arm"]], result.metrics or {})
        if contract.is_confirmation(config):
            _count_confirmation(arms[config["arm"]], result, plan)
        else:
            _count_search_trial(arms[config["arm"]], result, plan)
    return list(arms.values())


def _sweep_tuner(plan: SweepPlan, trainable: Any, target: TrackingTarget) -> Any:
    from ray import tune

    searched = plan.num_samples * len(plan.arms)
    pairs_per_arm = len(confirmation_pairs(plan))
    scheduler = _arms_scheduler(plan)
    searcher = ArmsSearcher(
        _arm_searchers(plan),
        plan.num_samples,
        _tune_metric(plan),
        plan.mode,
        plan.max_epochs,
        confirmation_pairs(plan),
    )
    driver = driver_options(plan, target)
    progress = SweepProgress(
        _progress(plan, "search", searched, driver),
        _progress(plan, "confirmation", 0, driver) if pairs_per_arm else None,
        pairs_per_arm,
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            # At most: an arm with no usable search trial has nothing to confirm.
            num_samples=searched + pairs_per_arm * len(plan.arms),
            max_concurrent_trials=plan.max_concurrent or None,
            trial_dirname_creator=short_trial_dirname,
            reuse_actors=True,  # a new trial skips the worker's start-up and imports
        ),
        run_config=_run_config(
            plan,
            experiment_name(plan),
            [
                progress,
                CloseRuns(target, plan.max_epochs),
                SchedulerState(scheduler),
                ReconcileSearcher(searcher, target),
            ],
        ),
    )


def confirmation_pairs(plan: SweepPlan) -> tuple[tuple[int, int], ...]:
    """The (split seed, seed) pairs each arm's best config is confirmed on."""
    return tuple((split, seed) for split in plan.split_seeds for seed in plan.confirm_seeds)


def _arm_searchers(plan: SweepPlan) -> dict[str, Any]:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces import ArmDefineByRun

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    startup = max(2, plan.num_samples // 2)
    return {
        arm: OptunaSearch(
            space=ArmDefineByRun(plan.space, arm, plan.context, plan.fixed),
            metric=_tune_metric(plan),
            mode=plan.mode,
            # Same seed per arm: the random start-up trials of every arm share their
            # common hyperparameters, a paired start before TPE takes over.
            sampler=optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=startup),
        )
        for arm in plan.arms
    }


def _arms_scheduler(plan: SweepPlan) -> ArmsScheduler:
    from ray.tune.schedulers import ASHAScheduler

    return ArmsScheduler(
        lambda: ASHAScheduler(
            time_attr="training_iteration",
            metric=_tune_metric(plan),
            mode=plan.mode,
            max_t=plan.max_epochs,
            grace_period=plan.grace_period,
            reduction_factor=ASHA_REDUCTION_FACTOR,
        ),
        plan.arms,
    )


def asha_rungs(grace_period: int, max_t: int) -> frozenset[int]:
    """The epochs at which ASHA decides whether a trial goes on, by Ray's own formula
    (``ray.tune.schedulers.async_hyperband._Bracket``): its trials checkpoint there."""
    import numpy as np

    rf = ASHA_REDUCTION_FACTOR
    count = int(np.log(max_t / grace_period) / np.log(rf) + 1)
    return frozenset(grace_period * rf**k for k in range(count))


def _count_uncached(arm: ArmResult, metrics: dict[str, Any]) -> None:
    """A trial whose epochs could have used the feature cache and did not (its last report's
    note, ``trainables.feature_cache.feature_cache_note``)."""
    note = metrics.get(contract.FEATURE_CACHE_TAG)
    if isinstance(note, str) and note.startswith(contract.FEATURE_CACHE_UNCACHED_PREFIX):
        arm.uncached += 1
        arm.uncached_reason = arm.uncached_reason or note.removeprefix(
            contract.FEATURE_CACHE_UNCACHED_PREFIX
        )


def _count_search_trial(arm: ArmResult, result: Any, plan: SweepPlan) -> None:
    arm.search_trials += 1
    metrics = result.metrics or {}
    if result.error is not None:  # its run is FAILED: not a config to confirm
        arm.failed += 1
        arm.first_error = arm.first_error or _error_line(result)
        return
    if diverged(metrics):
        arm.diverged += 1
        return
    arm.stopped_early += stopped_early(metrics, plan.max_epochs)
    arm.nonfinite += any(isinstance(v, float) and not math.isfinite(v) for v in metrics.values())
    value = search_value(metrics, False, _tune_metric(plan))
    best = None if arm.best_config is None else (arm.best_value, arm.best_config)
    if value is not None and better_candidate(value, result.config, best, plan.mode):
        arm.best_config, arm.best_value = dict(result.config), value
        arm.best_trial_path = result.path
        arm.best_trial_run_id = metrics.get("mlflow_run_id")
        arm.best_trial_checkpoint = result.checkpoint


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


def _count_confirmation(arm: ArmResult, result: Any, plan: SweepPlan) -> None:
    metrics, metric = result.metrics or {}, _tune_metric(plan)
    if result.error is not None:
        arm.confirmation_failed += 1
    elif diverged(metrics):
        arm.confirmation_diverged += 1
    elif metric in metrics:
        arm.confirmation_values.append(float(metrics[metric]))
        if arm.best_confirmation_path is None or better(
            float(metrics[metric]), arm.best_confirmation_value, plan.mode
        ):
            arm.best_confirmation_path = result.path
            arm.best_confirmation_value = float(metrics[metric])
            arm.best_confirmation_run_id = metrics.get("mlflow_run_id")


def run_sweep(
    plan: SweepPlan, early_ray: LocalRay | None = None
) -> tuple[list[ArmResult], str, str]:
    """The whole sweep under one MLflow parent run; returns the arms, experiment and run ids.
    With ``plan.parent_run_id`` set, the sweep of that run is continued. ``early_ray``: the
    local Ray ``tune.py`` started on a guess of the command line (``sweep.local_ray``)."""
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", EXPERIMENT_STATE_PERIOD_S)
    quiet_libraries(plan.verbose)
    if plan.address:
        from sweep import cluster

        cluster.check_reachable(plan.address)  # at once, before anything is written
    # The MLflow store starts while Ray does; a sweep the cluster cannot run leaves no store.
    experiment = tracking.PendingExperiment(plan.tracking_uri, plan.experiment)
    try:
        started_ray = start_ray(plan, early_ray)
    except BaseException:
        experiment.discard()
        raise
    status, parent, experiment_id, lease = "FAILED", None, "", None
    ray_stop = RayStop(started_ray, early_ray if early_ray and early_ray.taken else None)
    try:
        experiment_id = experiment.id()
        dataset = tracking.dataset_record(plan.data, plan.fixed["dataset"])
        parent, lease = _open_parent(plan, experiment_id, dataset)
        target = TrackingTarget(plan.tracking_uri, experiment_id, parent, plan.model_roles, dataset)
        # Built once, so the dataset enters Ray's object store once for both phases.
        trainable = _trainable(plan, target)
        arms = search_and_confirm(plan, trainable, target)
        ray_stop.begin()  # what is left needs the store and the checkpoint files, not Ray
        close_leftover_runs(target, contract.INTERRUPTED)
        answer_on_parent(plan, arms, target)  # first: the registered version quotes it
        finish_models(plan, arms, target)
        status = "FINISHED"
        prune_checkpoints(plan, arms)
        return arms, experiment_id, parent
    except KeyboardInterrupt:
        status = "KILLED"
        if parent is None:
            raise
        close_leftover_runs(
            TrackingTarget(plan.tracking_uri, experiment_id, parent), contract.INTERRUPTED
        )
        raise SweepInterrupted(parent) from None
    except Exception:
        # A crash (Ray's own, a lost head node's connection) keeps its traceback; what the
        # trials logged stays, their open runs are closed, and the sweep can be resumed.
        if parent is not None:
            close_leftover_runs(
                TrackingTarget(plan.tracking_uri, experiment_id, parent), contract.INTERRUPTED
            )
            print(
                "The sweep stopped on an error (below); once it is mended, resume with:\n"
                f"{resume_command(plan.argv, parent)}",
                file=sys.stderr,
                flush=True,
            )
        raise
    finally:
        if parent is not None:
            tracking.end_run(plan.tracking_uri, parent, status)
        if lease is not None:
            lease.release()
        ray_stop.finish()


class RayStop:
    """The shutdown of a Ray this sweep started: mostly waiting for its processes to end
    (about 1.4 s here), so it runs on a thread while the sweep writes its answer and models
    (``early``'s own thread, for the Ray tune.py started early)."""

    def __init__(self, started_ray: bool, early: LocalRay | None = None) -> None:
        self._started = started_ray
        self._early = early
        self._thread: threading.Thread | None = None
        self._collecting = False  # the garbage collector was on when ``begin`` turned it off

    def begin(self) -> None:
        """Start the shutdown, once the sweep's own Ray objects are gone. Unreachable objects
        of the Tuner's (trials, actor handles, object refs) are otherwise freed whenever the
        garbage collector next runs: if that is while the core worker is being torn down on
        the other thread, Ray ends the whole process with status 1 and no message (seen
        after a resumed sweep, in the middle of its answer)."""
        import gc

        import ray

        if not self._started:
            return
        gc.collect()
        # Nor while the shutdown runs: no later cycle can take a Ray object into the window.
        # (Nothing the sweep does from here on holds one, so no reference count falls to it.)
        if gc.isenabled():
            self._collecting = True
            gc.disable()
        if self._early is not None:
            self._early.begin_close()
        elif self._thread is None:
            self._thread = threading.Thread(target=ray.shutdown, name="ray-shutdown")
            self._thread.start()

    def finish(self) -> None:
        """Wait for a shutdown ``begin`` started, or shut down now."""
        import gc

        try:
            self._stop()
        finally:
            if self._collecting:
                self._collecting = False
                gc.enable()

    def _stop(self) -> None:
        if not self._started:
            return
        if self._early is not None:
            self._early.close()
        elif self._thread is None:
            import ray

            ray.shutdown()
        else:
            self._thread.join()


def _open_parent(
    plan: SweepPlan, experiment_id: str, dataset: tracking.DatasetRecord
) -> tuple[str, Lease]:
    """The sweep's parent run, and this driver's lease on it (``sweep.lease``): reopened when
    resuming (refused while another driver holds it), else created with what resume needs."""
    if plan.parent_run_id:
        lease = Lease.take(plan.tracking_uri, plan.parent_run_id)
        tracking.reopen_run(plan.tracking_uri, plan.parent_run_id)
        return plan.parent_run_id, lease
    driver = Holder.me()
    parent = tracking.start_parent_run(
        plan.tracking_uri,
        experiment_id,
        parent_run_name(plan),
        tags={
            contract.SPACE_TAG: plan.space.name,
            contract.FACTOR_TAG: plan.space.factor,
            contract.ARMS_TAG: contract.ARMS_SEPARATOR.join(plan.arms),
            contract.METRIC_TAG: plan.metric,
            contract.MODE_TAG: plan.mode,
            contract.ARGV_TAG: json.dumps(list(plan.argv)),
            contract.STAMP_TAG: plan.stamp,
            contract.STORAGE_TAG: plan.storage_path,
            contract.LEASE_TAG: driver.to_tag(),
            **plan.parent_tags,
        },
        params=plan.options,
        dataset=dataset,
    )
    tracking.log_json(plan.tracking_uri, parent, _class_summary(plan), contract.CLASSES_ARTIFACT)
    return parent, Lease(plan.tracking_uri, parent, driver)


def parent_run_name(plan: SweepPlan) -> str:
    """What ran, readable in the UI's run list, e.g.
    ``focal · focal vs ce · digits-lt · smallcnn · 11-23 15:40`` (the backbone is left out
    where the arms are backbones)."""
    parts = [plan.space.name, " vs ".join(plan.arms), plan.data.name]
    if plan.space.factor != "backbone":
        parts.append(",".join(plan.context.backbones))
    if plan.stamp:
        parts.append(_stamp_time(plan.stamp))
    return " · ".join(parts)


def _stamp_time(stamp: str) -> str:
    try:
        return time.strftime("%m-%d %H:%M", time.strptime(stamp, STAMP_FORMAT))
    except ValueError:  # a stamp of another form (a test's) is shown as it is
        return stamp


def answer_on_parent(plan: SweepPlan, arms: list[ArmResult], target: TrackingTarget) -> None:
    """After both phases: each arm's Optuna study saved with the parent run, and the sweep's
    answer (per-arm values, the paired difference, outcome counts) as its metrics and tags."""
    from sweep import answer, studies

    search_path = os.path.join(plan.storage_path, experiment_name(plan))
    shell = ArmsSearcher(_arm_searchers(plan), plan.num_samples, _tune_metric(plan), plan.mode)
    studies.save_studies(plan, shell, search_path, target)
    answer.log_answer(plan, arms, target)


def close_leftover_runs(target: TrackingTarget, outcome: str) -> int:
    """End every child run still open: trials Ctrl-C stopped, or runs a killed driver left
    behind whose trials Ray had not yet recorded. Returns how many."""
    leftovers = [run.info.run_id for run in _child_runs(target, running=True)]
    for run_id in leftovers:
        tracking.end_trial_run(target.uri, run_id, outcome)
    return len(leftovers)


def prune_checkpoints(plan: SweepPlan, arms: list[ArmResult]) -> int:
    """A finished sweep keeps one checkpoint per arm: the last one of its best confirmation
    run (of its best search trial without confirmation runs). The others only served a
    restart. Returns how many checkpoint folders were removed."""
    if "://" in plan.storage_path:
        return 0  # Ray's storage, not ours to walk; the bucket's lifecycle rules apply
    keep = {
        Path(p)
        for arm in arms
        if (p := arm.best_confirmation_path or arm.best_trial_path) and "://" not in p
    }
    removed = 0
    for trial in (Path(plan.storage_path) / experiment_name(plan)).glob("*/"):
        checkpoints = sorted(trial.glob("checkpoint_*"))
        kept = checkpoints[-1:] if trial in keep else []
        for checkpoint in checkpoints:
            if checkpoint not in kept:
                shutil.rmtree(checkpoint, ignore_errors=True)
                removed += 1
    return removed


def _class_summary(plan: SweepPlan) -> dict[str, Any]:
    data = plan.data
    return {
        "dataset": data.name,
        "classes": list(data.classes),
        "train_counts": data.class_counts("train").tolist(),
        "val_counts": data.class_counts("val").tolist(),
        "test_counts": data.class_counts("test").tolist(),
        "multilabel": data.multilabel,
    }
