"""Single-label or multi-label: one small object knows what differs between the two (how
scores become probabilities and predictions, which metrics, the confusion matrix, which images
are wrong, how classes are counted and splits stratified), so the rest of the code asks it
instead of checking a flag.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trainables.metrics import chance_level, classification_metrics, confusion, multilabel_metrics

THRESHOLD = 0.5  # a multi-label image shows a label when its probability reaches this


class Task:
    """One label per image: softmax, argmax, the confusion matrix."""

    name = "single-label"
    multilabel = False

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def predictions(self, prob: np.ndarray) -> np.ndarray:
        """A class index per image."""
        return prob.argmax(axis=1)

    def metrics(
        self, y_true: np.ndarray, prob: np.ndarray, classes: Sequence[str], prefix: str
    ) -> dict[str, float]:
        return classification_metrics(y_true, self.predictions(prob), classes, prefix)

    def confusion(self, y_true: np.ndarray, prob: np.ndarray, num_classes: int) -> np.ndarray:
        """Counts of (true, predicted) pairs; None where a matrix means nothing."""
        return confusion(y_true, self.predictions(prob), num_classes)

    def wrong(self, y_true: np.ndarray, prob: np.ndarray) -> np.ndarray:
        """Row numbers of the images predicted wrongly."""
        return np.flatnonzero(self.predictions(prob) != y_true)

    def class_counts(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        """Images per class (multi-label: images showing each label)."""
        return np.bincount(y, minlength=num_classes)

    def stratify_by(self, y: np.ndarray) -> np.ndarray | None:
        """The labels a split is stratified on, or None where they cannot be."""
        return y

    def chance(self, metric: str, y: np.ndarray, num_classes: int) -> float | None:
        """The best value of ``metric`` a predictor that never looks at the image reaches."""
        return chance_level(metric, self.class_counts(y, num_classes), samples=len(y))


class MultiLabelTask(Task):
    """A set of labels per image: sigmoid per label, a threshold, per-label metrics."""

    name = "multi-label"
    multilabel = True

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def predictions(self, prob: np.ndarray) -> np.ndarray:
        """0/1 per image and label."""
        return (prob >= THRESHOLD).astype(int)

    def metrics(
        self, y_true: np.ndarray, prob: np.ndarray, classes: Sequence[str], prefix: str
    ) -> dict[str, float]:
        return multilabel_metrics(y_true, prob, classes, prefix, threshold=THRESHOLD)

    def confusion(self, y_true: np.ndarray, prob: np.ndarray, num_classes: int) -> None:
        return None

    def wrong(self, y_true: np.ndarray, prob: np.ndarray) -> np.ndarray:
        return np.flatnonzero((self.predictions(prob) != (y_true > 0.5)).any(axis=1))

    def class_counts(self, y: np.ndarray, num_classes: int) -> np.ndarray:
        return y.sum(axis=0).astype(int)

    def stratify_by(self, y: np.ndarray) -> None:
        return None

    def chance(self, metric: str, y: np.ndarray, num_classes: int) -> float | None:
        counts = self.class_counts(y, num_classes)
        return chance_level(metric, counts, samples=len(y), multilabel=True)


SINGLE_LABEL, MULTI_LABEL = Task(), MultiLabelTask()


def task_of(multilabel: bool) -> Task:
    return MULTI_LABEL if multilabel else SINGLE_LABEL
