"""After the sweep: each arm's trained model, the overall winner, and its registration.

The winner is the best arm by the mean of its confirmation runs, and its model is that of the
arm's best seed; without confirmation runs, the arm with the best search trial, whose model
is logged here from the trial's last checkpoint (which holds the best epoch's weights).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sweep.callbacks import better
from sweep.plan import SweepPlan
from trainables import contract
from trainables.edge import tracking
from trainables.edge.trial import TrackingTarget

if TYPE_CHECKING:
    from sweep.tally import ArmResult


def finish_models(plan: SweepPlan, arms: list[ArmResult], target: TrackingTarget) -> None:
    """Set each arm's ``model_uri``, tag the parent run with the winner, and register the
    winner when ``--register-model`` asks."""
    if not plan.model_roles:
        return
    for arm in arms:
        arm.model_uri = _arm_model(plan, arm, target.uri)
    winner = pick_winner(arms, plan)
    if winner is None or winner.model_uri is None or no_learning_line(plan, arms):
        return
    run_id = model_run_id(winner, plan)
    parent = tracking.client(target.uri).get_run(target.parent_run_id).data.tags
    note = parent.get(contract.DESCRIPTION_TAG, "")
    kept = kept_line(plan, winner, parent.get(contract.ANSWER_CLEAR_TAG) == "True")
    tracking.set_tags(
        target.uri,
        target.parent_run_id,
        {
            contract.WINNER_RUN_TAG: run_id,
            contract.MODEL_URI_TAG: winner.model_uri,
            contract.DESCRIPTION_TAG: f"{note}\n- {kept}: {winner.model_uri}".lstrip("\n"),
        },
    )
    if plan.register_model:
        tags = version_tags(plan, winner, run_id, target)
        winner.registered_model = tracking.register_model(
            target.uri, plan.register_model, winner.model_uri, run_id, tags, tags["verdict"]
        )


def kept_line(plan: SweepPlan, winner: ArmResult, clear: bool) -> str:
    """Which model is kept, and why: named the winner only when the paired comparison says
    its arm is better; otherwise it is the arm with the higher mean, which is all it is."""
    arm = f"{plan.space.factor}={winner.arm}"
    if not plan.confirm_seeds:
        return f"Model kept: {arm}'s, the best search trial (no confirmation runs to compare)"
    if clear:
        return f"Winner: {arm}, better than every other arm in the paired comparison"
    return (
        f"Model kept: {arm}'s, the higher mean over confirmation seeds (the paired comparison "
        "does not call it better)"
    )


def models_from_checkpoints(plan: SweepPlan) -> frozenset[str]:
    """The roles whose model the driver may log from a trial's checkpoint: search trials,
    when the sweep has no confirmation runs (their trials' checkpoints must hold it)."""
    if plan.confirm_seeds or not plan.model_roles:
        return frozenset()
    return frozenset({contract.SEARCH_ROLE})


def model_run_id(arm: ArmResult, plan: SweepPlan) -> str | None:
    """The run whose model stands for the arm: its best seed, or without confirmation runs
    its best search trial."""
    return arm.best_confirmation_run_id if plan.confirm_seeds else arm.best_trial_run_id


def pick_winner(arms: list[ArmResult], plan: SweepPlan) -> ArmResult | None:
    """The best arm by the mean of its confirmation runs (by its best search trial when the
    sweep has none); of tied arms, the first."""
    winner, best = None, None
    for arm in arms:
        value = arm_score(arm, plan)
        if value is not None and better(value, best, plan.mode):
            winner, best = arm, value
    return winner


def arm_score(arm: ArmResult, plan: SweepPlan) -> float | None:
    """What ranks the arms: the mean of the confirmation runs, or without them the best
    search trial; None for an arm with neither."""
    if plan.confirm_seeds:
        values = arm.confirmation_values
        return statistics.fmean(values) if values else None
    return arm.best_value if arm.best_config is not None else None


def no_learning_line(plan: SweepPlan, arms: list[ArmResult]) -> str | None:
    """One line when the best arm did no better than a predictor that never looks at the
    image (``trainables.metrics.chance_level`` on the val split): no winner is named,
    tagged or registered then. None when something learned, or the metric has no chance
    level (a loss)."""
    winner = pick_winner(arms, plan)
    if winner is None:
        return None
    data = plan.data
    chance = data.task.chance(plan.metric, data.val_y.numpy(), data.num_classes)
    value = arm_score(winner, plan)
    if chance is None or better(value, chance, plan.mode):
        return None
    how = "mean over confirmation seeds" if plan.confirm_seeds else "best search trial"
    return (
        f"no trial learned: best {plan.metric} {value:.3g} ({plan.space.factor}={winner.arm}, "
        f"{how}), chance {chance:.3g} (the best of always one class and a guess from the "
        "class prior)"
    )


def _arm_model(plan: SweepPlan, arm: ArmResult, uri: str) -> str | None:
    run_id = model_run_id(arm, plan)
    if run_id is None:
        return None
    logged = tracking.run_model_uri(uri, run_id)
    if logged or contract.SEARCH_ROLE not in models_from_checkpoints(plan):
        return logged
    return _log_from_checkpoint(plan, arm, uri, run_id)


def _log_from_checkpoint(plan: SweepPlan, arm: ArmResult, uri: str, run_id: str) -> str | None:
    """The best search trial's model at its best epoch, logged to its run from the driver
    (a trial ASHA stopped early cannot log its own)."""
    import torch

    from trainables.config import TrialConfig
    from trainables.edge.model_export import log_trial_model
    from trainables.edge.trial import CheckpointError, load_trained_model
    from trainables.engine import TrainedModel, build_model_and_criterion

    if arm.best_trial_checkpoint is None or arm.best_config is None:
        return None
    cfg = TrialConfig.from_dict(arm.best_config)
    trained = TrainedModel(*build_model_and_criterion(cfg, plan.data, torch.device("cpu")))
    with arm.best_trial_checkpoint.as_directory() as folder:
        try:
            best = load_trained_model(Path(folder), trained)
        except CheckpointError as err:  # refused unread: the sweep's answer still stands
            print(f"tune.py: warning: arm {arm.arm}: no model logged: {err}", file=sys.stderr)
            return None
    if best is None or not _holds_the_runs_best_epoch(arm, uri, run_id, trained.best_epoch):
        return None
    return log_trial_model(uri, run_id, cfg, plan.data, trained, best)


def _holds_the_runs_best_epoch(arm: ArmResult, uri: str, run_id: str, saved_epoch: int) -> bool:
    """Whether the checkpoint's best epoch is the one the run's metrics stand at. A trial
    that ended while the driver was down leaves Ray an older checkpoint (trials checkpoint
    only some epochs); its model would not be the run's, so none is logged, and the user
    hears why."""
    metrics = tracking.client(uri).get_run(run_id).data.metrics
    run_epoch = metrics.get(contract.BEST_EPOCH_METRIC)
    if run_epoch is None or int(run_epoch) == saved_epoch:
        return True
    print(
        f"tune.py: warning: arm {arm.arm}: no model logged for its best search trial (run "
        f"{run_id}): its best epoch is {int(run_epoch)}, but the checkpoint Ray kept holds "
        f"epoch {saved_epoch}'s (the trial ended while the driver was down); --confirm-seeds "
        "1 or more, or --log-models search, log the model from the trial itself",
        file=sys.stderr,
    )
    return False


def version_tags(
    plan: SweepPlan, winner: ArmResult, run_id: str, target: TrackingTarget
) -> dict[str, str]:
    """The registered version's tags (``contract.VERSION_TAGS``), read off the runs."""
    c = tracking.client(target.uri)
    run = c.get_run(run_id)
    parent = c.get_run(target.parent_run_id)
    values = winner.confirmation_values
    best = contract.best_metric(plan.metric)
    return {
        "sweep": parent.info.run_name or target.parent_run_id,
        "sweep_run_id": target.parent_run_id,
        "experiment": plan.experiment,
        "factor": plan.space.factor,
        "arm": winner.arm,
        "seed": run.data.tags.get(contract.SEED_TAG, ""),
        "run_id": run_id,
        "metric": plan.metric,
        "metric_value": f"{run.data.metrics.get(best, float('nan')):.6g}",
        "arm_mean": f"{statistics.fmean(values):.6g}" if values else "",
        # MLflow caps a tag value at 5000 characters; an answer of many arms stays within it.
        "verdict": parent.data.tags.get(contract.ANSWER_TAG, "")[:5000],
    }
