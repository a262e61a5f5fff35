"""Metric-learning losses against plain cross-entropy, on ResNet-18 and DenseNet-121."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces._registry import SpaceContext, register_space

# An arm is a loss and, for the triplet-trained embeddings, the SVM that classifies them.
ARMS = {
    "ce": {"loss": "ce"},
    "triplet": {"loss": "triplet"},
    "center": {"loss": "center"},
    "triplet-svm": {"loss": "triplet-only", "classifier": "svm"},
}


@register_space(
    "losses",
    description="cross-entropy vs triplet+CE vs center+CE vs triplet embeddings + linear SVM",
    factor="loss",
    arms=tuple(ARMS),
    reproduces="ResNet-18 / DenseNet-121 with triplet, center and SVM-on-embedding losses",
    defaults={"backbone": "resnet18,densenet121", "head_hidden": "256"},
)
def losses(trial: optuna.Trial, arm: str, context: SpaceContext) -> dict[str, Any]:
    trial.suggest_float("lr", 1e-3, 0.1, log=True)
    trial.suggest_float("momentum", 0.5, 0.95)
    trial.suggest_categorical("batch_size", [32, 64])
    if arm in {"triplet", "triplet-svm"}:
        trial.suggest_float("margin", 0.1, 2.0, log=True)
        trial.suggest_categorical("mining", ["batch_hard", "batch_all"])
    if arm == "center":
        trial.suggest_float("center_lambda", 1e-3, 0.1, log=True)
        trial.suggest_float("center_lr", 0.01, 0.5, log=True)
    return {**ARMS[arm], "optimizer": "sgd"}
