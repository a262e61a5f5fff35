"""Metric-learning losses on the embedding: center loss (with cross-entropy) and triplet loss
on triplets mined from the batch (with cross-entropy, or alone for the SVM classifier)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainables.losses._registry import LossContext, LossError, register_loss


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
