"""The tally of a sweep's results per arm: what the summary, the answer and the winner read.
A type of its own, so the modules that read it need not import the runner."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sweep.callbacks import better, better_candidate, diverged, search_value, stopped_early
from sweep.plan import SweepPlan
from trainables import contract


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


def tally(grid: Any, plan: SweepPlan) -> list[ArmResult]:
    """Each arm's result from Ray's list of the sweep's trials, both phases."""
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


def tune_metric(plan: SweepPlan) -> str:
    # Each trial reports its best-so-far value: Optuna learns from a trial's best epoch, and
    # ASHA compares trials by it, which a single noisy epoch cannot swing.
    return contract.best_metric(plan.metric)


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
    value = search_value(metrics, False, tune_metric(plan))
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


def _count_confirmation(arm: ArmResult, result: Any, plan: SweepPlan) -> None:
    metrics, metric = result.metrics or {}, tune_metric(plan)
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
