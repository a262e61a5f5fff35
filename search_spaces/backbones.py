"""Backbone against backbone: a small CNN, ResNet-18 with and without augmentation, and more.

Its arms are named here; the other spaces take any backbone by ``--backbone`` (every
torchvision classification model, and timm's as ``timm:NAME``)."""

from __future__ import annotations

from typing import Any

import optuna

from search_spaces._registry import SpaceContext, register_space

ARMS = {
    "smallcnn": {"backbone": "smallcnn"},
    "resnet18": {"backbone": "resnet18"},
    "resnet18-aug": {"backbone": "resnet18", "augment": True},
    "resnet50": {"backbone": "resnet50"},
    "densenet121": {"backbone": "densenet121"},
    "vgg16": {"backbone": "vgg16"},
    "efficientnet_b0": {"backbone": "efficientnet_b0"},
    "mobilenet_v3_large": {"backbone": "mobilenet_v3_large"},
    "convnext_tiny": {"backbone": "convnext_tiny"},
}


@register_space(
    "backbones",
    description="small CNN vs ResNet-18 vs ResNet-18 + augmentation (ResNet-50, DenseNet-121, "
    "VGG-16, EfficientNet-B0, MobileNetV3-Large, ConvNeXt-T on request)",
    factor="backbone",
    arms=("smallcnn", "resnet18", "resnet18-aug"),
    choices=tuple(ARMS),
    reproduces="small CNN vs ResNet-18 (with random crop, flip, colour jitter) and deeper nets",
)
def backbones(trial: optuna.Trial, arm: str, context: SpaceContext) -> dict[str, Any]:
    trial.suggest_float("lr", 1e-3, 0.1, log=True)
    trial.suggest_float("momentum", 0.5, 0.95)
    trial.suggest_categorical("batch_size", [32, 64])
    return {**ARMS[arm], "optimizer": "sgd"}
