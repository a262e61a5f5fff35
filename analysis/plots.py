"""Thin matplotlib renderers: each takes numbers computed elsewhere and returns a Figure.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so no GUI backend or
global figure registry is involved and nothing has to be closed.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analysis.anytime import AnytimeCurve
from analysis.classes import ClassInfo
from analysis.importance import ParallelCoordinates
from analysis.predictions import RocCurve
from trainables.figures import confusion_figure as confusion_figure  # drawn by the trials too

SPLIT_STYLE = {"train": "--", "val": "-"}


def plain_text(draw: Callable[..., Figure]) -> Callable[..., Figure]:
    """Draw with every text taken as typed: a class or run name holding two ``$`` would
    otherwise be parsed as mathtext, and a malformed one makes saving the figure raise."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs) -> Figure:
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return drawn


def to_png(figure: Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


@plain_text
def class_distribution_figure(info: ClassInfo) -> Figure:
    figure = Figure(figsize=(max(6.0, 0.5 * len(info.names) + 2), 4), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(info.names))
    width = 0.4
    for offset, counts, label in (
        (-width / 2, info.train_counts, "train"),
        (width / 2, info.val_counts, "val"),
    ):
        if len(counts) == len(info.names):
            ax.bar(x + offset, counts, width, label=label)
    ax.set_xticks(x, info.names, rotation=45, ha="right")
    ax.set_ylabel("images")
    ax.set_title("class distribution")
    ax.legend()
    return figure


@plain_text
def curves_figure(points: pd.DataFrame, title: str = "", alpha: float = 0.9) -> Figure:
    """Loss and accuracy against epoch, one colour per group, dashed train, solid val.

    ``points`` has columns run_id, group, metric, epoch, value (``curves.long_histories``).
    """
    figure, axes = _curve_axes(title)
    colors = _group_colors(points["group"].unique())
    for (_run, metric), frame in points.groupby(["run_id", "metric"], sort=False):
        split, kind = metric.split("_", 1)
        group = frame["group"].iloc[0]
        axes[kind].plot(
            frame["epoch"],
            frame["value"],
            SPLIT_STYLE.get(split, "-"),
            color=colors[group],
            label=f"{group} {split}",
            alpha=0.9,
        )
    _finish_curve_axes(axes)
    return figure


@plain_text
def band_figure(bands: pd.DataFrame, title: str = "") -> Figure:
    """Mean over runs with a mean ± std band, per group; columns as ``curves.band``."""
    figure, axes = _curve_axes(title)
    colors = _group_colors(bands["group"].unique())
    for (group, metric), frame in bands.groupby(["group", "metric"], sort=False):
        split, kind = metric.split("_", 1)
        color = colors[group]
        ax = axes[kind]
        n = int(frame["n"].max())
        ax.plot(
            frame["epoch"],
            frame["mean"],
            SPLIT_STYLE.get(split, "-"),
            color=color,
            label=f"{group} {split} (n={n})",
        )
        std = frame["std"].fillna(0.0)
        ax.fill_between(
            frame["epoch"], frame["mean"] - std, frame["mean"] + std, color=color, alpha=0.15
        )
    _finish_curve_axes(axes)
    return figure


def _curve_axes(title: str):
    figure = Figure(figsize=(11, 4), layout="constrained")
    loss, accuracy = figure.subplots(1, 2)
    loss.set_title("loss")
    accuracy.set_title("accuracy")
    if title:
        figure.suptitle(title)
    return figure, {"loss": loss, "accuracy": accuracy}


def _finish_curve_axes(axes: dict) -> None:
    for ax in axes.values():
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))  # one legend entry per group/split
        if unique:
            ax.legend(unique.values(), unique.keys(), fontsize=8)


def _group_colors(groups: Sequence[str]) -> dict[str, str]:
    return {g: f"C{i % 10}" for i, g in enumerate(sorted(groups))}


@plain_text
def anytime_figure(curves: Mapping[str, AnytimeCurve], metric: str) -> Figure:
    """Each arm's best value so far against the epochs its search had spent (a step after
    each trial), a star where the arm's best came (``anytime.arm_curves``)."""
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    colors = _group_colors(list(curves))
    for arm, curve in curves.items():
        color = colors[arm]
        x = np.concatenate([[0], curve.spent])
        y = np.concatenate([[np.nan], curve.best_so_far])
        k, n = curve.best_trial, curve.n
        label = f"{arm}: best at trial {k} of {n}" if k else f"{arm}: no value in {n} trials"
        ax.step(x, y, where="post", color=color, label=label)
        ax.plot(curve.spent, curve.best_so_far, "o", color=color, markersize=3)
        if curve.best_trial is not None:
            ax.plot(curve.epochs_at_best, curve.best_value, "*", color=color, markersize=14)
    ax.set_xlabel("epochs spent by the search (all trials so far)")
    ax.set_ylabel(f"best {metric} so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("anytime curve per arm (★ where its best came)")
    if curves:
        ax.legend(fontsize=8)
    return figure


@plain_text
def roc_figure(curves: Sequence[RocCurve], title: str = "") -> Figure:
    figure = Figure(figsize=(6, 5.5), layout="constrained")
    ax = figure.subplots()
    for curve in curves:
        ax.plot(curve.fpr, curve.tpr, label=f"{curve.name} (AUC {curve.auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title or "ROC, one-vs-rest")
    ax.legend(fontsize=7, loc="lower right")
    return figure


@plain_text
def scatter_figure(
    points: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str = ""
) -> Figure:
    """2-D points coloured by class (the t-SNE map)."""
    figure = Figure(figsize=(7, 6), layout="constrained")
    ax = figure.subplots()
    cmap = "tab10" if len(classes) <= 10 else "tab20"
    for i, name in enumerate(classes):
        chosen = labels == i
        if chosen.any():
            ax.scatter(
                points[chosen, 0], points[chosen, 1], s=8, label=name, color=_cmap_color(cmap, i)
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return figure


def _cmap_color(name: str, i: int):
    cmap = colormaps[name]
    return cmap(i % cmap.N)


@plain_text
def misclassified_figure(
    images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]
) -> Figure:
    """A grid of images (N, C, H, W) uint8 titled ``true -> predicted``."""
    n = len(images)
    cols = min(6, max(n, 1))
    rows = max(1, int(np.ceil(n / cols)))
    figure = Figure(figsize=(2 * cols, 2.2 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, true, pred in zip(axes, images, y_true, y_pred, strict=False):
        picture = np.transpose(image, (1, 2, 0))
        if picture.shape[2] == 1:
            ax.imshow(picture[:, :, 0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(picture[:, :, :3])
        ax.set_title(f"{classes[int(true)]} → {classes[int(pred)]}", fontsize=8)
    return figure


@plain_text
def importance_figure(importances: pd.Series) -> Figure:
    figure = Figure(figsize=(6, 0.5 * len(importances) + 1.5), layout="constrained")
    ax = figure.subplots()
    ordered = importances.sort_values()
    ax.barh(ordered.index, ordered.to_numpy())
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title("hyperparameter importance")
    return figure


@plain_text
def parallel_figure(view: ParallelCoordinates) -> Figure:
    """One line per search trial across the hyperparameter axes, coloured by the metric."""
    figure = Figure(figsize=(max(6.0, 1.6 * len(view.axes) + 2), 4.5), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(view.axes))
    finite = view.score[np.isfinite(view.score)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    norm = Normalize(low, high if high > low else low + 1e-12)
    cmap = colormaps["viridis"]
    # Drawn worst first, so the best trials end up on top.
    order = np.argsort(np.nan_to_num(view.score, nan=-np.inf))
    for i in order:
        ax.plot(x, view.coords[i], color=cmap(norm(view.score[i])), alpha=0.8, linewidth=1.2)
    for i, ticks in enumerate(view.ticks):
        ax.axvline(i, color="grey", linewidth=0.8)
        for position, label in ticks:
            ax.annotate(
                label,
                (i, position),
                textcoords="offset points",
                xytext=(3, 0),
                fontsize=7,
                va="center",
            )
    ax.set_xticks(x, view.axes)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=view.metric)
    ax.set_title("search trials (best trials drawn on top)")
    return figure


@plain_text
def comparison_figure(table: pd.DataFrame, baseline: str, other: str) -> Figure:
    """Mean paired difference with its 95% CI per metric (a forest plot), first row on top."""
    figure = Figure(figsize=(7, 0.35 * len(table) + 1.5), layout="constrained")
    ax = figure.subplots()
    y = np.arange(len(table))[::-1]
    diff = table["difference"].to_numpy(dtype=float)
    low = table["ci_low"].to_numpy(dtype=float)
    high = table["ci_high"].to_numpy(dtype=float)
    errors = np.nan_to_num(np.vstack([diff - low, high - diff]), nan=0.0)
    t_low = table["t_low"].to_numpy(dtype=float)
    t_high = table["t_high"].to_numpy(dtype=float)
    # Red where the verdict (both intervals) calls a winner; the thin line is the t interval.
    colors = np.where(table["verdict"].str.endswith(" better"), "C3", "C0")
    for i, yi in enumerate(y):
        if not np.isnan(t_low[i]):
            ax.plot([t_low[i], t_high[i]], [yi, yi], color=colors[i], linewidth=0.8, alpha=0.6)
        ax.errorbar(
            diff[i],
            yi,
            xerr=[[errors[0, i]], [errors[1, i]]],
            fmt="o",
            color=colors[i],
            capsize=3,
            linewidth=2,
        )
    ax.axvline(0, color="grey", linestyle=":")
    labels = [
        f"{m.split('.', 1)[0]} ({c})" if c else m
        for m, c in zip(table["metric"], table.get("class", [""] * len(table)), strict=True)
    ]
    ax.set_yticks(y, labels)
    ax.set_xlabel(
        f"{other} − {baseline}: mean paired difference, 95% bootstrap CI (capped) "
        "and t interval (thin)"
    )
    return figure
