"""The closing summary ``tune.py`` prints: each arm's best config and its confirmation runs."""

from __future__ import annotations

import statistics

from sweep.plan import SweepPlan
from sweep.runner import ArmResult
from trainables.tracking import ui_command

# Keys every trial shares; the summary shows what the search chose, not these.
_SHARED = {
    "space",
    "factor",
    "role",
    "split_seed",
    "seed",
    "metric",
    "mode",
    "num_threads",
    "val_fraction",
    "max_epochs",
    "image_size",
    "arm",
}


def format_summary(plan: SweepPlan, arms: list[ArmResult], experiment_id: str, parent: str) -> str:
    lines = [
        f"\nSweep '{plan.space.name}' ({plan.space.factor}: {', '.join(plan.arms)}), "
        f"metric {plan.metric} ({plan.mode})"
    ]
    for arm in arms:
        lines.append(
            f"\n  {plan.space.factor}={arm.arm}: {_count(arm.search_trials, 'search trial')}, "
            f"{arm.stopped_early} stopped early by ASHA, {arm.diverged} diverged"
        )
        if arm.nonfinite:
            lines.append(
                f"    {_count(arm.nonfinite, 'trial')} ended with a metric that is NaN or "
                "infinite (tag nonfinite_metrics)"
            )
        if arm.failed:
            lines.append(
                f"    {_count(arm.failed, 'trial')} failed; first error: {arm.first_error}"
            )
        if arm.best_config is None:
            lines.append("    no trial finished an epoch")
            continue
        chosen = {k: v for k, v in arm.best_config.items() if k not in _SHARED}
        lines.append(f"    best search trial: {plan.metric} = {arm.best_value:.4f}")
        lines.append(
            "    config: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(chosen.items()))
        )
        values = arm.confirmation_values
        if values:
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            lines.append(
                f"    confirmation over {_count(len(values), 'seed')}: "
                f"{statistics.fmean(values):.4f} ± {spread:.4f} (mean ± std)"
            )
        seeds = len(values) + arm.confirmation_diverged + arm.confirmation_failed
        for n, what in (
            (arm.confirmation_diverged, "diverged"),
            (arm.confirmation_failed, "failed"),
        ):
            if n:
                lines.append(f"    {n} of {seeds} confirmation seeds {what}")
    lines += [
        "",
        f"MLflow: experiment '{plan.experiment}' (id {experiment_id}), parent run {parent}",
        f"  store: {plan.tracking_uri}",
        f"  explore: {ui_command(plan.tracking_uri)}",
        f"  compare: python -m analysis compare --experiment {plan.experiment} "
        f"--factor {plan.space.factor}",
    ]
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
