"""Runs a ``SweepPlan`` on Ray Tune: an equal-budget Optuna search per arm with ASHA early
stopping, then each arm's best config re-run on paired seeds. Trials log to MLflow themselves;
the callbacks (``sweep.callbacks``) print progress and close the runs of trials Ray stopped.

Both phases are one Ray Tune experiment under ``--storage-path``, named by the sweep's stamp
(``sweep.arms``: the searcher issues the confirmation runs once the search has ended, so they
run on the workers the search started). An experiment that exists is continued with
``Tuner.restore`` (searcher, scheduler and trials as they were), so ``tune.py --resume`` is
the same code path as a first run."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

from sweep.arms import ArmsSearcher
from sweep.callbacks import (
    CloseRuns,
    DriverOptions,
    Progress,
    ReconcileSearcher,
    SchedulerState,
    SweepProgress,
    outcome_of,
    resumed_with,
)
from sweep.console import quiet_libraries
from sweep.local_ray import LocalRay
from sweep.methods import arm_sampler, arms_scheduler, decision_epochs
from sweep.parent_run import child_runs, close_leftover_runs, open_parent
from sweep.plan import SweepPlan
from sweep.ray_address import LOCAL
from sweep.ray_session import (
    RayStop,
    fit_watching_ctrl_c,
    repair_experiment_state,
    start_ray,
    trials_at_once,
)
from sweep.resume import resume_command
from sweep.tally import ArmResult, tally, tune_metric
from sweep.winner import finish_models, models_from_checkpoints
from trainables.edge import tracking
from trainables.edge.checkpoint_pacing import CheckpointPolicy
from trainables.edge.trial import TrackingTarget, train_trial

# Ray saves the experiment's state every few seconds: a killed driver loses at most that much
# of what the sweep knew (finished trials it had not yet recorded run again, briefly).
EXPERIMENT_STATE_PERIOD_S = "2"


class SweepInterrupted(Exception):
    """Ctrl-C (or a signal) stopped the sweep; its state is saved and ``--resume`` goes on."""

    def __init__(self, parent_run_id: str) -> None:
        super().__init__(parent_run_id)
        self.parent_run_id = parent_run_id


def short_trial_dirname(trial) -> str:
    # Ray's default folder name spells out the whole config, past some filesystems' limits.
    return f"trial_{trial.trial_id}"


def _trainable(plan: SweepPlan, target: TrackingTarget):
    from ray import tune

    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    checkpoints = CheckpointPolicy(decision_epochs(plan), model_roles=models_from_checkpoints(plan))
    # A local Ray's trials map the image cache's file the driver loaded (ImageData pickles as
    # its path and rows); a cluster's other nodes lack that file: they get the arrays.
    local = plan.address in (None, LOCAL)
    data = plan.data if local else plan.data.without_backing()
    return tune.with_resources(
        tune.with_parameters(train_trial, data=data, tracking=target, checkpoints=checkpoints),
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
    return DriverOptions(plan.quiet, live, trials_at_once(plan), target)


def _progress(plan: SweepPlan, phase: str, total: int, driver: DriverOptions) -> Progress:
    return Progress(
        phase,
        total,
        tune_metric(plan),
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
    grid = fit_watching_ctrl_c(tuner)
    # Trials a killed driver saw end, but did not get to close; one query, not one per trial.
    running = {r.info.run_id for r in child_runs(target, running=True)}
    for result in grid:
        run_id = (result.metrics or {}).get("mlflow_run_id")
        if run_id in running and result.error is None:
            tracking.end_trial_run(target.uri, run_id, outcome_of(result.metrics, plan.max_epochs))
    return grid


def search_and_confirm(plan: SweepPlan, trainable: Any, target: TrackingTarget) -> list[ArmResult]:
    """``plan.num_samples`` Optuna (TPE) trials per arm, all arms in one Tuner, each arm
    early-stopped by its own ASHA; then, in the same Tuner, each arm's best config on every
    confirmation pair (``sweep.arms``)."""
    # Ray starts one trial at a time under a searcher unless told otherwise; allow as many
    # as can run at once, so trials start together and an autoscaler sees the demand.
    os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(trials_at_once(plan)))
    grid = _fit(plan, trainable, lambda: _sweep_tuner(plan, trainable, target), target)
    return tally(grid, plan)


def _sweep_tuner(plan: SweepPlan, trainable: Any, target: TrackingTarget) -> Any:
    from ray import tune

    searched = plan.num_samples * len(plan.arms)
    pairs_per_arm = len(confirmation_pairs(plan))
    scheduler = arms_scheduler(plan)
    searcher = ArmsSearcher(
        _arm_searchers(plan),
        plan.num_samples,
        tune_metric(plan),
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
    return {
        arm: OptunaSearch(
            space=ArmDefineByRun(plan.space, arm, plan.context, plan.fixed),
            metric=tune_metric(plan),
            mode=plan.mode,
            sampler=arm_sampler(plan, arm),  # the same kind and seed in every arm
        )
        for arm in plan.arms
    }


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
        parent, lease = open_parent(plan, experiment_id, dataset)
        target = TrackingTarget(plan.tracking_uri, experiment_id, parent, plan.model_roles, dataset)
        arms = _both_phases_and_answer(plan, target, ray_stop)
        status = "FINISHED"
        return arms, experiment_id, parent
    except KeyboardInterrupt:
        status = "KILLED"
        if parent is None:
            raise
        close_leftover_runs(TrackingTarget(plan.tracking_uri, experiment_id, parent))
        raise SweepInterrupted(parent) from None
    except Exception:
        # A crash (Ray's own, a lost head node's connection) keeps its traceback; what the
        # trials logged stays, their open runs are closed, and the sweep can be resumed.
        if parent is not None:
            close_leftover_runs(TrackingTarget(plan.tracking_uri, experiment_id, parent))
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


def _both_phases_and_answer(
    plan: SweepPlan, target: TrackingTarget, ray_stop: RayStop
) -> list[ArmResult]:
    """Search and confirmation, then (Ray shutting down meanwhile) the answer and the models."""
    # Built once, so the dataset enters Ray's object store once for both phases.
    trainable = _trainable(plan, target)
    arms = search_and_confirm(plan, trainable, target)
    ray_stop.begin()  # what is left needs the store and the checkpoint files, not Ray
    close_leftover_runs(target)
    answer_on_parent(plan, arms, target)  # first: the registered version quotes it
    finish_models(plan, arms, target)
    prune_checkpoints(plan, arms)
    return arms


def answer_on_parent(plan: SweepPlan, arms: list[ArmResult], target: TrackingTarget) -> None:
    """After both phases: each arm's Optuna study saved with the parent run, and the sweep's
    answer (per-arm values, the paired difference, outcome counts) as its metrics and tags."""
    from sweep import answer, studies

    search_path = os.path.join(plan.storage_path, experiment_name(plan))
    shell = ArmsSearcher(_arm_searchers(plan), plan.num_samples, tune_metric(plan), plan.mode)
    studies.save_studies(plan, shell, search_path, target)
    answer.log_answer(plan, arms, target)


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
