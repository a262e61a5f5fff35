"""Losses: a registry of criteria sharing one call, ``criterion(logits, embedding, target)``.

Metric-learning losses (center, triplet) need the embedding; the others ignore it. Targets are
class indices for single-label data and 0/1 rows for multi-label data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import UserError


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


_LOSSES: dict[str, LossEntry] = {}


def register_loss(
    name: str, *, description: str, **flags: bool
) -> Callable[[Callable[[LossContext], nn.Module]], Callable[[LossContext], nn.Module]]:
    def decorator(build: Callable[[LossContext], nn.Module]) -> Callable[[LossContext], nn.Module]:
        if name in _LOSSES:
            raise ValueError(f"loss {name!r} is registered twice")
        _LOSSES[name] = LossEntry(name, build, description, **flags)
        return build

    return decorator


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def get_loss(name: str) -> LossEntry:
    try:
        return _LOSSES[name]
    except KeyError:
        raise LossError(f"unknown loss {name!r}; accepted: {', '.join(list_losses())}") from None


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


# --- single-label ---------------------------------------------------------------------------


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


# --- metric learning: losses on the embedding ---------------------------------------------


class CenterLoss(nn.Module):
    """Cross-entropy plus ``lambda/2 * mean ||e_i - c_{y_i}||^2`` with learnable class centers.

    The centers are parameters of the criterion; the optimizer gives them their own learning
    rate (``center_lr``), as in Wen et al. (2016)."""

    def __init__(self, num_classes: int, embedding_dim: int, weight: float) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, embedding_dim))
        self.weight = float(weight)

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor, target: torch.Tensor):
        pull = (embedding - self.centers[target]).pow(2).sum(dim=1).mean() / 2
        return F.cross_entropy(logits, target) + self.weight * pull


@register_loss(
    "center",
    description="cross-entropy + center loss (lambda, centers' own lr)",
    needs_embedding=True,
)
def _center(ctx: LossContext) -> nn.Module:
    if ctx.center_lambda is None or ctx.center_lambda < 0:
        raise LossError(f"center loss needs center_lambda >= 0, got {ctx.center_lambda}")
    return CenterLoss(ctx.num_classes, ctx.embedding_dim, ctx.center_lambda)


MINING = ("batch_hard", "batch_all")
# F.triplet_margin_loss measures F.pairwise_distance, ||x - y + eps||: the same eps here keeps
# the loss equal to PyTorch's on the same triplets.
PAIRWISE_EPS = 1e-6


def triplet_distances(embedding: torch.Tensor) -> torch.Tensor:
    """``d[i, j] = ||e_i - e_j + eps||``, F.pairwise_distance from anchor i to j (eps shifts
    the anchor, so it is not quite symmetric). Pair by pair: the matrix-product form loses
    the small distances of close positives to cancellation, and its gradient there."""
    e = embedding.float()
    return torch.cdist(e + PAIRWISE_EPS, e, compute_mode="donot_use_mm_for_euclid_dist")


def _pairs(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of each anchor's positives (same class, not itself) and negatives."""
    same = target[:, None] == target[None, :]
    eye = torch.eye(len(target), dtype=torch.bool, device=target.device)
    return same & ~eye, ~same


def _hardest(
    distance: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The anchors that have a positive and a negative, each one's farthest positive and
    nearest negative."""
    anchors = torch.nonzero(positive.any(dim=1) & negative.any(dim=1)).flatten()
    far = distance.masked_fill(~positive, float("-inf")).argmax(dim=1)
    near = distance.masked_fill(~negative, float("inf")).argmin(dim=1)
    return anchors, far[anchors], near[anchors]


def mine_triplets(
    embedding: torch.Tensor, target: torch.Tensor, strategy: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchor, positive and negative indices from one batch, to inspect what a loss uses.

    ``batch_hard``: for each anchor, its farthest positive and nearest negative.
    ``batch_all``: every valid (anchor, positive, negative) triplet, a list that grows with
    the cube of the batch: ``TripletLoss`` never builds it."""
    with torch.no_grad():
        distance = triplet_distances(embedding)
        positive, negative = _pairs(target)
        if strategy == "batch_hard":
            return _hardest(distance, positive, negative)
        if strategy == "batch_all":
            a, p, n = torch.nonzero(positive[:, :, None] & negative[:, None, :], as_tuple=True)
            return a, p, n
    raise LossError(f"unknown mining {strategy!r}; accepted: {', '.join(MINING)}")


def batch_hard_loss(distance: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of ``max(margin + d[a, p] - d[a, n], 0)`` over each anchor's hardest triplet."""
    a, p, n = _hardest(distance.detach(), *_pairs(target))
    losses = (margin + distance[a, p] - distance[a, n]).clamp_min(0)
    return losses.mean() if len(a) else distance.sum() * 0


def batch_all_loss(distance: torch.Tensor, target: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean of ``margin + d[a, p] - d[a, n]`` over the valid triplets where it is positive,
    from the N x N distances alone (memory and time N^2 log N, not N^3 triplets).

    Each anchor's negatives are sorted by distance once; those that violate (a, p) are the
    ones nearer than ``margin + d[a, p]``, a prefix of that order: their count by a binary
    search, their summed distance by a running sum. The sums are in float64: a count times
    the limit less a sum of distances cancels most of its digits when the losses are small."""
    positive, negative = _pairs(target)
    nearest = distance.masked_fill(~negative, float("inf")).sort(dim=1).values
    limit = margin + distance
    # The strict comparison of PyTorch's loss > 0: d[a, n] < margin + d[a, p].
    count = torch.searchsorted(nearest.detach(), limit.detach(), side="left")
    nearest = nearest.double().masked_fill(nearest.isinf(), 0)
    running = F.pad(nearest.cumsum(dim=1), (1, 0))
    losses = count * limit.double() - running.gather(1, count)
    triplets = count[positive].sum()
    if not triplets:
        return distance.sum() * 0
    return (losses[positive].sum() / triplets).to(distance.dtype)


class TripletLoss(nn.Module):
    """PyTorch's triplet margin loss on triplets mined from the batch, optionally plus CE.

    ``batch_all`` averages over the triplets that still violate the margin, so the easy ones
    that are already satisfied do not dilute the gradient. Both come from the batch's
    distance matrix: no triplet's embeddings are copied out (``batch_all`` used to gather
    1.4 million triplets' for a batch of 256, 9 GB)."""

    def __init__(self, margin: float, mining: str, with_cross_entropy: bool) -> None:
        super().__init__()
        if mining not in MINING:
            raise LossError(f"unknown mining {mining!r}; accepted: {', '.join(MINING)}")
        self.margin = float(margin)
        self.mining = mining
        self.with_cross_entropy = with_cross_entropy

    def forward(self, logits: torch.Tensor, embedding: torch.Tensor, target: torch.Tensor):
        distance = triplet_distances(embedding)
        mined = batch_hard_loss if self.mining == "batch_hard" else batch_all_loss
        triplet = mined(distance, target, self.margin)
        # A non-finite embedding gives a non-finite loss, as PyTorch's does: the divergence
        # check reads the loss (the sort and search above would turn NaN into a number).
        triplet = torch.where(distance.isfinite().all(), triplet, float("nan"))
        if self.with_cross_entropy:
            return F.cross_entropy(logits, target) + triplet
        return triplet


def _triplet_settings(ctx: LossContext) -> tuple[float, str]:
    if ctx.margin is None or ctx.margin <= 0:
        raise LossError(f"triplet loss needs a margin > 0, got {ctx.margin}")
    return ctx.margin, ctx.mining or "batch_hard"


@register_loss(
    "triplet", description="cross-entropy + triplet loss (margin, mining)", needs_embedding=True
)
def _triplet(ctx: LossContext) -> nn.Module:
    return TripletLoss(*_triplet_settings(ctx), with_cross_entropy=True)


@register_loss(
    "triplet-only",
    description="triplet loss alone; classify the embeddings with the SVM classifier",
    needs_embedding=True,
    trains_head=False,
)
def _triplet_only(ctx: LossContext) -> nn.Module:
    return TripletLoss(*_triplet_settings(ctx), with_cross_entropy=False)
