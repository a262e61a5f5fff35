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
    """One matrix: each cell's count, coloured by its share of the true class (the recall view,
    on a fixed 0 to 1 scale, so a rare class's row is as visible as a common one's); each true
    class is labelled with its number of images. One panel draws in half the time of two."""
    counts = np.asarray(counts)
    size = _size_for(len(classes))
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = figure.subplots()
    share = normalise_rows(counts)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    support = counts.sum(axis=1)
    # Class names as typed: matplotlib reads text between two $ as mathtext, which failed to
    # parse at savefig for some names ($$) and drew others in italics.
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", parse_math=False)
    rows = [f"{name} ({int(n)})" for name, n in zip(classes, support, strict=True)]
    ax.set_yticks(range(len(classes)), rows, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (images)")
    ax.set_title(f"{title}: counts, coloured by share of the true class".lstrip(": "))
    if len(classes) <= 20:  # numbers in cells stop being readable beyond that
        _annotate(ax, counts, share)
    return figure


def _annotate(ax, counts: np.ndarray, share: np.ndarray) -> None:
    for (i, j), value in np.ndenumerate(counts):
        color = "white" if share[i, j] > 0.5 else "black"
        # Inside the axes, so the layout need not measure them.
        ax.text(
            j,
            i,
            str(int(value)),
            ha="center",
            va="center",
            color=color,
            fontsize=8,
            in_layout=False,
        )
