"""The sweep's answer on its parent run, so the MLflow UI shows it without a report.

Metrics (names in ``trainables.contract``, arms spelled by ``contract.metric_part``):

- ``arm.<arm>.search_best``: the arm's best search trial's ``best_<metric>``;
  ``arm.<arm>.confirm_mean``, ``confirm_std`` (n >= 2) and ``confirm_n`` over its
  confirmation runs.
- ``answer.<best>_vs_<other>.*``: the paired difference of the sweep's metric between the best
  arm (by confirmation mean) and each other arm, best minus other, over the confirmation runs
  paired by seed (``analysis.stats``): ``diff``, the bootstrap interval ``ci_low``/``ci_high``,
  the Student-t interval ``t_low``/``t_high``, and ``n`` pairs. The tag
  ``answer.<best>_vs_<other>.verdict`` says which is better, if either; the tag ``answer``
  holds one readable line per comparison.
- ``trials.<role>.<outcome>``: how many trials of each phase ended each way.

Whether more search would have helped (``analysis.anytime``): the tag ``best_trial.<arm>``
says at which of the arm's search trials, in the order they started, its best came
(``7 of 32``), and the artifact ``search/anytime.png`` draws each arm's best so far against
the epochs its search spent.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from sweep.plan import SweepPlan
from sweep.winner import no_learning_line, pick_winner
from trainables import contract
from trainables.edge import tracking
from trainables.edge.trial import TrackingTarget

if TYPE_CHECKING:
    from sweep.tally import ArmResult


@dataclass(frozen=True)
class Comparison:
    best: str
    other: str
    n: int
    diff: float
    ci: tuple[float, float]
    t: tuple[float, float]
    verdict: str
    clear: bool  # the best arm is better, both intervals agreeing
    power: str  # what these pairs could have seen, in words

    def key(self, name: str) -> str:
        return contract.comparison_metric(self.best, self.other, name)

    def metrics(self) -> dict[str, float]:
        values = (self.diff, *self.ci, *self.t, self.n)
        return {
            self.key(name): float(value)
            for name, value in zip(contract.COMPARISON_METRICS, values, strict=True)
        }

    def line(self) -> str:
        """The verdict and how many pairs it rests on, said once."""
        if f"n = {self.n} pairs" in self.verdict:  # the t-test's note names them already
            return self.verdict
        return f"{self.verdict} ({self.n} pairs)"


def log_answer(plan: SweepPlan, arms: list[ArmResult], target: TrackingTarget) -> None:
    comparisons = compare_arms(plan, arms, target)
    metrics = {}  # in the order the UI lists them: the answer first
    for comparison in comparisons:
        metrics.update(comparison.metrics())
    metrics.update({**arm_metrics(arms), **outcome_counts(target)})
    tags = {c.key(contract.VERDICT_NAME): c.verdict for c in comparisons}
    answer = "; ".join(c.line() for c in comparisons) or _no_answer(plan, arms)
    nothing_learned = no_learning_line(plan, arms)
    if nothing_learned:
        tags[contract.NO_LEARNING_TAG] = nothing_learned
        answer = f"{nothing_learned}; {answer}"
    tags.update(search_progress(plan, target))
    tags[contract.ANSWER_TAG] = answer
    tags[contract.ANSWER_CLEAR_TAG] = str(bool(comparisons) and all(c.clear for c in comparisons))
    tags[contract.DESCRIPTION_TAG] = describe(plan, answer, [c.power for c in comparisons])
    tracking.log_metrics(target.uri, target.parent_run_id, metrics)
    tracking.set_tags(target.uri, target.parent_run_id, tags)


def search_progress(plan: SweepPlan, target: TrackingTarget) -> dict[str, str]:
    """Each arm's anytime curve as the parent run's figure, and its tag ``best_trial.<arm>``
    (``7 of 32``), as ``python -m analysis report`` shows them."""
    from analysis import anytime, plots, results
    from analysis.errors import AnalysisError

    try:
        store, sweep = results.open_sweep(target.uri, plan.experiment, target.parent_run_id)
        curves = results.search_progress(store, sweep)
    except AnalysisError:  # no finished run, no search run: nothing to draw
        return {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(contract.ANYTIME_ARTIFACT).name
        path.write_bytes(plots.to_png(plots.anytime_figure(curves, plan.metric)))
        try:
            tracking.log_file(target.uri, target.parent_run_id, path, contract.ANYTIME_ARTIFACT)
        except Exception as error:  # the artifact store refused: the answer still stands
            print(
                f"tune.py: warning: {contract.ANYTIME_ARTIFACT} not logged: {error}",
                file=sys.stderr,
            )
    return {
        contract.best_trial_tag(arm): anytime.trial_text(curve.best_trial, curve.n)
        for arm, curve in curves.items()
        if curve.best_trial is not None
    }


def arm_metrics(arms: list[ArmResult]) -> dict[str, float]:
    search_best, mean, std, n = contract.ARM_METRICS
    metrics = {}
    for arm in arms:
        if arm.best_config is not None:
            metrics[contract.arm_metric(arm.arm, search_best)] = arm.best_value
        values = arm.confirmation_values
        metrics[contract.arm_metric(arm.arm, n)] = len(values)
        if values:
            metrics[contract.arm_metric(arm.arm, mean)] = statistics.fmean(values)
        if len(values) > 1:
            metrics[contract.arm_metric(arm.arm, std)] = statistics.stdev(values)
    return metrics


def outcome_counts(target: TrackingTarget) -> dict[str, float]:
    """From the child runs' ``outcome`` tags, every phase and outcome (zeros too), so the
    columns exist for every sweep."""
    runs = tracking.child_runs(target.uri, target.experiment_id, target.parent_run_id)
    counts = Counter(
        (run.data.tags.get(contract.ROLE_TAG), run.data.tags.get(contract.OUTCOME_TAG))
        for run in runs
    )
    return {
        contract.trials_metric(role, outcome): float(counts[role, outcome])
        for role in contract.TRIAL_ROLES
        for outcome in contract.OUTCOMES
    }


def compare_arms(
    plan: SweepPlan, arms: list[ArmResult], target: TrackingTarget
) -> list[Comparison]:
    """The best arm against each other arm with confirmation runs, as ``python -m analysis
    compare`` pairs them."""
    best = pick_winner(arms, plan) if plan.confirm_seeds else None
    others = [a.arm for a in arms if a is not best and a.confirmation_values]
    if best is None or not others:
        return []
    from analysis import results
    from analysis.errors import AnalysisError

    store, sweep = results.open_sweep(target.uri, plan.experiment, target.parent_run_id)
    comparisons = []
    for other in others:
        try:
            comparisons.append(_compare(store, sweep, plan, best.arm, other))
        except AnalysisError:  # no pairs (a seed failed in one arm): nothing honest to say
            continue
    return comparisons


def _compare(store, sweep, plan: SweepPlan, best: str, other: str) -> Comparison:
    """As ``python -m analysis compare`` shows it: on the held-out test split when the
    confirmation runs were scored on it, the verdict in words with its level."""
    from analysis import results, stats, textout

    comparison = results.compare(store, sweep, factor=plan.space.factor, levels=[other, best])
    row = comparison.primary
    return Comparison(
        best,
        other,
        int(row.n),
        float(row.difference),
        (float(row.ci_low), float(row.ci_high)),
        (float(row.t_low), float(row.t_high)),
        textout.headline_sentence(row, comparison.pairing),
        bool(stats.is_clear(pd.Series([row["verdict"]])).iloc[0]),
        textout.power_sentence(comparison.power, row["metric"]),
    )


def describe(plan: SweepPlan, answer: str, power: list[str]) -> str:
    """The parent run's description (MLflow's note, atop its page): the answer, how sure,
    and where the report goes; ``sweep.winner`` adds the model kept."""
    lines = [f"**Answer** ({plan.space.factor}: {', '.join(plan.arms)}; {plan.metric}): {answer}"]
    lines += [f"- {line}" for line in dict.fromkeys(power)]
    lines.append(
        f"- Report: `python -m analysis report --experiment {plan.experiment}` (logged here as "
        f"{contract.REPORT_ARTIFACT_DIR}/{contract.REPORT_ARTIFACT_NAME})"
    )
    return "\n".join(lines)


def _no_answer(plan: SweepPlan, arms: list[ArmResult]) -> str:
    if not plan.confirm_seeds:
        return "no confirmation runs (--confirm-seeds 0): no paired comparison"
    return "fewer than two arms have paired confirmation runs: no paired comparison"
