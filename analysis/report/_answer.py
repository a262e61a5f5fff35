"""The report's first sections: the answer, the sweep, the best configurations, whether more
search would have helped, and the paired comparison."""

from __future__ import annotations

import html
from datetime import datetime, timezone

import pandas as pd

from analysis import anytime, plots, results, stats, tables
from analysis.errors import AnalysisError
from analysis.report._document import Context, image, note, para, run_label, section, table_html
from analysis.textout import (
    comparison_display,
    comparison_sentences,
)
from trainables import contract


@section("answer", "Answer")
def _answer_section(c: Context) -> str:
    """The answer before the evidence: per comparison, the primary verdict in bold, then
    the classes that differ, how sure (power, multiplicity, sources of variance)."""
    held_out = (
        "the held-out test split (never used by the search, early stopping or the choice of "
        "each run's epoch)"
        if c.split == tables.TEST
        else "the val split (the one the configs were selected on: optimistic)"
    )
    parts = [para(f"Metrics of {held_out}, at each confirmation run's best epoch.")]
    for tag in (contract.NO_LEARNING_TAG, contract.FROZEN_RANDOM_TAG):
        if c.sweep.tags.get(tag):  # tune.py said it; the answer below measures little
            parts.append(note(c.sweep.tags[tag], "refusal"))
    for baseline, other in _levels_compared(c):
        try:
            comparison = c.comparison(baseline, other)
        except AnalysisError as error:
            parts.append(note(f"{other} versus {baseline}: refused: {error}", "refusal"))
            continue
        headline, *details = comparison_sentences(comparison)
        parts.append(f'<p class="answer">{html.escape(headline)}</p>\n')
        parts.append("<ul>" + "".join(f"<li>{html.escape(d)}</li>" for d in details) + "</ul>\n")
    parts.append(_winner_html(c))
    return "".join(parts)


def _winner_html(c: Context) -> str:
    """The model tune.py named the winner (parent run tag ``model_uri``), when there is one."""
    uri = c.sweep.tags.get(contract.MODEL_URI_TAG)
    if not uri and c.sweep.tags.get(contract.NO_LEARNING_TAG):
        return note("No winning model: no trial learned (above).")
    if not uri:
        return note("No winning model is recorded (the sweep logged no models).")
    winner = c.sweep.runs[c.sweep.runs["run_id"] == c.sweep.tags.get(contract.WINNER_RUN_TAG)]
    source = f" (run {run_label(winner.iloc[0])})" if not winner.empty else ""
    return para(f"Winning model: {uri}{source}; python -m analysis predict uses it.")


@section("sweep", "Sweep")
def _sweep_section(c: Context) -> str:
    s = c.sweep
    runs = s.runs
    facts = {
        "experiment": s.experiment_name,
        "parent run": f"{s.parent_run_name} ({s.parent_run_id})",
        "space": s.tags.get(contract.SPACE_TAG, ""),
        "factor": s.factor or "",
        "arms": ", ".join(s.arms),
        "metric": f"{s.metric} ({s.mode})",
        "child runs": ", ".join(f"{n} {k}" for k, n in runs["status"].value_counts().items()),
        "finished runs by role": ", ".join(
            f"{n} {k}" for k, n in tables.role(tables.finished(runs)).value_counts().items()
        ),
        "best run": run_label(c.run),
        "tracking store": c.store.tracking_uri,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    frame = pd.DataFrame({"": list(facts), "value": list(facts.values())})
    params = pd.DataFrame(sorted(s.params.items()), columns=["option", "value"])
    return (
        table_html(frame)
        + "<details><summary>sweep options</summary>"
        + table_html(params)
        + ("</details>\n")
    )


@section("best", "Best configurations")
def _best_section(c: Context) -> str:
    best = results.best_tables(c.store, c.sweep, top_k=c.top_k, split=c.split)
    top = best.top.drop(columns=["run_id"])
    parts = [f"<h3>Top {c.top_k} search runs per arm (val)</h3>\n", table_html(top)]
    parts.append(
        f"<h3>Confirmation runs (mean ± std over seeds, at each run's best epoch, {c.split})</h3>\n"
    )
    if best.confirmation.empty:
        parts.append(note("This sweep has no finished confirmation runs."))
    else:
        parts.append(table_html(best.confirmation))
    return "".join(parts)


@section("search", "Search progress: would more trials help?")
def _search_section(c: Context) -> str:
    """Each arm's anytime curve and the trial at which its best came."""
    curves = results.search_progress(c.store, c.sweep)
    metric = c.sweep.metric
    factor = c.sweep.factor or "arm"
    sentences = [
        f"<li>{html.escape(f'{factor}={arm}: {anytime.sentence(curve, metric)}.')}</li>"
        for arm, curve in curves.items()
    ]
    return (
        para(
            f"The best {metric} each arm's search had found after each of its trials, in the "
            "order they started, against the epochs it had spent on them (trials the scheduler "
            "stopped early cost fewer; diverged and failed ones cost theirs and found nothing). "
            "A best that came in the last quarter of the trials says more might still help."
        )
        + image(plots.anytime_figure(curves, metric), "anytime curves")
        + "<ul>"
        + "".join(sentences)
        + "</ul>\n"
        + table_html(anytime.progress_table(curves, metric))
    )


def _levels_compared(c: Context) -> list[tuple[str, str]]:
    if not c.sweep.factor:
        raise AnalysisError("the sweep has no factor tag, so there is nothing to compare")
    pairs = results.compare_levels(c.sweep, c.sweep.factor)
    if not pairs:
        raise AnalysisError(f"only one level of '{c.sweep.factor}' has finished runs")
    return pairs


@section("compare", "Paired comparison")
def _compare_section(c: Context) -> str:
    parts = []
    for baseline, other in _levels_compared(c):
        parts.append(f"<h3>{html.escape(f'{c.sweep.factor}: {other} versus {baseline}')}</h3>\n")
        try:
            comparison = c.comparison(baseline, other)
        except AnalysisError as error:
            parts.append(note(f"Refused: {error}", "refusal"))
            continue
        parts.append(_comparison_html(comparison))
    parts += [note(line) for line in tables.diverged_seeds(c.sweep.runs)]
    return "".join(parts)


def _comparison_html(comparison: results.Comparison) -> str:
    pairing, table = comparison.pairing, comparison.table
    parts = [
        para(
            f"n = {pairing.n} pairs ({pairing.rule}). Difference = {pairing.other} − "
            f"{pairing.baseline} on {comparison.split} at each run's best epoch, in percentage "
            "points (losses in their units); 95% Student-t and percentile bootstrap intervals "
            "over pairs; p from the paired t-test, Holm-adjusted over the secondary rows. "
            "Classes are listed rarest first."
        ),
        *(para(line) for line in [*comparison.notes, *comparison_sentences(comparison)]),
        note(stats.few_pairs_note(pairing.n)) if pairing.n < stats.FEW_PAIRS else "",
        table_html(comparison_display(table, pairing)),
        image(plots.comparison_figure(table, pairing.baseline, pairing.other), "comparison"),
        "<details><summary>pairs</summary>",
        table_html(pairing.pairs[["key", "baseline_run", "other_run"]]),
        "</details>\n",
    ]
    return "".join(parts)
