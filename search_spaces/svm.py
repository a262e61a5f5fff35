"""A linear SVM on frozen-backbone features versus the same backbone fine-tuned."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces._registry import SpaceContext, register_space

ARMS = {
    "svm-frozen": {"freeze": "backbone", "classifier": "svm"},
    "finetuned": {"freeze": "none", "classifier": "softmax"},
}


@register_space(
    "svm",
    description="linear SVM on frozen-backbone features vs the backbone fine-tuned",
    factor="classifier",
    arms=tuple(ARMS),
    reproduces="SVM on pretrained features, accuracy and class-wise accuracy before/after "
    "fine-tuning",
    defaults={"backbone": "resnet18"},
)
def svm(trial: optuna.Trial, arm: str, context: SpaceContext) -> dict[str, Any]:
    # The SVM arm trains nothing but the unused softmax head, so its search is over the
    # embedding only; lr still varies the (frozen-feature) head it sits next to.
    trial.suggest_float("lr", 1e-3, 0.1, log=True)
    trial.suggest_float("momentum", 0.5, 0.95)
    trial.suggest_categorical("batch_size", [32, 64])
    return {**ARMS[arm], "loss": "ce", "optimizer": "sgd"}
