"""Backbone frozen (only the head trains) versus everything trained, with SGD or Adam."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces._registry import SpaceContext, register_space


@register_space(
    "freeze",
    description="backbone frozen vs everything trained, optimizer SGD or Adam searched",
    factor="freeze",
    arms=("backbone", "none"),
    choices=("backbone", "none", "partial:1", "partial:2"),
    reproduces="ResNet-18, SGD and Adam, each with the backbone frozen and fully fine-tuned",
    defaults={"backbone": "resnet18"},
)
def freeze(trial: optuna.Trial, arm: str, context: SpaceContext) -> dict[str, Any]:
    optimizer = trial.suggest_categorical("optimizer", ["sgd", "adam"])
    if optimizer == "sgd":
        trial.suggest_float("lr", 1e-3, 0.1, log=True)
        trial.suggest_float("momentum", 0.0, 0.95)
    else:
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    trial.suggest_categorical("batch_size", [32, 64])
    return {"freeze": arm}
