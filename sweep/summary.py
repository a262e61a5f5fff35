"""The closing summary ``tune.py`` prints: each arm's best config and its confirmation runs."""

from __future__ import annotations

import statistics
from collections.abc import Mapping

from analysis import anytime
from sweep.plan import SweepPlan
from sweep.studies import journal_path
from sweep.tally import ArmResult
from sweep.winner import kept_line, no_learning_line, pick_winner
from trainables.contract import (
    ANSWER_CLEAR_TAG,
    ANSWER_TAG,
    FEATURE_CACHE_TAG,
    NO_LEARNING_TAG,
    NONFINITE_TAG,
    OPTUNA_JOURNAL_ARTIFACT,
    RUN_IDENTITY_PARAMS,
    SWEEP_FIXED_PARAMS,
    best_trial_tag,
)
from trainables.edge.tracking import (
    absolute_tracking_uri,
    default_tracking_uri,
    runs_view_url,
    ui_command,
)

# Keys every trial shares; the summary shows what the search chose, not these. (The other
# hardware settings, amp, channels_last and feature_cache, are shown as they were.)
_SHARED = RUN_IDENTITY_PARAMS | SWEEP_FIXED_PARAMS | {"num_threads"}


def format_summary(
    plan: SweepPlan,
    arms: list[ArmResult],
    experiment_id: str,
    parent: str,
    parent_tags: Mapping[str, str] | None = None,
) -> str:
    """``parent_tags``: the parent run's tags once the sweep ended, for its answer."""
    lines = [
        f"\nSweep '{plan.space.name}' ({plan.space.factor}: {', '.join(plan.arms)}), "
        f"metric {plan.metric} ({plan.mode})"
    ]
    for arm in arms:
        lines += _arm_lines(plan, arm, (parent_tags or {}).get(best_trial_tag(arm.arm)))
    lines += _answer_lines(parent_tags or {})
    lines += _winner_lines(plan, arms, parent_tags or {})
    lines += [
        "",
        f"MLflow: experiment '{plan.experiment}' (id {experiment_id}), parent run {parent}",
        f"  store: {plan.tracking_uri}",
        *_ui_lines(plan.tracking_uri, experiment_id),
        f"  compare: python -m analysis compare --experiment {plan.experiment} "
        f"--factor {plan.space.factor}",
        *_optuna_lines(plan, parent),
    ]
    return "\n".join(lines)


def _stopped(plan: SweepPlan, arm: ArmResult) -> str:
    """ASHA's count; nothing where no scheduler stops trials (--scheduler none)."""
    if plan.scheduler == "none":
        return ""
    return f"{arm.stopped_early} stopped early by {plan.scheduler.upper()}, "


def _arm_lines(plan: SweepPlan, arm: ArmResult, best_trial: str | None = None) -> list[str]:
    """One arm: its trials' outcomes, best config (and, from the parent run's tag
    ``best_trial.<arm>``, the trial it came at), confirmation runs and model."""
    lines = [
        f"\n  {plan.space.factor}={arm.arm}: {_count(arm.search_trials, 'search trial')}, "
        f"{_stopped(plan, arm)}{arm.diverged} diverged"
    ]
    if arm.nonfinite:
        lines.append(
            f"    {_count(arm.nonfinite, 'trial')} ended with a metric that is NaN or "
            f"infinite (tag {NONFINITE_TAG})"
        )
    if arm.uncached:
        lines.append(
            f"    {_count(arm.uncached, 'trial')} trained uncached, though frozen; first "
            f"reason: {arm.uncached_reason} (tag {FEATURE_CACHE_TAG})"
        )
    if arm.failed:
        lines.append(f"    {_count(arm.failed, 'trial')} failed; first error: {arm.first_error}")
    if arm.best_config is None:
        return [*lines, "    no trial finished an epoch"]
    chosen = {k: v for k, v in arm.best_config.items() if k not in _SHARED}
    lines.append(
        f"    best search trial: {plan.metric} = {arm.best_value:.4f}{_came_at(best_trial)}"
    )
    lines.append("    config: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(chosen.items())))
    values = arm.confirmation_values
    if values:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(
            f"    confirmation over {_count(len(values), _unit(plan))}: "
            f"{statistics.fmean(values):.4f} ± {spread:.4f} (mean ± std)"
        )
    seeds = len(values) + arm.confirmation_diverged + arm.confirmation_failed
    for n, what in (
        (arm.confirmation_diverged, "diverged"),
        (arm.confirmation_failed, "failed"),
    ):
        if n:
            lines.append(f"    {n} of {seeds} confirmation seeds {what}")
    if arm.model_uri:
        whose = "best seed" if plan.confirm_seeds else "best search trial"
        lines.append(f"    model ({whose}, at its best epoch): {arm.model_uri}")
    return lines


def _came_at(best_trial: str | None) -> str:
    """``, came at trial 7 of 32 (the search had settled)``; nothing without the tag."""
    found = anytime.parse_trial_text(best_trial)
    if found is None:
        return ""
    return f", came at trial {anytime.trial_text(*found)} ({anytime.outlook(*found)})"


def _ui_lines(uri: str, experiment_id: str) -> list[str]:
    """The runs table in model-training mode, and for a local store how to serve it."""
    command = ui_command(uri)
    lines = [f"  open: {runs_view_url(uri, experiment_id)}"]
    return lines + ([f"    after: {command}"] if command else [])


def _optuna_lines(plan: SweepPlan, parent: str) -> list[str]:
    """Optuna's dashboard on the arms' studies: the journal file, else where it is logged."""
    journal = journal_path(plan)
    if journal is not None and journal.is_file():
        return [f"  optuna: optuna-dashboard {journal}"]
    download = (
        f"mlflow artifacts download -r {parent} -a {OPTUNA_JOURNAL_ARTIFACT} -d . "
        f"&& optuna-dashboard {OPTUNA_JOURNAL_ARTIFACT}"
    )
    lines = [f"  optuna: {download}"]
    if plan.optuna_storage:
        lines.append(f"  optuna: optuna-dashboard {plan.optuna_storage}")
    return lines


def _answer_lines(tags: Mapping[str, str]) -> list[str]:
    """The paired comparison's verdict with its interval, as the parent run holds it."""
    answer = tags.get(ANSWER_TAG, "").removeprefix(tags.get(NO_LEARNING_TAG, "") + "; ")
    return ["", f"Answer: {answer}"] if answer else []


def _winner_lines(plan: SweepPlan, arms: list[ArmResult], tags: Mapping[str, str]) -> list[str]:
    """The overall winner's model, its registration, and how to use it."""
    nothing_learned = no_learning_line(plan, arms)
    if nothing_learned:
        registered = "; nothing registered" if plan.register_model else ""
        return ["", f"No winner: {nothing_learned}{registered}"]
    winner = pick_winner(arms, plan)
    if not plan.model_roles or winner is None:
        return []
    kept = kept_line(plan, winner, tags.get(ANSWER_CLEAR_TAG) == "True")
    if winner.model_uri is None:
        return ["", f"{kept}; no model was logged for it"]
    uri = winner.registered_model or winner.model_uri
    lines = ["", f"{kept}; model {winner.model_uri}"]
    if winner.registered_model:
        lines.append(f"  registered: {winner.registered_model}")
    elif plan.register_model is None:
        lines.append("  not registered (tune.py --register-model NAME registers the winner)")
    default = plan.tracking_uri == absolute_tracking_uri(default_tracking_uri())
    lines += [
        f"  predict: python -m analysis predict --model {uri} IMAGES"
        + ("" if default else f" --tracking-uri {plan.tracking_uri}"),
        f'  in Python: mlflow.set_tracking_uri("{plan.tracking_uri}"); '
        f'mlflow.pyfunc.load_model("{uri}").predict(images)',
    ]
    return lines


def _unit(plan: SweepPlan) -> str:
    """What one confirmation run stands for: a seed, or a (split, seed) pair."""
    return "seed" if len(plan.split_seeds) < 2 else "(split, seed) pair"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
