"""Classification metrics: pure functions of label arrays. Single-label metrics come from
the confusion matrix in numpy (scikit-learn's definitions, checked against it by the tests):
a trial's worker process then never imports scikit-learn, which costs more than a second at
every worker start. Multilabel metrics use scikit-learn."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainables.contract import class_metric, metric_safe


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str], prefix: str
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1 and per-class precision/recall/F1."""
    matrix = confusion(y_true, y_pred, len(classes))
    precision, recall, f1 = per_class_scores(matrix)
    metrics = {f"{prefix}_{name}": value for name, value in _matrix_scores(matrix).items()}
    for i, name in enumerate(classes):
        key = metric_safe(name)
        metrics[class_metric(prefix, "precision", key)] = precision[i]
        metrics[class_metric(prefix, "recall", key)] = recall[i]
        metrics[class_metric(prefix, "f1", key)] = f1[i]
    return {k: float(v) for k, v in metrics.items()}


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F1 of each class from a confusion matrix (rows true, columns
    predicted); 0 where a denominator is 0, as scikit-learn's ``zero_division=0``."""
    hits = np.diag(matrix).astype(float)
    precision = _divide(hits, matrix.sum(axis=0))
    recall = _divide(hits, matrix.sum(axis=1))
    return precision, recall, _divide(2 * precision * recall, precision + recall)


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean recall over the classes present among the true labels (scikit-learn leaves out
    the others, with a warning)."""
    support = matrix.sum(axis=1)
    present = support > 0
    if not present.any():
        return 0.0
    return float((np.diag(matrix)[present] / support[present]).mean())


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    denominator = np.asarray(denominator, dtype=float)
    return np.divide(numerator, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def multilabel_metrics(
    y_true: np.ndarray, y_score: np.ndarray, classes: Sequence[str], prefix: str, threshold=0.5
) -> dict[str, float]:
    """Per-label accuracy, precision, recall, F1 and IoU, plus mean average precision."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        jaccard_score,
        precision_recall_fscore_support,
    )

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
    """Counts of (true, predicted) pairs, every class a row and a column even when absent."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    for labels in (y_true, y_pred):
        if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
            raise ValueError(f"labels outside 0..{num_classes - 1}: {np.unique(labels)}")
    pairs = y_true * num_classes + y_pred
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def chance_level(
    metric: str, counts: Sequence[int], *, samples: int | None = None, multilabel: bool = False
) -> float | None:
    """The best score of a predictor that never looks at the image, for a split with these
    class ``counts`` (multi-label: positives per label among ``samples`` images); None for a
    metric without such a baseline (losses, whose scale depends on the loss).

    The predictors: always the same class, or a class drawn from the prior (its expected
    confusion matrix). Macro F1 of the prior draw is 1/K when every class is present; accuracy
    of always the majority class is its share. Multi-label: every label always on (its F1
    is 2p/(1+p)), and a constant score (average precision = the label's prevalence)."""
    name = metric.split("_", 1)[1] if metric.startswith(("val_", "test_", "train_")) else metric
    counts = np.asarray(counts, dtype=float)
    if multilabel:
        prevalence = counts / max(samples or 1, 1)
        scores = {"map": prevalence.mean(), "macro_f1": (2 * prevalence / (1 + prevalence)).mean()}
        return float(scores[name]) if name in scores else None
    if name not in {"accuracy", "balanced_accuracy", "macro_f1"} or counts.sum() == 0:
        return None
    prior = counts / counts.sum()
    matrices = [np.outer(counts, prior)]  # the prior draw, in expectation
    for k in range(len(counts)):
        constant = np.zeros((len(counts), len(counts)))
        constant[:, k] = counts
        matrices.append(constant)
    return max(_matrix_scores(m)[name] for m in matrices)


def _matrix_scores(matrix: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1 of a confusion matrix (counts, or expected
    counts)."""
    return {
        "accuracy": _ratio(np.trace(matrix), matrix.sum()),
        "balanced_accuracy": balanced_accuracy(matrix),
        "macro_f1": float(per_class_scores(matrix)[2].mean()),
    }
