"""Backbones by name: ``smallcnn``, every classification model in torchvision's registry, and
``timm:NAME`` with the timm extra. Each comes with its own weights, input size and
normalisation, and stages for ``freeze=partial:K``.

``get_backbone(name)`` resolves a name (an unknown one is a ``ModelError`` naming the close
matches); ``Backbone.build`` returns its ``Trunk``: the network without its classifier, the
feature size, the stages. ``stage_count`` and ``trunk_on_meta`` build on the meta device, so
checking a freeze spec costs no memory.
"""

from __future__ import annotations

import functools

from trainables.backbones import _smallcnn, _timm, _torchvision  # noqa: F401  (registers)
from trainables.backbones._registry import (
    TIMM_PREFIX,
    Backbone,
    get_backbone,
    list_backbones,
    missing_sources_text,
)
from trainables.backbones._smallcnn import IMAGENET_MEAN, IMAGENET_STD, SmallCNN
from trainables.backbones._trunk import on_meta, stage_tensors
from trainables.backbones._types import InputSpec, ModelError, Stage, Trunk

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TIMM_PREFIX",
    "Backbone",
    "InputSpec",
    "ModelError",
    "SmallCNN",
    "Stage",
    "Trunk",
    "check_backbone",
    "get_backbone",
    "list_backbones",
    "list_backbones_text",
    "stage_count",
    "stage_tensors",
    "trunk_on_meta",
]


def trunk_on_meta(name: str) -> Trunk:
    """The untrained trunk with its parameters on the meta device: its structure only."""
    backbone = get_backbone(name)
    return on_meta(lambda: backbone.build(weights="none", in_channels=3))


@functools.cache
def stage_count(name: str) -> int:
    """How many stages ``partial:K`` can freeze."""
    return len(trunk_on_meta(name).stages)


def check_backbone(name: str, *, weights: str, image_size: int) -> Backbone:
    """Everything about a backbone that can be checked before a trial: the name, that it has
    pretrained weights when asked for them, and an input size it accepts."""
    backbone = get_backbone(name)
    if weights == "imagenet" and not backbone.pretrained_available:
        raise ModelError(f"backbone {name!r} has no ImageNet weights; use --weights none")
    spec = backbone.input_spec()
    if image_size and spec.fixed and image_size != spec.size:
        raise ModelError(
            f"backbone {name!r} takes {spec.size} x {spec.size} images only; accepted: "
            f"--image-size 0 or {spec.size}"
        )
    if image_size and image_size < spec.smallest:
        raise ModelError(
            f"--image-size {image_size} is too small for backbone {name!r}; accepted: "
            f"{spec.smallest} or more, or 0 (the default)"
        )
    return backbone


def list_backbones_text() -> str:
    """``tune.py --list-backbones``: one name a line, then how to get the sources missing."""
    return "\n".join([*list_backbones(), *(f"# {line}" for line in missing_sources_text())])
