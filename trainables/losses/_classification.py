"""Losses on the logits: cross-entropy (plain and class-weighted), BCE on one-hot targets, and
focal loss. They ignore the embedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.losses._registry import (
    LossContext,
    LossError,
    balanced_class_weights,
    register_loss,
)


class EmbeddingFree(nn.Module):
    """Adapts a plain ``loss(logits, target)`` to the shared three-argument call."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor, target: torch.Tensor):
        return self.loss(logits, target)


@register_loss("ce", description="cross-entropy", multilabel=False)
def _cross_entropy(_: LossContext) -> nn.Module:
    return EmbeddingFree(nn.CrossEntropyLoss())


@register_loss("weighted-ce", description="cross-entropy with balanced class weights")
def _weighted_cross_entropy(ctx: LossContext) -> nn.Module:
    return EmbeddingFree(nn.CrossEntropyLoss(weight=balanced_class_weights(ctx.class_counts)))


class OneHotBCE(nn.Module):
    """BCE-with-logits on one-hot targets (or on the 0/1 rows of multi-label data)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor, target: torch.Tensor):
        if target.dim() == 1:
            target = F.one_hot(target, self.num_classes)
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


@register_loss("bce", description="BCE-with-logits on one-hot targets", multilabel=True)
def _bce(ctx: LossContext) -> nn.Module:
    return OneHotBCE(ctx.num_classes)


class FocalLoss(nn.Module):
    """Multi-class focal loss, mean over the batch of ``-alpha_t (1 - p_t)^gamma log p_t``.

    With gamma = 0 and no alpha it is exactly cross-entropy. For multi-label targets it is the
    per-label sigmoid focal loss (torchvision's), averaged over labels and samples.
    """

    def __init__(self, gamma: float, alpha: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("alpha", alpha)

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor, target: torch.Tensor):
        if target.dim() == 2:
            from torchvision.ops import sigmoid_focal_loss

            return sigmoid_focal_loss(
                logits, target.to(logits.dtype), alpha=-1, gamma=self.gamma, reduction="mean"
            )
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.alpha is not None:
            loss = loss * self.alpha[target]
        return loss.mean()


@register_loss("focal", description="focal loss (gamma; alpha none or balanced)", multilabel=True)
def _focal(ctx: LossContext) -> nn.Module:
    if ctx.gamma is None or ctx.gamma < 0:
        raise LossError(f"focal loss needs gamma >= 0, got {ctx.gamma}")
    alpha = balanced_class_weights(ctx.class_counts) if ctx.alpha == "balanced" else None
    if ctx.alpha not in {"none", "balanced"}:
        raise LossError(f"bad focal alpha {ctx.alpha!r}; accepted: none, balanced")
    return FocalLoss(ctx.gamma, alpha)
