"""Plain SGD one image at a time, minibatch SGD, SGD with momentum and Adam."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces._registry import SpaceContext, register_space

ARMS = {
    "sgd-b1": {"optimizer": "sgd", "momentum": 0.0, "batch_size": 1},
    "sgd": {"optimizer": "sgd", "momentum": 0.0},
    "sgd-momentum": {"optimizer": "sgd"},
    "adam": {"optimizer": "adam"},
}


@register_space(
    "optimizers",
    description="SGD with batch size 1 vs minibatch SGD vs SGD with momentum vs Adam",
    factor="optimizer",
    arms=tuple(ARMS),
    reproduces="optimizer comparison with loss curves per optimizer",
)
def optimizers(trial: optuna.Trial, arm: str, context: SpaceContext) -> dict[str, Any]:
    fixed = ARMS[arm]
    if arm == "adam":
        trial.suggest_float("lr", 1e-4, 1e-2, log=True)
    else:
        # One image per step takes smaller steps than a minibatch.
        high = 0.01 if arm == "sgd-b1" else 0.3
        trial.suggest_float("lr", high / 300, high, log=True)
    if "batch_size" not in fixed:
        trial.suggest_categorical("batch_size", [16, 32, 64])
    if arm == "sgd-momentum":
        trial.suggest_float("momentum", 0.5, 0.99)
    return dict(fixed)
