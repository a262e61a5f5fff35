"""Focal loss versus its baseline, the seed reports' VGG-16 / ResNet-18 with FC layers tuned."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces._registry import SpaceContext, register_space


@register_space(
    "focal",
    description="focal loss (gamma searched around 1.5) versus cross-entropy or BCE",
    factor="loss",
    arms=("focal", "ce"),
    choices=("focal", "ce", "bce", "weighted-ce"),
    reproduces="VGG-16 / ResNet-18, FC layers fine-tuned, focal loss vs cross-entropy / BCE",
    defaults={"dataset": "digits-lt"},
)
def focal(trial: optuna.Trial, arm: str, context: SpaceContext) -> dict[str, Any]:
    trial.suggest_float("lr", 1e-3, 0.3, log=True)
    trial.suggest_float("momentum", 0.0, 0.95)
    trial.suggest_categorical("batch_size", [32, 64, 128])
    # Training only the head of a randomly initialised backbone is pointless.
    freezes = ["backbone", "partial:2", "none"] if context.pretrained else ["none", "partial:1"]
    trial.suggest_categorical("freeze", freezes)
    if arm == "focal":
        trial.suggest_float("gamma", 0.5, 3.0)
    return {"loss": arm, "optimizer": "sgd"}
