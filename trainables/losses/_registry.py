"""The loss registry: criteria sharing one call, ``criterion(logits, embedding, target)``, with
what each fits (single- or multi-label data, a head with an embedding layer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainables.errors import UserError
from trainables.registry import Registry


class LossError(UserError):
    """Unknown loss or a loss that cannot run on the chosen data or head."""


@dataclass(frozen=True)
class LossContext:
    num_classes: int
    embedding_dim: int
    class_counts: Sequence[int]
    multilabel: bool = False
    gamma: float | None = None
    alpha: str = "none"
    margin: float | None = None
    mining: str | None = None
    center_lambda: float | None = None


@dataclass(frozen=True)
class LossEntry:
    name: str
    build: Callable[[LossContext], nn.Module]
    description: str
    single_label: bool = True
    multilabel: bool = False
    needs_embedding: bool = False
    trains_head: bool = True  # False: only the embedding is trained (use the SVM classifier)


LOSSES: Registry[LossEntry] = Registry("loss", LossError)
Build = Callable[[LossContext], nn.Module]


def register_loss(name: str, *, description: str, **flags: bool) -> Callable[[Build], Build]:
    return LOSSES.decorator(name, lambda build: LossEntry(name, build, description, **flags))


def list_losses() -> list[str]:
    return LOSSES.names()


def get_loss(name: str) -> LossEntry:
    return LOSSES.get(name)


def build_loss(name: str, context: LossContext) -> nn.Module:
    entry = get_loss(name)
    check_loss_fits(entry, multilabel=context.multilabel, embedding_dim=context.embedding_dim)
    return entry.build(context)


def check_loss_fits(entry: LossEntry, *, multilabel: bool, embedding_dim: int | None) -> None:
    if multilabel and not entry.multilabel:
        raise LossError(f"loss {entry.name!r} is single-label; multi-label data takes bce or focal")
    if not multilabel and not entry.single_label:
        raise LossError(f"loss {entry.name!r} is for multi-label data only")
    if entry.needs_embedding and embedding_dim == 0:
        raise LossError(
            f"loss {entry.name!r} needs an embedding layer: give the head a hidden layer"
        )


def balanced_class_weights(counts: Sequence[int]) -> torch.Tensor:
    """scikit-learn's 'balanced' weights, n / (k * count), so rare classes weigh more."""
    counts = np.asarray(counts, dtype=np.float64)
    weights = counts.sum() / (len(counts) * np.maximum(counts, 1))
    return torch.as_tensor(weights, dtype=torch.float32)
