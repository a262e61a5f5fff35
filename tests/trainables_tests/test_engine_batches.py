"""Training batches and BatchNorm: a short last batch (digits-lt: 547 images at batch size 32
leave 3) must not update BatchNorm's running statistics on its own. Confirmation runs
collapsed in eval mode at epoch 6 (val accuracy 0.973 -> 0.683) while the training loss,
computed in train mode, did not move."""

import pytest
import torch
from torch import nn

from trainables.engine import train_one_epoch
from trainables.losses import LossContext, build_loss
from trainables.models import build_model
from trainables.optim import build_optimizer

DEVICE = torch.device("cpu")


def _images(n: int) -> torch.Tensor:
    """Random 12x12 grey images; the first pixel of image i is i (mod 256): a batch names its
    images."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n) % 256
    return images


class _Recorder:
    """Batch sizes BatchNorm normalises in train mode, and which images each step trained on."""

    def __init__(self, model: nn.Module) -> None:
        self.bn_batches: list[int] = []
        self.steps: list[list[int]] = []
        first_bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        first_bn.register_forward_pre_hook(self._bn)
        model.preprocess.register_forward_pre_hook(self._images)

    def _bn(self, module: nn.Module, args: tuple[torch.Tensor]) -> None:
        if module.training:
            self.bn_batches.append(len(args[0]))

    def _images(self, module: nn.Module, args: tuple[torch.Tensor]) -> None:
        if module.training:
            self.steps.append(args[0][:, 0, 0, 0].tolist())


def _epochs(n: int, batch_size: int, epochs: int = 2) -> _Recorder:
    torch.manual_seed(0)
    model = build_model(
        backbone="smallcnn", weights="none", num_classes=2, in_channels=1, data_size=12
    )
    recorder = _Recorder(model)
    criterion = build_loss("ce", LossContext(num_classes=2, embedding_dim=128, class_counts=[1, 1]))
    optimizer = build_optimizer("sgd", model, lr=0.01, momentum=0.9)
    images, targets = _images(n), torch.arange(n) % 2
    rng = torch.Generator().manual_seed(7)
    for _ in range(epochs):
        train_one_epoch(
            model, criterion, optimizer, images, targets, DEVICE, batch_size=batch_size, rng=rng
        )
    return recorder


@pytest.mark.parametrize(
    ("n", "batch_size", "batches"),
    [
        (67, 32, [32, 35]),  # a last batch of 3 joins the one before (it was trained alone)
        (547, 32, [32] * 16 + [35]),  # digits-lt's training split
        (80, 32, [32, 32, 16]),  # half a batch is enough to stand alone
        (64, 32, [32, 32]),
        (10, 32, [10]),  # fewer images than a batch: one batch, nothing to join
        (5, 1, [1] * 5),  # the optimizers space's batch size 1
    ],
)
def test_no_training_step_sees_a_short_last_batch(n, batch_size, batches):
    recorder = _epochs(n, batch_size)
    assert min(recorder.bn_batches) >= min(n, batch_size) / 2
    assert recorder.bn_batches == batches * 2
    assert [len(step) for step in recorder.steps] == batches * 2


@pytest.mark.parametrize(("n", "batch_size"), [(67, 32), (80, 32), (10, 32)])
def test_every_image_trains_once_per_epoch_in_the_seeded_order(n, batch_size):
    recorder = _epochs(n, batch_size)
    per_epoch = len(recorder.steps) // 2
    rng = torch.Generator().manual_seed(7)
    for epoch in range(2):
        steps = recorder.steps[epoch * per_epoch : (epoch + 1) * per_epoch]
        # The order of a seeded permutation, so resuming and reruns see the same batches.
        assert [i for step in steps for i in step] == torch.randperm(n, generator=rng).tolist()
