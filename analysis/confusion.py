"""Confusion matrices and the per-class numbers read off them. Pure numpy/pandas."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from trainables.metrics import normalise_rows as normalise_rows  # the trials draw it too


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    flat = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes)


def per_class_metrics(matrix: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class; 0 where a ratio is undefined, as
    scikit-learn's ``zero_division=0``."""
    matrix = np.asarray(matrix, dtype=float)
    hits = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return pd.DataFrame(
        {
            "class": list(classes),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "support": support.astype(int),
        }
    )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=float), where=den > 0)


def best_and_worst(per_class: pd.DataFrame, by: str = "f1") -> tuple[str, str]:
    """The classes with the highest and lowest ``by`` among classes that have samples; of
    tied classes, the first in class order."""
    present = per_class[per_class["support"] > 0].reset_index(drop=True)
    scores = present[by].to_numpy(dtype=float)
    return str(present["class"][scores.argmax()]), str(present["class"][scores.argmin()])


def matrix_frame(matrix: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    names = list(classes)
    frame = pd.DataFrame(matrix, index=names, columns=names)
    return frame.rename_axis(index="true", columns="predicted")
