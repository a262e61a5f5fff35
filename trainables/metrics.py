"""Classification metrics: pure functions of label arrays, on top of scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    precision_recall_fscore_support,
)

from trainables.contract import class_metric, metric_safe


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], prefix: str
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and per-class precision/recall/F1."""
    labels = np.arange(len(classes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    metrics = {
        f"{prefix}_accuracy": accuracy_score(y_true, y_pred),
        f"{prefix}_balanced_accuracy": _balanced_accuracy(y_true, y_pred),
        f"{prefix}_macro_f1": f1_score(
            y_true, y_pred, labels=labels, average="macro", zero_division=0
        ),
    }
    for i, name in enumerate(classes):
        key = metric_safe(name)
        metrics[class_metric(prefix, "precision", key)] = precision[i]
        metrics[class_metric(prefix, "recall", key)] = recall[i]
        metrics[class_metric(prefix, "f1", key)] = f1[i]
    return {k: float(v) for k, v in metrics.items()}


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    import warnings

    with warnings.catch_warnings():  # a class absent from y_true is a warning, not an error
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, y_pred))


def multilabel_metrics(
    y_true: np.ndarray, y_score: np.ndarray, classes: Sequence[str], prefix: str, threshold=0.5
) -> dict[str, float]:
    """Per-label accuracy, precision, recall, F1 and IoU, plus mean average precision."""
    y_pred = (y_score >= threshold).astype(int)
    y_true = y_true.astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=0
    )
    iou = jaccard_score(y_true, y_pred, average=None, zero_division=0)
    per_label_acc = (y_true == y_pred).mean(axis=0)
    present = y_true.sum(axis=0) > 0  # average precision is undefined for an absent label
    metrics = {
        f"{prefix}_accuracy": accuracy_score(y_true, y_pred),  # exact match of the label set
        f"{prefix}_balanced_accuracy": float(recall.mean()),
        f"{prefix}_macro_f1": f1_score(y_true, y_pred, average="macro", zero_division=0),
        f"{prefix}_map": average_precision_score(y_true[:, present], y_score[:, present])
        if present.any()
        else 0.0,
        f"{prefix}_iou": float(iou.mean()),
    }
    for i, name in enumerate(classes):
        key = metric_safe(name)
        metrics[class_metric(prefix, "label_accuracy", key)] = per_label_acc[i]
        metrics[class_metric(prefix, "precision", key)] = precision[i]
        metrics[class_metric(prefix, "recall", key)] = recall[i]
        metrics[class_metric(prefix, "f1", key)] = f1[i]
        metrics[class_metric(prefix, "iou", key)] = iou[i]
    return {k: float(v) for k, v in metrics.items()}


def normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the recall view); a class with no samples stays 0."""
    matrix = np.asarray(matrix, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    return confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
