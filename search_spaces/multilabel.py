"""Several labels per image: per-label BCE-with-logits versus per-label focal loss."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces._registry import SpaceContext, register_space


@register_space(
    "multilabel",
    description="multi-label images: per-label BCE-with-logits vs focal; mAP and per-label IoU",
    factor="loss",
    arms=("bce", "focal"),
    multilabel=True,
    reproduces="multi-label classification with per-class accuracy, P/R/F1, IoU and mAP",
    defaults={"dataset": "digits-multilabel", "metric": "val_map"},
)
def multilabel(trial: optuna.Trial, arm: str, context: SpaceContext) -> dict[str, Any]:
    trial.suggest_float("lr", 1e-3, 0.3, log=True)
    trial.suggest_float("momentum", 0.0, 0.95)
    trial.suggest_categorical("batch_size", [32, 64])
    if arm == "focal":
        trial.suggest_float("gamma", 0.5, 3.0)
    return {"loss": arm, "optimizer": "sgd"}
