"""What the saved validation predictions give without retraining: ROC curves and a t-SNE map."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MAX_TSNE_POINTS = 1000  # t-SNE takes ~10 s for this many on 2 cores; enough to show structure


@dataclass(frozen=True)
class RocCurve:
    name: str
    fpr: np.ndarray
    tpr: np.ndarray
    auc: float


def roc_curves(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str]) -> list[RocCurve]:
    """One-vs-rest ROC per class; a class absent from ``y_true`` has no curve."""
    from sklearn.metrics import auc, roc_curve

    y_true = np.asarray(y_true)
    # Multi-label data already stores one 0/1 column per class.
    onehot = y_true if y_true.ndim == 2 else np.eye(len(classes), dtype=int)[y_true]
    curves = []
    for i, name in enumerate(classes):
        positives = onehot[:, i]
        if positives.min() == positives.max():
            continue
        fpr, tpr, _ = roc_curve(positives, y_prob[:, i])
        curves.append(RocCurve(str(name), fpr, tpr, float(auc(fpr, tpr))))
    return curves


def macro_auc(curves: Sequence[RocCurve]) -> float:
    return float(np.mean([c.auc for c in curves])) if curves else float("nan")


def tsne_2d(
    embedding: np.ndarray, *, seed: int = 0, max_points: int = MAX_TSNE_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """2-D t-SNE of (a fixed random sample of) the embeddings; returns points and the
    indices of the rows they came from."""
    from sklearn.manifold import TSNE

    embedding = np.asarray(embedding, dtype=np.float32).reshape(len(embedding), -1)
    index = np.arange(len(embedding))
    if len(index) > max_points:
        index = np.sort(np.random.default_rng(seed).choice(index, max_points, replace=False))
    sample = embedding[index]
    # Perplexity must stay below the number of points; small val sets need a small one.
    perplexity = float(min(30.0, max(2.0, (len(sample) - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(sample), index
