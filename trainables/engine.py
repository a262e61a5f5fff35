"""The training and evaluation loop. It knows nothing of Ray or MLflow: ``fit`` yields one
``EpochOutcome`` per epoch, and the caller decides what to report, log and checkpoint."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainables.config import TrialConfig
from trainables.contract import BEST_EPOCH_METRIC, best_metric
from trainables.data import ImageData
from trainables.feature_cache import FeatureCache, ModelInputs, feature_inputs
from trainables.losses import LossContext, build_loss, get_loss
from trainables.models import ImageClassifier, build_model
from trainables.optim import build_optimizer
from trainables.svm import fit_svm, svm_probabilities
from trainables.task import SINGLE_LABEL, Task

MAX_MISCLASSIFIED = 36


class TrainingDiverged(Exception):
    """Training produced a value that is not finite. Retrying from the last checkpoint would
    diverge the same way, so the trial ends here and says so."""

    def __init__(self, reason: str, epoch: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.epoch = epoch


@dataclass
class SplitEval:
    """One pass over a split in eval mode."""

    loss: float
    y_true: np.ndarray
    y_prob: np.ndarray  # (N, C): softmax, sigmoid, or the SVM's softmaxed decision values
    embedding: np.ndarray  # (N, D)

    @property
    def y_pred(self) -> np.ndarray:
        return self.y_prob.argmax(axis=1)


@dataclass
class EpochOutcome:
    epoch: int
    metrics: dict[str, float]
    improved: bool
    train: SplitEval
    val: SplitEval
    best_epoch: int
    best_value: float
    confusions: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TrainingState:
    """What a checkpoint must hold to resume a trial exactly where it was."""

    model: ImageClassifier
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    best_value: float = float("nan")
    best_epoch: int = 0
    rng: torch.Generator = field(default_factory=torch.Generator)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.trained_state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_trained_state_dict(state["model"])
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = state["epoch"]
        self.best_value = state["best_value"]
        self.best_epoch = state["best_epoch"]
        self.rng.set_state(state["rng"])


def pick_device(prefer_cuda: bool = True) -> torch.device:
    return torch.device("cuda" if prefer_cuda and torch.cuda.is_available() else "cpu")


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, in 0..1 units, over a bounded sample, summed a
    few images at a time: a float copy of the whole sample would take 4x its bytes in memory,
    more than a dataset mapped from the image cache may have (trainables.data._image_cache)."""
    sample = images[:: max(1, len(images) // 2048)]  # a strided view: nothing copied
    total = torch.zeros(sample.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(sample), 64):
        chunk = sample[start : start + 64].to(torch.float64).div(255)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = sample[:, 0].numel()
    mean = total / count
    var = (squares - count * mean.square()) / max(1, count - 1)  # unbiased, as torch.std
    return mean.tolist(), var.clamp_min(0).sqrt().clamp_min(1e-3).tolist()


@dataclass
class TrainedModel:
    """A trained model and its loss without an optimizer: what logging a checkpoint's model
    needs. (Building an optimizer imports ``torch._dynamo``, near two seconds, on the driver.)"""

    model: ImageClassifier
    criterion: nn.Module
    best_epoch: int = 0


def build_model_and_criterion(
    cfg: TrialConfig, data: ImageData, device: torch.device
) -> tuple[ImageClassifier, nn.Module]:
    """The trial's model and loss on ``device``. The seed fixes the initial weights, so runs
    of different arms with the same seed start from the same model."""
    torch.manual_seed(cfg.seed)
    mean, std = channel_stats(data.train_x)
    model = build_model(
        backbone=cfg.backbone,
        weights=cfg.weights,
        num_classes=data.num_classes,
        in_channels=data.channels,
        data_size=data.image_size,
        head_hidden=cfg.head_hidden,
        dropout=cfg.dropout,
        freeze=cfg.freeze,
        image_size=cfg.image_size,
        data_mean=mean,
        data_std=std,
    )
    criterion = build_loss(
        cfg.loss,
        LossContext(
            num_classes=data.num_classes,
            embedding_dim=len(cfg.head_hidden) and model.embedding_dim,
            class_counts=data.class_counts("train").tolist(),
            multilabel=data.multilabel,
            gamma=cfg.gamma,
            alpha=cfg.alpha,
            margin=cfg.margin,
            mining=cfg.mining,
            center_lambda=cfg.center_lambda,
        ),
    )
    model.to(device)
    criterion.to(device)
    if device.type == "cuda" and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, criterion


def build_training_state(cfg: TrialConfig, data: ImageData, device: torch.device) -> TrainingState:
    """Model, criterion and optimizer for one trial (``build_model_and_criterion``)."""
    model, criterion = build_model_and_criterion(cfg, data, device)
    extra = [{"params": list(criterion.parameters()), "lr": cfg.center_lr or cfg.lr}]
    optimizer = build_optimizer(
        cfg.optimizer,
        model,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        extra_groups=extra,
    )
    rng = torch.Generator()
    rng.manual_seed(cfg.seed)
    return TrainingState(model, criterion, optimizer, rng=rng)


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda" and channels_last and x.dim() == 4:  # cached features may be 2-D
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_batches(n: int, batch_size: int) -> list[slice]:
    """Batches of ``batch_size`` covering ``n`` images once, a remainder of less than half a
    batch joined to the batch before it. Trained alone, a last batch of a few images sets
    BatchNorm's running statistics from those few (547 images at batch size 32 leave 3), and
    the model collapsed in eval mode while its training loss did not move."""
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] < batch_size / 2:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], n], strict=True)]


def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    *,
    batch_size: int,
    rng: torch.Generator,
    augment: nn.Module | None = None,
    amp: bool = True,
    channels_last: bool = True,
) -> float:
    """One pass over the training images in a seeded random order, every image once (see
    ``train_batches``); returns the mean loss."""
    model.train()
    order = torch.randperm(len(images), generator=rng)
    total, seen = 0.0, 0
    for number, batch in enumerate(train_batches(len(order), batch_size), start=1):
        idx = order[batch]
        x = images[idx]
        if augment is not None:
            x = augment(x)
        x = _to_device(x, device, channels_last)
        y = targets[idx].to(device, non_blocking=True)
        with _autocast(device, amp):
            logits, embedding = model.forward_with_embedding(x)
            loss = criterion(logits.float(), embedding.float(), y)
        value = float(loss.detach())
        if not math.isfinite(value):  # one bad step poisons every weight it touches
            raise TrainingDiverged(f"training loss is {value} at batch {number}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += value * len(idx)
        seen += len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    criterion: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    device: torch.device,
    *,
    batch_size: int = 256,
    task: Task = SINGLE_LABEL,
    amp: bool = True,
    channels_last: bool = True,
) -> SplitEval:
    model.eval()
    probs, embeddings, total = [], [], 0.0
    for start in range(0, len(images), batch_size):
        x = _to_device(images[start : start + batch_size], device, channels_last)
        y = targets[start : start + batch_size].to(device)
        with _autocast(device, amp):
            logits, embedding = model.forward_with_embedding(x)
        logits, embedding = logits.float(), embedding.float()
        total += float(criterion(logits, embedding, y)) * len(x)
        probs.append(task.probabilities(logits).cpu())
        embeddings.append(embedding.cpu())
    return SplitEval(
        loss=total / max(len(images), 1),
        y_true=targets.numpy(),
        y_prob=torch.cat(probs).numpy(),
        embedding=torch.cat(embeddings).numpy(),
    )


def svm_predictions(
    train: SplitEval, other: SplitEval, seed: int, other_name: str = "val"
) -> tuple[np.ndarray, np.ndarray]:
    """A linear SVM fitted on the train embeddings replaces the softmax head's scores, on
    train and on ``other`` (val during training, test at the end of a confirmation run)."""
    for name, split in (("train", train), (other_name, other)):
        if not np.isfinite(split.embedding).all():
            raise TrainingDiverged(f"{name} embeddings are not finite before the SVM")
    scaler, svm = fit_svm(train.embedding, train.y_true, seed)
    return tuple(
        svm_probabilities(scaler, svm, s.embedding, s.y_prob.shape[1]) for s in (train, other)
    )


def split_metrics(split: SplitEval, data: ImageData, prefix: str) -> dict[str, float]:
    metrics = data.task.metrics(split.y_true, split.y_prob, data.classes, prefix)
    metrics[f"{prefix}_loss"] = split.loss
    return metrics


def make_augment(
    image_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> nn.Module:
    """Random crop, flip and colour jitter, drawn independently for every image and applied to
    the whole batch at once on ``device``."""
    from trainables.augment import BatchAugment

    return BatchAugment(max(1, image_size // 8), generator=generator, device=device)


def nonfinite_tensor(*modules: nn.Module) -> str | None:
    """The name of the first parameter or floating-point buffer of ``modules`` that holds a
    NaN or an infinity, or None. A finite batch loss says nothing about BatchNorm's running
    statistics, which a huge step fills with NaN before any loss shows it."""
    for index, module in enumerate(modules):
        tensors = [*module.named_parameters(), *module.named_buffers()]
        tensors = [(name, t) for name, t in tensors if t.is_floating_point()]
        if not tensors:
            continue
        finite = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors])
        if not bool(finite.all()):  # one device sync per module, not one per tensor
            name = tensors[int((~finite).nonzero()[0])][0]
            return f"{'model' if index == 0 else 'criterion'}.{name}"
    return None


def check_finite_epoch(metrics: dict[str, float], *modules: nn.Module) -> None:
    """End the trial as diverged when an epoch's loss is not finite or the state the next
    epoch would start from (weights, buffers, the loss's own parameters) is not."""
    for key in ("train_running_loss", "train_loss", "val_loss"):
        if key in metrics and not math.isfinite(metrics[key]):
            raise TrainingDiverged(f"{key} is {metrics[key]} at the end of the epoch")
    bad = nonfinite_tensor(*modules)
    if bad is not None:
        raise TrainingDiverged(f"{bad} holds a NaN or an infinity at the end of the epoch")


def is_better(value: float, best: float, mode: str) -> bool:
    if np.isnan(best):
        return not np.isnan(value)
    return value > best if mode == "max" else value < best


def fit(
    cfg: TrialConfig,
    data: ImageData,
    device: torch.device,
    state: TrainingState | None = None,
    *,
    cache: FeatureCache | None = None,
) -> Iterator[EpochOutcome]:
    """Train for ``cfg.max_epochs`` (from ``state.epoch`` when resuming), yielding each epoch.
    A frozen backbone's output comes from ``cache`` (default: the node's, see feature_cache)."""
    state = state or build_training_state(cfg, data, device)
    use_svm = cfg.classifier == "svm"
    if not get_loss(cfg.loss).trains_head and not use_svm:
        raise ValueError(f"loss {cfg.loss!r} trains no head: use classifier 'svm'")
    augment = None
    if cfg.augment:
        # The order's generator, saved in every checkpoint: a resumed trial draws the same crops.
        augment = make_augment(data.image_size, generator=state.rng, device=device)
    inputs = _model_inputs(cfg, data, state.model, device, cache)
    while state.epoch < cfg.max_epochs:
        state.epoch += 1
        try:
            outcome = _train_and_evaluate(cfg, data, device, state, augment, use_svm, inputs)
        except TrainingDiverged as err:
            err.epoch = state.epoch
            raise
        yield outcome


def _model_inputs(
    cfg: TrialConfig,
    data: ImageData,
    model: ImageClassifier,
    device: torch.device,
    cache: FeatureCache | None,
    with_test: bool = False,
) -> ModelInputs:
    """What the model runs on; the test split only when asked (``evaluate_test``)."""
    cache = cache or FeatureCache.from_env()
    cached = feature_inputs(cfg, data, model, device, cache, with_test=with_test)
    return cached or ModelInputs(
        model, data.train_x, data.val_x, data.test_x if with_test else None
    )


def _train_and_evaluate(
    cfg: TrialConfig,
    data: ImageData,
    device: torch.device,
    state: TrainingState,
    augment: nn.Module | None,
    use_svm: bool,
    inputs: ModelInputs,
) -> EpochOutcome:
    """One epoch of training, then both splits evaluated in eval mode."""
    common = {"amp": cfg.amp, "channels_last": cfg.channels_last}
    train_loss = train_one_epoch(
        inputs.model,
        state.criterion,
        state.optimizer,
        inputs.train_x,
        data.train_y,
        device,
        batch_size=cfg.batch_size,
        rng=state.rng,
        augment=augment,
        **common,
    )
    train, val = (
        evaluate(inputs.model, state.criterion, x, y, device, task=data.task, **common)
        for x, y in ((inputs.train_x, data.train_y), (inputs.val_x, data.val_y))
    )
    if use_svm:
        train.y_prob, val.y_prob = svm_predictions(train, val, cfg.seed)
    metrics = {**split_metrics(train, data, "train"), **split_metrics(val, data, "val")}
    # The loss the optimiser saw, with dropout and augmentation, next to the eval-mode one.
    metrics["train_running_loss"] = train_loss
    check_finite_epoch(metrics, state.model, state.criterion)
    value = metrics[cfg.metric]
    improved = is_better(value, state.best_value, cfg.mode)
    if improved:
        state.best_value, state.best_epoch = value, state.epoch
    metrics[BEST_EPOCH_METRIC] = float(state.best_epoch)
    metrics[best_metric(cfg.metric)] = state.best_value
    matrices = {
        name: data.task.confusion(split.y_true, split.y_prob, data.num_classes)
        for name, split in (("train", train), ("val", val))
        if improved
    }
    confusions = {name: m for name, m in matrices.items() if m is not None}
    return EpochOutcome(
        state.epoch, metrics, improved, train, val, state.best_epoch, state.best_value, confusions
    )


@dataclass
class TestOutcome:
    """The test split scored with the best epoch's weights."""

    __test__ = False  # not a test class, for pytest

    metrics: dict[str, float]  # ``test_*``, named as the val metrics
    test: SplitEval
    confusion: np.ndarray | None  # None for multi-label data


def evaluate_test(
    cfg: TrialConfig,
    data: ImageData,
    device: torch.device,
    state: TrainingState,
    best: dict[str, torch.Tensor],
    *,
    cache: FeatureCache | None = None,
) -> TestOutcome:
    """Score the test split once, after training, with ``best`` (the ``trained_state_dict``
    of the epoch val chose). Only for confirmation runs, after ``fit`` has ended: nothing here
    goes back into the choice of a config or an epoch. The SVM classifier is fitted again on
    the train embeddings of those weights, as it was at that epoch. Leaves ``best`` loaded in
    ``state.model``."""
    state.model.load_trained_state_dict(best)
    inputs = _model_inputs(cfg, data, state.model, device, cache, with_test=True)
    common = {"task": data.task, "amp": cfg.amp, "channels_last": cfg.channels_last}
    test = evaluate(inputs.model, state.criterion, inputs.test_x, data.test_y, device, **common)
    if cfg.classifier == "svm":
        train = evaluate(
            inputs.model, state.criterion, inputs.train_x, data.train_y, device, **common
        )
        _, test.y_prob = svm_predictions(train, test, cfg.seed, other_name="test")
    matrix = data.task.confusion(test.y_true, test.y_prob, data.num_classes)
    return TestOutcome(split_metrics(test, data, "test"), test, matrix)


def misclassified(data: ImageData, val: SplitEval, limit: int = MAX_MISCLASSIFIED) -> dict:
    """Up to ``limit`` wrongly classified val images, for the analysis's picture grid."""
    wrong = data.task.wrong(val.y_true, val.y_prob)[:limit]
    return {
        "images": data.val_x[wrong].numpy(),
        "y_true": val.y_true[wrong],
        "y_pred": val.y_pred[wrong],
    }
