"""Losses: a registry of criteria sharing one call, ``criterion(logits, embedding, target)``.

Metric-learning losses (center, triplet) need the embedding; the others ignore it. Targets are
class indices for single-label data and 0/1 rows for multi-label data. One module per family:
``_classification`` (ce, weighted-ce, bce, focal), ``_metric_learning`` (center, triplet); a
new loss is a function decorated with ``register_loss`` in one of them.
"""

from trainables.losses import _classification, _metric_learning  # noqa: F401  (they register)
from trainables.losses._classification import EmbeddingFree, FocalLoss, OneHotBCE
from trainables.losses._metric_learning import (
    MINING,
    CenterLoss,
    TripletLoss,
    batch_all_loss,
    batch_hard_loss,
    mine_triplets,
    triplet_distances,
)
from trainables.losses._registry import (
    LOSSES,
    LossContext,
    LossEntry,
    LossError,
    balanced_class_weights,
    build_loss,
    check_loss_fits,
    get_loss,
    list_losses,
    register_loss,
)

__all__ = [
    "LOSSES",
    "MINING",
    "CenterLoss",
    "EmbeddingFree",
    "FocalLoss",
    "LossContext",
    "LossEntry",
    "LossError",
    "OneHotBCE",
    "TripletLoss",
    "balanced_class_weights",
    "batch_all_loss",
    "batch_hard_loss",
    "build_loss",
    "check_loss_fits",
    "get_loss",
    "list_losses",
    "mine_triplets",
    "register_loss",
    "triplet_distances",
]
