"""Confusion matrices, per-class numbers, ROC and learning-curve bands against scikit-learn
and numpy on random arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from analysis import confusion, curves, predictions

CLASSES = ["a", "b", "c", "d", "e"]


@pytest.fixture(params=[0, 1, 2])
def labels(request):
    rng = np.random.default_rng(request.param)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 5, 300))
    y_pred[y_pred == 4] = 3  # class "e" is never predicted: precision 0 by convention
    return y_true, y_pred


def test_confusion_matrix_matches_sklearn(labels):
    y_true, y_pred = labels
    ours = confusion.confusion_matrix(y_true, y_pred, 5)
    np.testing.assert_array_equal(ours, skm.confusion_matrix(y_true, y_pred, labels=range(5)))


def test_row_normalisation_matches_sklearn(labels):
    y_true, y_pred = labels
    counts = confusion.confusion_matrix(y_true, y_pred, 5)
    expected = skm.confusion_matrix(y_true, y_pred, labels=range(5), normalize="true")
    np.testing.assert_allclose(confusion.normalise_rows(counts), expected)


def test_normalising_an_empty_row_gives_zeros_not_nan():
    normalised = confusion.normalise_rows(np.array([[2, 2], [0, 0]]))
    np.testing.assert_array_equal(normalised, [[0.5, 0.5], [0.0, 0.0]])


def test_per_class_numbers_match_sklearn(labels):
    y_true, y_pred = labels
    table = confusion.per_class_metrics(confusion.confusion_matrix(y_true, y_pred, 5), CLASSES)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=range(5), zero_division=0
    )
    np.testing.assert_allclose(table["precision"], precision)
    np.testing.assert_allclose(table["recall"], recall)
    np.testing.assert_allclose(table["f1"], f1)
    np.testing.assert_array_equal(table["support"], support)
    assert table.loc[4, "precision"] == 0.0


def test_best_and_worst_class_by_f1(labels):
    y_true, y_pred = labels
    table = confusion.per_class_metrics(confusion.confusion_matrix(y_true, y_pred, 5), CLASSES)
    f1 = skm.f1_score(y_true, y_pred, labels=range(5), average=None, zero_division=0)
    assert confusion.best_and_worst(table) == (CLASSES[f1.argmax()], CLASSES[f1.argmin()])


def test_a_class_without_samples_is_neither_best_nor_worst():
    table = confusion.per_class_metrics(np.array([[5, 0, 0], [1, 3, 0], [0, 0, 0]]), "xyz")
    assert confusion.best_and_worst(table) == ("x", "y")


def test_roc_auc_matches_sklearn_one_vs_rest():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 200)
    logits = np.eye(4)[y_true] * 1.5 + rng.normal(0, 1, (200, 4))
    y_prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    found = predictions.roc_curves(y_true, y_prob, ["w", "x", "y", "z"])
    expected = skm.roc_auc_score(y_true, y_prob, multi_class="ovr", average=None)
    np.testing.assert_allclose([c.auc for c in found], expected)
    assert predictions.macro_auc(found) == pytest.approx(expected.mean())


def test_roc_skips_a_class_absent_from_the_labels():
    y_prob = np.full((4, 3), 1 / 3)
    found = predictions.roc_curves(np.array([0, 1, 0, 1]), y_prob, ["a", "b", "c"])
    assert [c.name for c in found] == ["a", "b"]


def test_tsne_gives_one_2d_point_per_sampled_row():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(60, 8))
    points, index = predictions.tsne_2d(embedding, max_points=40)
    assert points.shape == (40, 2)
    assert len(set(index)) == 40 and index.max() < 60
    assert np.isfinite(points).all()


def test_band_is_mean_and_std_over_runs_per_epoch():
    history = {
        "r1": pd.DataFrame({"val_loss": [1.0, 0.5]}, index=[1, 2]),
        "r2": pd.DataFrame({"val_loss": [3.0, 0.7]}, index=[1, 2]),
        "r3": pd.DataFrame({"val_loss": [2.0]}, index=[1]),  # stopped early
    }
    points = curves.long_histories(history, {"r1": "ce", "r2": "ce", "r3": "focal"})
    bands = curves.band(points).set_index(["group", "epoch"])
    assert bands.loc[("ce", 1), "mean"] == pytest.approx(2.0)
    assert bands.loc[("ce", 1), "std"] == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert bands.loc[("ce", 2), "n"] == 2
    assert bands.loc[("focal", 1), "n"] == 1
    assert ("focal", 2) not in bands.index


def test_class_names_with_dollar_signs_are_drawn_as_typed():
    """Two ``$`` in a name are mathtext to matplotlib; '$$' made saving the figure raise."""
    import pandas as pd

    from analysis import plots
    from analysis.classes import ClassInfo

    names = ("$$", "a$b$", "plain")
    figure = plots.class_distribution_figure(ClassInfo(names, (5, 3, 2), (2, 1, 1)))
    assert plots.to_png(figure).startswith(b"\x89PNG")
    ticks = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert ticks == list(names)
    importances = pd.Series([0.7, 0.3], index=["lr$", "$gamma$"])
    assert plots.to_png(plots.importance_figure(importances)).startswith(b"\x89PNG")
