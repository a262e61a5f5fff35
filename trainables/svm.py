"""The ``svm`` classifier: a linear SVM fitted on the train embeddings stands in for the
softmax head (after triplet or center loss, which shape the embedding), its decision values
softmaxed into probabilities. Pure functions of arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from trainables.errors import UserError
from trainables.registry import Registry


class ClassifierError(UserError):
    """An unknown classifier: one line for the user."""


# TrialConfig.classifier: what turns the embedding into class scores.
CLASSIFIERS: Registry[str] = Registry("classifier", ClassifierError)
CLASSIFIERS.register("softmax", "the network's own head")
CLASSIFIERS.register("svm", "a linear SVM fitted on the train embeddings")


def fit_svm(embedding: np.ndarray, labels: np.ndarray, seed: int) -> tuple[Any, Any]:
    """The ``StandardScaler`` and ``LinearSVC`` fitted on the train embeddings (the exported
    model refits them from the same embeddings)."""
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    scaler = StandardScaler().fit(embedding)
    svm = LinearSVC(C=1.0, random_state=seed, max_iter=5000)
    svm.fit(scaler.transform(embedding), labels)
    return scaler, svm


def svm_probabilities(scaler: Any, svm: Any, embedding: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, num_classes) softmaxed decision values; 0 for classes the SVM never saw."""
    scores = _softmax(svm.decision_function(scaler.transform(embedding)))
    out = np.zeros((len(scores), num_classes))
    out[:, svm.classes_] = scores
    return out


def _softmax(scores: np.ndarray) -> np.ndarray:
    if scores.ndim == 1:  # two classes: one decision value
        scores = np.stack([-scores, scores], axis=1)
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
