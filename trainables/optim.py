"""Optimizers as small frozen records in a registry, not an if/elif chain."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from trainables.errors import UserError
from trainables.registry import Registry


class OptimizerError(UserError):
    """Unknown optimizer or bad settings: one line for the user."""


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    cls: type[torch.optim.Optimizer]
    takes_momentum: bool
    description: str


OPTIMIZERS: Registry[OptimizerEntry] = Registry("optimizer", OptimizerError)
for _entry in (
    OptimizerEntry("sgd", torch.optim.SGD, True, "SGD; momentum 0 is plain SGD"),
    OptimizerEntry("adam", torch.optim.Adam, False, "Adam"),
    OptimizerEntry("adamw", torch.optim.AdamW, False, "AdamW (decoupled weight decay)"),
):
    OPTIMIZERS.register(_entry.name, _entry)


def list_optimizers() -> list[str]:
    return OPTIMIZERS.names()


def get_optimizer(name: str) -> OptimizerEntry:
    return OPTIMIZERS.get(name)


def build_optimizer(
    name: str,
    model: nn.Module,
    *,
    lr: float,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    extra_groups: Iterable[dict] = (),
) -> torch.optim.Optimizer:
    """Only parameters that still require grad are optimised; frozen layers stay untouched.

    ``extra_groups`` carry parameters outside the model with their own settings (center loss's
    class centers and their learning rate).
    """
    entry = get_optimizer(name)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": params}, *[g for g in extra_groups if g["params"]]]
    kwargs = {"lr": lr, "weight_decay": weight_decay}
    if entry.takes_momentum:
        kwargs["momentum"] = momentum
    return entry.cls(groups, **kwargs)
