"""Figures a trial logs with its run. Built with ``matplotlib.figure.Figure`` rather than
pyplot, so no GUI backend or global figure registry is involved and nothing has to be closed.
``analysis.plots`` draws the same figures from what the runs logged."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from trainables.metrics import normalise_rows


def _size_for(n_classes: int) -> float:
    return min(3.0 + 0.35 * n_classes, 12.0)


def confusion_figure(counts: np.ndarray, classes: Sequence[str], title: str = "") -> Figure:
    """Counts and row-normalised matrix side by side, class names on both axes."""
    size = _size_for(len(classes))
    figure = Figure(figsize=(2 * size + 1, size), layout="constrained")
    panels = figure.subplots(1, 2)
    annotate = len(classes) <= 20  # numbers in cells stop being readable beyond that
    for ax, matrix, name, fmt in (
        (panels[0], np.asarray(counts), "counts", "d"),
        (panels[1], normalise_rows(counts), "row-normalised (recall)", ".2f"),
    ):
        image = ax.imshow(matrix, cmap="Blues", vmin=0)
        figure.colorbar(image, ax=ax, shrink=0.8)
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title} {name}".strip())
        if annotate:
            _annotate(ax, matrix, fmt)
    return figure


def _annotate(ax, matrix: np.ndarray, fmt: str) -> None:
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        text = format(int(value), fmt) if fmt == "d" else format(value, fmt)
        color = "white" if value > threshold else "black"
        # Inside the axes, so the layout need not measure them: a quarter of a picture's time.
        ax.text(j, i, text, ha="center", va="center", color=color, fontsize=8, in_layout=False)
