"""Every classification model in torchvision's registry, by its torchvision name, with its own
weights (``DEFAULT``) and the input size and normalisation of those weights' transforms.

The generic rules of ``_trunk`` cover the registry; the few families that need more say so in
``FAMILIES``, keyed by the module that defines them: VGG and DenseNet keep the stages this
project always gave them, GoogLeNet and Inception lose their auxiliary classifiers, and vision
transformers are built for the one input size they take.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from trainables.backbones._registry import register_source
from trainables.backbones._trunk import generic_stages, skeleton, strip_classifier
from trainables.backbones._types import InputSpec, Stage, Trunk
from trainables.backbones._weights import load_into_trunk

MIN_SIZE = 32  # small data (digits are 8 x 8) is enlarged to at least this


def _vgg_stages(model: nn.Module) -> list[list[Stage]]:
    """One stage per resolution: each ends with its max-pool."""
    stages: list[list[Stage]] = [[]]
    for layer in model.features:
        stages[-1].append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append([])
    return [s for s in stages if s]


def _densenet_stages(model: nn.Module) -> list[list[Stage]]:
    """The stem, then each dense block with the transition after it."""
    f = model.features
    return [
        [f.conv0, f.norm0],
        [f.denseblock1, f.transition1],
        [f.denseblock2, f.transition2],
        [f.denseblock3, f.transition3],
        [f.denseblock4, f.norm5],
    ]


@dataclass(frozen=True)
class Family:
    """What a family needs beyond the generic rules."""

    untrained: Mapping[str, Any] = field(default_factory=dict)  # constructor arguments
    pretrained: Mapping[str, Any] = field(default_factory=dict)  # ... as its weights' builder sets
    size_argument: str | None = None  # the input size it is built for, when it takes one only
    size_pair: bool = False  # ... given as (height, width)
    stages: Callable[[nn.Module], list[list[Stage]]] = generic_stages


_NO_AUX = {"aux_logits": False, "init_weights": True}
_NO_AUX_PRETRAINED = {"aux_logits": False, "init_weights": False, "transform_input": True}
FAMILIES: dict[str, Family] = {
    "vgg": Family(stages=_vgg_stages),
    "densenet": Family(stages=_densenet_stages),
    "googlenet": Family(_NO_AUX, _NO_AUX_PRETRAINED),
    "inception": Family(_NO_AUX, _NO_AUX_PRETRAINED),
    "vision_transformer": Family(size_argument="image_size"),
    "maxvit": Family(size_argument="input_size", size_pair=True),
}


class TorchvisionSource:
    label = "torchvision"
    prefix = ""

    def available(self) -> bool:
        return True

    def names(self) -> list[str]:
        return list(_names())

    def knows(self, arch: str) -> bool:
        return arch in _names()

    def has_pretrained(self, arch: str) -> bool:
        return True  # every classification model in the registry has DEFAULT weights

    def pretrained_identity(self, arch: str) -> str:
        import torchvision

        # DEFAULT moves to newer weights between releases: ResNet18_Weights.IMAGENET1K_V1.
        return f"torchvision{torchvision.__version__}-{_default_weights(arch)}"

    def channels(self, in_channels: int) -> int:
        return 3

    def input_spec(self, arch: str) -> InputSpec:
        weights = _default_weights(arch)
        transforms = weights.transforms()
        smallest = int(weights.meta["min_size"][0])
        fixed = _family(arch).size_argument is not None
        return InputSpec(
            size=int(transforms.crop_size[0]),
            smallest=smallest,
            min_size=smallest if fixed else max(MIN_SIZE, smallest),
            fixed=fixed,
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
        )

    def build(self, arch: str, *, weights: str, in_channels: int) -> Trunk:
        import torchvision

        kwargs = self.build_kwargs(arch, pretrained=weights != "none")
        construct = functools.partial(torchvision.models.get_model, arch, weights=None, **kwargs)
        # Pretrained weights or a file replace every value: no random ones first.
        model = construct() if weights == "none" else skeleton(construct)
        pretrained = weights == "imagenet"
        if pretrained:
            # torchvision downloads once and caches under $TORCH_HOME.
            state = _default_weights(arch).get_state_dict(progress=False, check_hash=True)
        dim, attr, keep = strip_classifier(model)
        if pretrained:
            load_into_trunk(model, state, f"torchvision's weights for {arch}", arch)
        served = {
            "trunk": self.label,
            "classifier_attr": attr,
            "classifier_keep": keep,
            "build_kwargs": kwargs,
        }
        return Trunk(model, dim, _family(arch).stages(model), served)

    def build_kwargs(self, arch: str, *, pretrained: bool) -> dict[str, Any]:
        """The constructor's arguments: those its pretrained weights' builder would set (a
        weights file is taken to be a copy of them), and the fixed input size."""
        family = _family(arch)
        kwargs = dict(family.pretrained if pretrained else family.untrained)
        if family.size_argument:
            size = int(_default_weights(arch).meta["min_size"][0])
            kwargs[family.size_argument] = [size, size] if family.size_pair else size
        return kwargs


@functools.cache
def _names() -> tuple[str, ...]:
    import torchvision

    # Classification only: detection, segmentation, video and quantized models live in
    # sub-modules of torchvision.models.
    return tuple(torchvision.models.list_models(module=torchvision.models))


def _default_weights(arch: str):
    import torchvision

    return torchvision.models.get_model_weights(arch).DEFAULT


def _family(arch: str) -> Family:
    import torchvision

    module = torchvision.models.get_model_builder(arch).__module__
    return FAMILIES.get(module.rsplit(".", 1)[-1], Family())


register_source(TorchvisionSource())
