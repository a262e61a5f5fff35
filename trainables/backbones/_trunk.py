"""The generic rules that turn an ImageNet classifier into a trunk: find its classifier by
name and remove it, and read the stages its ``forward`` runs through off its module tree.

Stages are what ``freeze=partial:K`` freezes the first K of. They are the trunk's children in
order, except that a body container (``features``, ``layers``, ``blocks``, ``stages``,
``trunk_output``, ``encoder``) stands for its own children: ResNet's stem and layer1..4,
EfficientNet's and ConvNeXt's ``features``, RegNet's blocks, a ViT's encoder layers. A child
that only normalises (a batch norm after the stem conv, ViT's final layer norm) joins the stage
before it, and parameters held directly by the model or a body (a ViT's class token and
position embedding) join the first stage, which they feed.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import nn

from trainables.backbones._types import Stage

HEAD_NAMES = ("fc", "classifier", "heads", "head")  # torchvision's names for the classifier
BODY_NAMES = ("features", "trunk_output", "layers", "blocks", "stages", "encoder")
NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
T = TypeVar("T")


def strip_classifier(model: nn.Module) -> tuple[int, str, tuple[str, ...]]:
    """Remove the classifier (the first of ``HEAD_NAMES`` the model has) in place, from its
    first linear or convolution layer on. Layers before that which are not dropout stay
    (ConvNeXt's layer norm, MaxViT's pooling), and so do poolings after it (SqueezeNet's
    classifier is a 1x1 convolution then the global pool). Returns the feature size, the
    attribute's name and the names of the layers kept."""
    attr = next(n for n in HEAD_NAMES if isinstance(getattr(model, n, None), nn.Module))
    head = getattr(model, attr)
    layers = list(head.named_children()) if isinstance(head, nn.Sequential) else [("", head)]
    first = next(i for i, (_, m) in enumerate(layers) if isinstance(m, nn.Linear | nn.Conv2d))
    classifier = layers[first][1]
    dim = classifier.in_features if isinstance(classifier, nn.Linear) else classifier.in_channels
    keep = tuple(
        name
        for i, (name, layer) in enumerate(layers)
        if (i < first and not isinstance(layer, DROPOUTS))
        or (i > first and isinstance(layer, POOLS))
    )
    setattr(model, attr, kept_layers(head, keep))
    return dim, attr, keep


def kept_layers(head: nn.Module, keep: tuple[str, ...]) -> nn.Module:
    """What replaces a classifier: the layers kept under their own names (so their weights keep
    their state-dict keys), or nothing."""
    if not keep:
        return nn.Identity()
    return nn.Sequential(OrderedDict((name, head.get_submodule(name)) for name in keep))


def generic_stages(trunk: nn.Module) -> list[list[Stage]]:
    loose: list[Stage] = list(trunk.parameters(recurse=False))
    stages: list[list[Stage]] = []
    for child in _body_children(trunk, loose):
        if not any(True for _ in child.parameters()):
            continue
        if stages and _only_normalises(child):
            stages[-1].append(child)
        else:
            stages.append([child])
    if stages:
        stages[0][:0] = loose
    return stages


def _body_children(module: nn.Module, loose: list[Stage]) -> Iterator[nn.Module]:
    for name, child in module.named_children():
        if name in BODY_NAMES and any(True for _ in child.children()):
            loose += list(child.parameters(recurse=False))
            yield from _body_children(child, loose)
        else:
            yield child


def _only_normalises(module: nn.Module) -> bool:
    holders = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    return all(isinstance(m, NORMS) for m in holders)


def stage_tensors(stage_item: Stage) -> list[torch.Tensor]:
    """A stage item's parameters and buffers: what freezing it fixes."""
    if isinstance(stage_item, nn.Parameter):
        return [stage_item]
    return [*stage_item.parameters(), *stage_item.buffers()]


# --- construction without memory, for names and stage counts ------------------------------


def on_meta(build: Callable[[], T]) -> T:
    """``build()`` with every parameter and buffer on the meta device: no memory, no
    initialisation, so even ViT-H/14 is built in a fraction of a second."""
    try:
        with torch.device("meta"):
            return build()
    except NotImplementedError:
        # RegNet's constructor computes its widths with tensors and reads them back, which
        # meta tensors cannot do: create on the CPU (uninitialised), move each to meta.
        with _parameters_to_meta():
            return build()


def skeleton(build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` on the meta device, for a network whose every value a state dict then
    assigns (``_weights.load_into_trunk``): no random initialisation that the weights would
    overwrite (most of a large network's build time; benchmarks/model_build.py). A
    network with buffers no state dict holds (non-persistent ones) is built as usual."""
    model = on_meta(build)
    if any(module._non_persistent_buffers_set for module in model.modules()):
        return build()
    return model


def is_skeleton(module: nn.Module) -> bool:
    """Whether ``module`` holds a value on the meta device: weights are still to come."""
    return any(t.is_meta for t in (*module.parameters(), *module.buffers()))


@contextlib.contextmanager
def _parameters_to_meta() -> Iterator[None]:
    originals = nn.Module.register_parameter, nn.Module.register_buffer
    register_parameter, register_buffer = originals

    def parameter(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(self: nn.Module, name: str, tensor, persistent: bool = True) -> None:
        register_buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = originals
