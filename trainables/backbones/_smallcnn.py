"""The project's own backbone: a small CNN for fast CPU work, for any channel count."""

from __future__ import annotations

import torch
from torch import nn

from trainables.backbones._registry import register_source
from trainables.backbones._trunk import generic_stages, strip_classifier
from trainables.backbones._types import InputSpec, ModelError, Trunk

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """Two conv blocks; with the default one-hidden-layer head it is the classic 2 conv + 2 FC."""

    def __init__(self, in_channels: int = 3, width: int = 32) -> None:
        super().__init__()
        self.block1 = _conv_block(in_channels, width)
        self.block2 = _conv_block(width, width * 2)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(width * 2 * 16, 10)  # a classifier, removed like torchvision's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(x))), 1))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ProjectSource:
    label = "smallcnn"
    prefix = ""
    _builders = {"smallcnn": SmallCNN}

    def available(self) -> bool:
        return True

    def names(self) -> list[str]:
        return list(self._builders)

    def knows(self, arch: str) -> bool:
        return arch in self._builders

    def has_pretrained(self, arch: str) -> bool:
        return False

    def pretrained_identity(self, arch: str) -> str:
        raise ModelError(f"backbone {arch!r} has no ImageNet weights; use --weights none")

    def channels(self, in_channels: int) -> int:
        return in_channels

    def input_spec(self, arch: str) -> InputSpec:
        # Two 2 x 2 max-pools need 4 pixels; a weights file of ours is taken to be trained on
        # ImageNet-normalised input.
        return InputSpec(8, 4, 8, False, IMAGENET_MEAN, IMAGENET_STD)

    def build(self, arch: str, *, weights: str, in_channels: int) -> Trunk:
        if weights == "imagenet":
            raise ModelError(f"backbone {arch!r} has no ImageNet weights; use --weights none")
        model = self._builders[arch](in_channels)
        dim, attr, keep = strip_classifier(model)
        width = int(model.block1[0].out_channels)
        served = {"trunk": "smallcnn", "classifier_attr": attr, "smallcnn_width": width}
        return Trunk(model, dim, generic_stages(model), served)


register_source(ProjectSource())
