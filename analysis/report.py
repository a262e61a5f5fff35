"""One self-contained HTML report of a sweep: every table and figure, images embedded as
base64 PNG, no scripts, fonts or links to fetch, so it opens offline.

It opens with the answer (which arm wins, on which metric and classes, by how much, how sure,
and the winning model), then the evidence. A section whose inputs are missing (an artifact a
run did not write, too few search runs for importance, no paired runs) says why in place
instead of failing the whole report.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis import anytime, curves, importance, plots, predictions, results, stats, tables
from analysis.classes import ClassInfo
from analysis.errors import AnalysisError
from analysis.store import Store, Sweep
from analysis.textout import (
    comparison_display,
    comparison_sentences,
    display_frame,
)
from trainables import contract
from trainables.registry import Registry

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-top: 0.5em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #555; font-style: italic; } .refusal { background: #fff4e5; padding: 0.6em; }
.answer { font-size: 1.15em; font-weight: bold; }
nav a { margin-right: 1em; }
"""


@dataclass
class Context:
    """What every section may use; the best run is resolved once."""

    store: Store
    sweep: Sweep
    run: pd.Series
    info: ClassInfo | None
    top_k: int
    resamples: int
    seed: int
    split: str  # test or val: the split whose metrics the best and compare sections show
    comparisons: dict[tuple[str, str], results.Comparison | AnalysisError]

    def comparison(self, baseline: str, other: str) -> results.Comparison:
        """Computed once for the answer and the evidence; a refusal is raised where used."""
        key = (baseline, other)
        if key not in self.comparisons:
            try:
                self.comparisons[key] = results.compare(
                    self.store,
                    self.sweep,
                    factor=self.sweep.factor,
                    levels=[baseline, other],
                    resamples=self.resamples,
                    seed=self.seed,
                    split=self.split,
                )
            except AnalysisError as error:
                self.comparisons[key] = error
        found = self.comparisons[key]
        if isinstance(found, AnalysisError):
            raise found
        return found


@dataclass(frozen=True)
class Report:
    html: str
    unavailable: dict[str, str]  # section key -> why it could not be drawn
    split: str = contract.VAL


@dataclass(frozen=True)
class Section:
    key: str  # the anchor in the page
    title: str
    build: Callable[[Context], str]


# The report draws its sections in the order they are registered (defined) below.
SECTIONS: Registry[Section] = Registry("report section", AnalysisError)


def section(key: str, title: str) -> Callable[[Callable[[Context], str]], Callable]:
    """Register a function drawing one section of the report."""
    return SECTIONS.decorator(key, lambda build: Section(key, title, build))


def section_titles() -> dict[str, str]:
    return {entry.key: entry.title for entry in SECTIONS.entries()}


def build_report(
    store: Store,
    sweep: Sweep,
    *,
    run: str = "best",
    top_k: int = 3,
    resamples: int = 10_000,
    seed: int = 0,
    split: str | None = None,
) -> Report:
    """The whole HTML document, and the sections that had to say "not available"."""
    context = Context(
        store=store,
        sweep=sweep,
        run=results.resolve_run(sweep, run),
        info=results.class_info(store, sweep),
        top_k=top_k,
        resamples=resamples,
        seed=seed,
        split=results.resolve_split(sweep, split),
        comparisons={},
    )
    unavailable: dict[str, str] = {}
    body = [_section(entry, context, unavailable) for entry in SECTIONS.entries()]
    title = f"Sweep report: {sweep.experiment_name} / {sweep.parent_run_name}"
    nav = " ".join(f'<a href="#{k}">{html.escape(v)}</a>' for k, v in section_titles().items())
    document = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<nav>{nav}</nav>\n" + "\n".join(body) + "</body></html>\n"
    )
    return Report(document, unavailable, context.split)


def _section(entry: Section, context: Context, unavailable: dict[str, str]) -> str:
    try:
        content = entry.build(context)
    except AnalysisError as error:
        unavailable[entry.key] = str(error)
        content = _note(f"Not available: {error}")
    except Exception as error:  # one broken section must not cost the whole report
        unavailable[entry.key] = f"failed: {type(error).__name__}: {error}"
        content = _note(f"This section failed: {type(error).__name__}: {error}", "refusal")
    title = html.escape(entry.title)
    return f'<section id="{entry.key}"><h2>{title}</h2>\n{content}</section>\n'


# Small HTML helpers.
def _note(text: str, cls: str = "note") -> str:
    return f'<p class="{cls}">{html.escape(text)}</p>\n'


def _para(text: str) -> str:
    return f"<p>{html.escape(text)}</p>\n"


def _table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return _note("(none)")
    return display_frame(frame).to_html(index=False, escape=True, border=0) + "\n"


def _image(figure: Figure, alt: str) -> str:
    encoded = base64.b64encode(plots.to_png(figure)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">\n'


def _run_label(run: pd.Series) -> str:
    return f"{run['run_name']} ({run['run_id'][:8]})"


# Sections.
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
    parts = [_para(f"Metrics of {held_out}, at each confirmation run's best epoch.")]
    for tag in (contract.NO_LEARNING_TAG, contract.FROZEN_RANDOM_TAG):
        if c.sweep.tags.get(tag):  # tune.py said it; the answer below measures little
            parts.append(_note(c.sweep.tags[tag], "refusal"))
    for baseline, other in _levels_compared(c):
        try:
            comparison = c.comparison(baseline, other)
        except AnalysisError as error:
            parts.append(_note(f"{other} versus {baseline}: refused: {error}", "refusal"))
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
        return _note("No winning model: no trial learned (above).")
    if not uri:
        return _note("No winning model is recorded (the sweep logged no models).")
    winner = c.sweep.runs[c.sweep.runs["run_id"] == c.sweep.tags.get(contract.WINNER_RUN_TAG)]
    source = f" (run {_run_label(winner.iloc[0])})" if not winner.empty else ""
    return _para(f"Winning model: {uri}{source}; python -m analysis predict uses it.")


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
        "best run": _run_label(c.run),
        "tracking store": c.store.tracking_uri,
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    frame = pd.DataFrame({"": list(facts), "value": list(facts.values())})
    params = pd.DataFrame(sorted(s.params.items()), columns=["option", "value"])
    return (
        _table(frame)
        + "<details><summary>sweep options</summary>"
        + _table(params)
        + ("</details>\n")
    )


@section("best", "Best configurations")
def _best_section(c: Context) -> str:
    best = results.best_tables(c.store, c.sweep, top_k=c.top_k, split=c.split)
    top = best.top.drop(columns=["run_id"])
    parts = [f"<h3>Top {c.top_k} search runs per arm (val)</h3>\n", _table(top)]
    parts.append(
        f"<h3>Confirmation runs (mean ± std over seeds, at each run's best epoch, {c.split})</h3>\n"
    )
    if best.confirmation.empty:
        parts.append(_note("This sweep has no finished confirmation runs."))
    else:
        parts.append(_table(best.confirmation))
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
        _para(
            f"The best {metric} each arm's search had found after each of its trials, in the "
            "order they started, against the epochs it had spent on them (trials the scheduler "
            "stopped early cost fewer; diverged and failed ones cost theirs and found nothing). "
            "A best that came in the last quarter of the trials says more might still help."
        )
        + _image(plots.anytime_figure(curves, metric), "anytime curves")
        + "<ul>"
        + "".join(sentences)
        + "</ul>\n"
        + _table(anytime.progress_table(curves, metric))
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
            parts.append(_note(f"Refused: {error}", "refusal"))
            continue
        parts.append(_comparison_html(comparison))
    parts += [_note(line) for line in tables.diverged_seeds(c.sweep.runs)]
    return "".join(parts)


def _comparison_html(comparison: results.Comparison) -> str:
    pairing, table = comparison.pairing, comparison.table
    parts = [
        _para(
            f"n = {pairing.n} pairs ({pairing.rule}). Difference = {pairing.other} − "
            f"{pairing.baseline} on {comparison.split} at each run's best epoch, in percentage "
            "points (losses in their units); 95% Student-t and percentile bootstrap intervals "
            "over pairs; p from the paired t-test, Holm-adjusted over the secondary rows. "
            "Classes are listed rarest first."
        ),
        *(_para(line) for line in [*comparison.notes, *comparison_sentences(comparison)]),
        _note(stats.few_pairs_note(pairing.n)) if pairing.n < stats.FEW_PAIRS else "",
        _table(comparison_display(table, pairing)),
        _image(plots.comparison_figure(table, pairing.baseline, pairing.other), "comparison"),
        "<details><summary>pairs</summary>",
        _table(pairing.pairs[["key", "baseline_run", "other_run"]]),
        "</details>\n",
    ]
    return "".join(parts)


@section("classes", "Class distribution")
def _classes_section(c: Context) -> str:
    if c.info is None:
        raise AnalysisError(f"the parent run has no {contract.CLASSES_ARTIFACT}")
    frame = pd.DataFrame(
        {
            "class": c.info.names,
            "train": _pad(c.info.train_counts, c.info.names),
            "val": _pad(c.info.val_counts, c.info.names),
            **({"test": list(c.info.test_counts)} if c.info.counts(tables.TEST) else {}),
        }
    )
    return _image(plots.class_distribution_figure(c.info), "class distribution") + _table(frame)


def _pad(counts: tuple[int, ...], names: tuple[str, ...]) -> list:
    return list(counts) if len(counts) == len(names) else [np.nan] * len(names)


def _best_run_per_arm(c: Context) -> dict[str, str]:
    """Run id -> arm, for the best finished run of each arm."""
    done = tables.finished(c.sweep.runs)
    arms = tables.arm(done, c.sweep.factor)
    best = {}
    for name in sorted(arms.unique()):
        try:
            run = tables.pick_best_run(done[arms == name], metric=c.sweep.metric, mode=c.sweep.mode)
        except AnalysisError:
            continue  # an arm whose runs never reported the metric has no best run
        best[run["run_id"]] = name
    return best


@section("curves", "Learning curves")
def _curves_section(c: Context) -> str:
    done = tables.finished(c.sweep.runs)
    arms = tables.arm(done, c.sweep.factor)
    best_ids = _best_run_per_arm(c)
    parts = []
    if best_ids:
        points = curves.long_histories(results.histories(c.store, best_ids), best_ids)
        parts += [
            _para("The best run of each arm, per epoch (dashed: train, solid: val)."),
            _image(plots.curves_figure(points, "best run per arm"), "curves of the best runs"),
        ]
    every = dict(zip(done["run_id"], arms, strict=True))
    val_only = [
        m for m in curves.CURVE_METRICS if m.startswith(contract.split_metric(contract.VAL, ""))
    ]
    points = curves.long_histories(results.histories(c.store, every), every, val_only)
    parts += [
        _para(f"Every finished run ({len(every)}), validation only, coloured by arm."),
        _image(plots.curves_figure(points, "every finished run", alpha=0.4), "curves of all runs"),
    ]
    confirm = done[tables.role(done) == contract.CONFIRMATION_ROLE]
    group_runs = confirm if not confirm.empty else done
    groups = dict(zip(group_runs["run_id"], arms[group_runs.index], strict=True))
    bands = curves.band(curves.long_histories(results.histories(c.store, groups), groups))
    which = "confirmation runs (seeds)" if not confirm.empty else "all finished runs"
    parts += [
        _para(f"Per arm: mean ± std over its {which}."),
        _image(plots.band_figure(bands, f"mean ± std over {which}"), "curves per arm"),
    ]
    return "".join(parts)


@section("confusion", "Confusion matrices")
def _confusion_section(c: Context) -> str:
    matrices = results.run_confusion(c.store, c.run)
    parts = [_para(f"Run {_run_label(c.run)}, at its best epoch.")]
    for split in matrices.counts:
        best, worst = matrices.best_and_worst(split)
        parts.append(_para(f"{split}: best class {best}, worst class {worst} (by F1)."))
        figure = plots.confusion_figure(matrices.counts[split], matrices.classes, split)
        parts.append(_image(figure, f"{split} confusion matrix"))
    return "".join(parts)


@section("per-class", "Per-class precision, recall and F1")
def _per_class_section(c: Context) -> str:
    matrices = results.run_confusion(c.store, c.run)
    table = matrices.per_class_table()
    if c.info is not None:  # rarest first, like the comparison
        rank = {name: i for i, name in enumerate(c.info.minority_first())}
        table = table.sort_values(
            ["split", "class"], key=lambda col: col.map(rank) if col.name == "class" else col
        )
    return _para(f"Run {_run_label(c.run)}; classes rarest first.") + _table(table)


SPLIT_WORDS = {contract.VAL: "validation set", tables.TEST: "held-out test set"}


def _split_predictions(c: Context) -> tuple[dict[str, np.ndarray], str]:
    return results.run_predictions(c.store, c.run, c.split)


def _class_names(c: Context, n: int) -> list[str]:
    if c.info is not None and len(c.info.names) == n:
        return list(c.info.names)
    return [str(i) for i in range(n)]


@section("roc", "ROC curves")
def _roc_section(c: Context) -> str:
    arrays, split = _split_predictions(c)
    classes = _class_names(c, arrays["y_prob"].shape[1])
    found = predictions.roc_curves(arrays["y_true"], arrays["y_prob"], classes)
    aucs = pd.DataFrame({"class": [r.name for r in found], "AUC": [r.auc for r in found]})
    title = f"ROC one-vs-rest, macro AUC {predictions.macro_auc(found):.3f}"
    return (
        _para(f"Run {_run_label(c.run)}, {SPLIT_WORDS[split]}.")
        + _image(plots.roc_figure(found, title), "ROC curves")
        + _table(aucs)
    )


@section("embedding", "Embedding (t-SNE)")
def _embedding_section(c: Context) -> str:
    arrays, split = _split_predictions(c)
    classes = _class_names(c, arrays["y_prob"].shape[1])
    points, index = predictions.tsne_2d(arrays["embedding"], seed=c.seed)
    labels = np.asarray(arrays["y_true"])[index]
    colour = "true class"
    if labels.ndim == 2:  # multi-label: colour by the first label an image carries
        labels, colour = labels.argmax(axis=1), "first true label"
    title = f"t-SNE of penultimate-layer embeddings ({len(index)} {split} images)"
    figure = plots.scatter_figure(points, labels, classes, title)
    return _para(f"Run {_run_label(c.run)}, coloured by {colour}.") + _image(figure, "t-SNE")


@section("misclassified", "Misclassified validation images")
def _misclassified_section(c: Context) -> str:
    arrays = c.store.read_npz(c.run["run_id"], contract.MISCLASSIFIED_ARTIFACT)
    if len(arrays["images"]) == 0:
        return _note("The best run misclassified no validation image.")
    seen = int(max(arrays["y_true"].max(), arrays["y_pred"].max())) + 1
    classes = list(c.info.names) if c.info is not None else [str(i) for i in range(seen)]
    figure = plots.misclassified_figure(
        arrays["images"], arrays["y_true"], arrays["y_pred"], classes
    )
    return _para(f"Run {_run_label(c.run)}: true → predicted.") + _image(figure, "misclassified")


@section("importance", "Hyperparameter importance")
def _importance_section(c: Context) -> str:
    studies = importance.sweep_studies(c.store, c.sweep)
    found = importance.param_importance(
        c.sweep.runs, metric=c.sweep.metric, mode=c.sweep.mode, studies=studies
    )
    dropped = (
        _note(f"Left out (absent from some trials): {', '.join(found.dropped)}.")
        if found.dropped
        else ""
    )
    if found.reason:
        return _note(f"Importance not computed: {found.reason}.") + dropped
    frame = pd.DataFrame({"param": found.values.index, "importance": found.values.to_numpy()})
    return (
        _para(
            "Optuna's fANOVA importance of each hyperparameter for the search runs' "
            f"{contract.best_metric(c.sweep.metric)}"
            + (", from the arms' own Optuna studies." if studies else ".")
        )
        + _image(plots.importance_figure(found.values), "importance")
        + _table(frame)
        + dropped
    )


@section("parallel", "Parallel coordinates")
def _parallel_section(c: Context) -> str:
    studies = importance.sweep_studies(c.store, c.sweep)
    view = importance.parallel_coordinates(c.sweep.runs, metric=c.sweep.metric, studies=studies)
    if not view.axes or len(view.score) < 2:
        return _note("Fewer than two search runs or no searched hyperparameter.")
    return _image(plots.parallel_figure(view), "parallel coordinates")


__all__ = ["SECTIONS", "Report", "Section", "build_report", "section", "section_titles"]
