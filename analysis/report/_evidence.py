"""The report's evidence: classes, learning curves, confusion matrices, per-class metrics,
ROC curves, embeddings, misclassified images, importance and parallel coordinates."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import curves, importance, plots, predictions, results, tables
from analysis.errors import AnalysisError
from analysis.report._document import Context, image, note, para, run_label, section, table_html
from trainables import contract


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
    return image(plots.class_distribution_figure(c.info), "class distribution") + table_html(frame)


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
            para("The best run of each arm, per epoch (dashed: train, solid: val)."),
            image(plots.curves_figure(points, "best run per arm"), "curves of the best runs"),
        ]
    every = dict(zip(done["run_id"], arms, strict=True))
    val_only = [
        m for m in curves.CURVE_METRICS if m.startswith(contract.split_metric(contract.VAL, ""))
    ]
    points = curves.long_histories(results.histories(c.store, every), every, val_only)
    parts += [
        para(f"Every finished run ({len(every)}), validation only, coloured by arm."),
        image(plots.curves_figure(points, "every finished run", alpha=0.4), "curves of all runs"),
    ]
    confirm = done[tables.role(done) == contract.CONFIRMATION_ROLE]
    group_runs = confirm if not confirm.empty else done
    groups = dict(zip(group_runs["run_id"], arms[group_runs.index], strict=True))
    bands = curves.band(curves.long_histories(results.histories(c.store, groups), groups))
    which = "confirmation runs (seeds)" if not confirm.empty else "all finished runs"
    parts += [
        para(f"Per arm: mean ± std over its {which}."),
        image(plots.band_figure(bands, f"mean ± std over {which}"), "curves per arm"),
    ]
    return "".join(parts)


@section("confusion", "Confusion matrices")
def _confusion_section(c: Context) -> str:
    matrices = results.run_confusion(c.store, c.run)
    parts = [para(f"Run {run_label(c.run)}, at its best epoch.")]
    for split in matrices.counts:
        best, worst = matrices.best_and_worst(split)
        parts.append(para(f"{split}: best class {best}, worst class {worst} (by F1)."))
        figure = plots.confusion_figure(matrices.counts[split], matrices.classes, split)
        parts.append(image(figure, f"{split} confusion matrix"))
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
    return para(f"Run {run_label(c.run)}; classes rarest first.") + table_html(table)


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
        para(f"Run {run_label(c.run)}, {SPLIT_WORDS[split]}.")
        + image(plots.roc_figure(found, title), "ROC curves")
        + table_html(aucs)
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
    return para(f"Run {run_label(c.run)}, coloured by {colour}.") + image(figure, "t-SNE")


@section("misclassified", "Misclassified validation images")
def _misclassified_section(c: Context) -> str:
    arrays = c.store.read_npz(c.run["run_id"], contract.MISCLASSIFIED_ARTIFACT)
    if len(arrays["images"]) == 0:
        return note("The best run misclassified no validation image.")
    seen = int(max(arrays["y_true"].max(), arrays["y_pred"].max())) + 1
    classes = list(c.info.names) if c.info is not None else [str(i) for i in range(seen)]
    figure = plots.misclassified_figure(
        arrays["images"], arrays["y_true"], arrays["y_pred"], classes
    )
    return para(f"Run {run_label(c.run)}: true → predicted.") + image(figure, "misclassified")


@section("importance", "Hyperparameter importance")
def _importance_section(c: Context) -> str:
    studies = importance.sweep_studies(c.store, c.sweep)
    found = importance.param_importance(
        c.sweep.runs, metric=c.sweep.metric, mode=c.sweep.mode, studies=studies
    )
    dropped = (
        note(f"Left out (absent from some trials): {', '.join(found.dropped)}.")
        if found.dropped
        else ""
    )
    if found.reason:
        return note(f"Importance not computed: {found.reason}.") + dropped
    frame = pd.DataFrame({"param": found.values.index, "importance": found.values.to_numpy()})
    return (
        para(
            "Optuna's fANOVA importance of each hyperparameter for the search runs' "
            f"{contract.best_metric(c.sweep.metric)}"
            + (", from the arms' own Optuna studies." if studies else ".")
        )
        + image(plots.importance_figure(found.values), "importance")
        + table_html(frame)
        + dropped
    )


@section("parallel", "Parallel coordinates")
def _parallel_section(c: Context) -> str:
    studies = importance.sweep_studies(c.store, c.sweep)
    view = importance.parallel_coordinates(c.sweep.runs, metric=c.sweep.metric, studies=studies)
    if not view.axes or len(view.score) < 2:
        return note("Fewer than two search runs or no searched hyperparameter.")
    return image(plots.parallel_figure(view), "parallel coordinates")
