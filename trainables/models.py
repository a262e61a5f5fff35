"""The classifier: a backbone's trunk (``trainables.backbones``), the MLP head, layer
freezing by the backbone's stages, and the cut of a frozen part for the feature cache."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainables.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputSpec,
    ModelError,
    SmallCNN,
    Stage,
    Trunk,
    get_backbone,
    list_backbones,
    stage_count,
    stage_tensors,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "BackboneSplit",
    "ImageClassifier",
    "ModelError",
    "Preprocess",
    "SmallCNN",
    "SplitError",
    "apply_freeze",
    "build_model",
    "get_backbone",
    "list_backbones",
    "parse_freeze",
    "split_frozen",
]


# --- the classifier -------------------------------------------------------------------------


class Preprocess(nn.Module):
    """uint8 images to the backbone's input: scale, grey to RGB, resize, normalise, on device."""

    def __init__(self, size: int, channels: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.size = size
        self.channels = channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear")
        return (x - self.mean) / self.std


class ImageClassifier(nn.Module):
    """Preprocess -> backbone trunk -> MLP head. The head's last hidden layer is the embedding."""

    def __init__(
        self,
        preprocess: Preprocess,
        trunk: Trunk,
        hidden: Sequence[int],
        num_classes: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.backbone = trunk.module
        self.stages = trunk.stages
        self.served_trunk = trunk.served  # how trainables.edge.served_model rebuilds the trunk
        layers: list[nn.Module] = []
        width = trunk.feature_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        self.neck = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.embedding_dim = width
        self.frozen: list[Stage] = []

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(self.preprocess(x)))

    def forward_with_embedding(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = self.embed(x)
        return self.head(embedding), embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint needs: frozen layers come back from the weights file (and
        stay in eval mode, so their batch-norm buffers never change)."""
        frozen = {id(t) for item in self.frozen for t in stage_tensors(item)}
        state = self.state_dict(keep_vars=True)
        return {k: v.detach() for k, v in state.items() if id(v) not in frozen}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        # Batch norm forgives a missing ``num_batches_tracked``, so only extra gaps count.
        expected_missing = set(self.state_dict()) - set(self.trained_state_dict())
        if unexpected or set(missing) - expected_missing:
            raise RuntimeError(
                f"checkpoint does not fit the model: missing {sorted(set(missing))[:5]}, "
                f"unexpected {unexpected[:5]}"
            )

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        # Frozen layers keep their batch-norm statistics too, not only their weights.
        for item in self.frozen:
            if isinstance(item, nn.Module):
                item.eval()
        return self


def parse_freeze(freeze: str, backbone: str, n_stages: int | None = None) -> tuple[str, int]:
    """``none``, ``backbone`` or ``partial:K`` (the first K of the backbone's stages; their
    number is read off a copy built on the meta device unless given)."""
    get_backbone(backbone)
    if freeze in {"none", "backbone"}:
        return freeze, 0
    kind, _, k = freeze.partition(":")
    n_stages = stage_count(backbone) if n_stages is None else n_stages
    if kind == "partial" and k.isdigit() and 1 <= int(k) <= n_stages:
        return kind, int(k)
    raise ModelError(
        f"bad freeze {freeze!r} for {backbone}; accepted: none, backbone, partial:K with "
        f"K in 1..{n_stages}"
    )


def apply_freeze(model: ImageClassifier, freeze: str, backbone: str) -> None:
    kind, k = parse_freeze(freeze, backbone, len(model.stages))
    if kind == "none":
        frozen: list[Stage] = []
    elif kind == "backbone":
        frozen = [model.backbone]
    else:
        frozen = [item for stage in model.stages[:k] for item in stage]
    for item in frozen:
        item.requires_grad_(False)
    model.frozen = frozen


def build_model(
    *,
    backbone: str,
    weights: str,
    num_classes: int,
    in_channels: int,
    data_size: int,
    head_hidden: Sequence[int] = (128,),
    dropout: float = 0.0,
    freeze: str = "none",
    image_size: int = 0,
    data_mean: Sequence[float] | None = None,
    data_std: Sequence[float] | None = None,
) -> ImageClassifier:
    entry = get_backbone(backbone)
    trunk = entry.build(weights=weights, in_channels=in_channels)
    spec = entry.input_spec()
    channels = entry.channels(in_channels)
    if weights == "none":  # the data's own statistics
        mean = _fit_channels(data_mean or (0.5,), channels)
        std = _fit_channels(data_std or (0.25,), channels)
    else:  # pretrained weights fix the normalisation; a file is taken to be a copy of them
        mean, std = _fit_channels(spec.mean, channels), _fit_channels(spec.std, channels)
    size = _input_size(spec, weights, image_size, data_size)
    model = ImageClassifier(
        Preprocess(size, channels, mean, std), trunk, head_hidden, num_classes, dropout
    )
    apply_freeze(model, freeze, backbone)
    return model


def _input_size(spec: InputSpec, weights: str, image_size: int, data_size: int) -> int:
    """``--image-size`` if given; else the weights' size for pretrained weights and for
    architectures that take one size only; else the data's, enlarged to the backbone's least."""
    if spec.fixed:
        return spec.size
    if image_size:
        return image_size
    if weights == "imagenet":
        return spec.size
    return max(data_size, spec.min_size)


def decode_size(backbones: Sequence[str], weights: str, default: int) -> int:
    """The size to decode image files at when no ``--image-size`` is given: the largest input
    the backbones take (their weights' size: 299 for Inception v3, what timm's config says),
    else ``default``; at least each backbone's least. Decoding larger is wasted memory,
    smaller loses detail the model would see."""
    return max(_input_size(get_backbone(b).input_spec(), weights, 0, default) for b in backbones)


def _fit_channels(values: Sequence[float], channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    return tuple([sum(values) / len(values)] * channels)


# --- the frozen part of a backbone, cut off for feature caching ------------------------------

_RANDOM_MODULES = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)


class SplitError(Exception):
    """The frozen layers cannot be cut off the backbone as one function of the input."""


@dataclass
class BackboneSplit:
    """The backbone in two parts that share the model's modules: ``frozen`` maps the
    preprocessed input to what the frozen layers output, ``rest`` maps that to the features."""

    frozen: nn.Module
    rest: nn.Module


def split_frozen(model: ImageClassifier) -> BackboneSplit:
    """Cut the backbone after its last frozen layer, through its traced graph, so any
    registered backbone can be cut without knowing how its ``forward`` joins its stages."""
    if any(module is model.backbone for module in model.frozen):
        return BackboneSplit(model.backbone, nn.Identity())
    if not model.frozen:
        raise SplitError("no layer of the backbone is frozen")
    import torch.fx

    try:
        traced = torch.fx.symbolic_trace(model.backbone)
    except Exception as err:  # tracing fails with many types on data-dependent control flow
        raise SplitError(f"the backbone cannot be traced ({type(err).__name__})") from None
    names = _module_names(model.backbone, model.frozen)
    nodes = list(traced.graph.nodes)
    last_frozen = max(i for i, node in enumerate(nodes) if _refers_to(node, names))
    cut = _single_tensor_cut(nodes, last_frozen)
    _check_fixed(nodes[: cut + 1], names, model.backbone)
    prefix, rest = _cut_graph(nodes, cut)
    return BackboneSplit(
        torch.fx.GraphModule(model.backbone, prefix), torch.fx.GraphModule(model.backbone, rest)
    )


def _module_names(root: nn.Module, items: list[Stage]) -> tuple[str, ...]:
    """The names of frozen modules and loose parameters, as the traced graph calls them."""
    wanted = {id(item) for item in items}
    named = [*root.named_modules(), *root.named_parameters()]
    return tuple(name for name, item in named if id(item) in wanted)


def _refers_to(node, names: tuple[str, ...]) -> bool:
    if node.op not in {"call_module", "get_attr"}:
        return False
    return any(node.target == name or node.target.startswith(f"{name}.") for name in names)


def _single_tensor_cut(nodes: list, start: int) -> int:
    """The first node from ``start`` on that is the only value the later nodes read from the
    earlier ones (a residual branch still open has two)."""
    position = {node: i for i, node in enumerate(nodes)}
    last_use = [max((position[u] for u in node.users), default=i) for i, node in enumerate(nodes)]
    for cut in range(start, len(nodes) - 1):
        live = [i for i in range(cut + 1) if last_use[i] > cut]
        if live == [cut]:
            return cut
    raise SplitError("no single tensor separates the frozen layers from the rest")


def _check_fixed(prefix: list, names: tuple[str, ...], root: nn.Module) -> None:
    """What runs before the cut must not change in training: frozen layers, or layers without
    parameters, buffers or randomness (a ResNet's ReLU and max-pool)."""
    for node in prefix:
        if node.op not in {"call_module", "get_attr"} or _refers_to(node, names):
            continue
        module = root.get_submodule(node.target) if node.op == "call_module" else None
        if (
            module is None
            or isinstance(module, _RANDOM_MODULES)
            or any(True for _ in module.parameters())
            or any(True for _ in module.buffers())
        ):
            raise SplitError(f"{node.target!r} runs before the cut but is not frozen")


def _cut_graph(nodes: list, cut: int):
    import torch.fx

    prefix, copied = torch.fx.Graph(), {}
    for node in nodes[: cut + 1]:
        copied[node] = prefix.node_copy(node, copied.__getitem__)
    prefix.output(copied[nodes[cut]])
    rest = torch.fx.Graph()
    copied = {nodes[cut]: rest.placeholder("features")}
    for node in nodes[cut + 1 :]:
        copied[node] = rest.node_copy(node, copied.__getitem__)
    return prefix, rest
