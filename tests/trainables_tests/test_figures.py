"""The confusion picture a confirmation run logs and the report shows."""

import numpy as np

from trainables.edge.tracking import png_bytes
from trainables.figures import confusion_figure

COUNTS = np.array([[8, 2, 0], [1, 1, 0], [0, 0, 0]])
CLASSES = ("normal", "pneumonia", "covid")


def test_the_picture_shows_counts_coloured_by_share_of_the_true_class():
    figure = confusion_figure(COUNTS, CLASSES, "val (epoch 3)")
    ax = figure.axes[0]
    shown = ax.images[0].get_array()
    np.testing.assert_allclose(shown, [[0.8, 0.2, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    assert ax.images[0].get_clim() == (0, 1)  # the same scale in every run's picture
    cells = [t.get_text() for t in ax.texts]
    assert cells == [str(v) for v in COUNTS.ravel()]
    assert [t.get_text() for t in ax.get_yticklabels()] == [
        "normal (10)",
        "pneumonia (2)",
        "covid (0)",
    ]
    assert ax.get_title() == "val (epoch 3): counts, coloured by share of the true class"
    assert png_bytes(figure)[:8] == b"\x89PNG\r\n\x1a\n"


def test_many_classes_leave_the_cells_unnumbered():
    counts = np.eye(21, dtype=int)
    figure = confusion_figure(counts, tuple(f"c{i}" for i in range(21)))
    assert len(figure.axes[0].texts) == 0


def test_class_names_with_dollar_signs_are_drawn_as_typed():
    """Matplotlib reads text between two ``$`` as mathtext: ``$$`` failed to parse at
    savefig, and ``a$b$`` drew b in italics."""
    classes = ("$$", "a$b$", "$_$")
    figure = confusion_figure(np.eye(3, dtype=int), classes, "val (epoch 1)")
    assert png_bytes(figure)[:8] == b"\x89PNG\r\n\x1a\n"
    ax = figure.axes[0]
    shown = [(t.get_text(), t.get_parse_math()) for t in ax.get_xticklabels()]
    assert shown == [(name, False) for name in classes]
    rows = [(t.get_text(), t.get_parse_math()) for t in ax.get_yticklabels()]
    assert rows == [(f"{name} (1)", False) for name in classes]
