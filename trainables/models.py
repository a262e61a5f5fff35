"""Backbones (a registry over torchvision's model API), the MLP head, and layer freezing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from trainables.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(UserError):
    """Unknown backbone, bad freeze spec, missing or incompatible weights: one line for the user."""


@dataclass
class Trunk:
    """A backbone with its classifier removed: features out, plus its stages for freezing."""

    module: nn.Module
    feature_dim: int
    stages: list[list[nn.Module]]


@dataclass(frozen=True)
class BackboneEntry:
    name: str
    build: Callable[[nn.Module], Trunk]  # strips the classifier off a full model
    make: Callable[[int], nn.Module]  # builds the full, untrained model for C input channels
    classifier_prefix: str  # state-dict keys of the classifier our head replaces
    stage_count: int  # what ``partial:K`` can freeze
    torchvision: bool = True
    min_size: int = 32


_BACKBONES: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    if entry.name in _BACKBONES:
        raise ValueError(f"backbone {entry.name!r} is registered twice")
    _BACKBONES[entry.name] = entry
    return entry


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def get_backbone(name: str) -> BackboneEntry:
    try:
        return _BACKBONES[name]
    except KeyError:
        raise ModelError(
            f"unknown backbone {name!r}; accepted: {', '.join(list_backbones())}"
        ) from None


# --- torchvision backbones ------------------------------------------------------------------


def _torchvision(name: str) -> Callable[[int], nn.Module]:
    def make(_: int) -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return make


def _resnet_trunk(model: nn.Module) -> Trunk:
    dim = model.fc.in_features
    model.fc = nn.Identity()
    stem = [model.conv1, model.bn1]
    stages = [stem, [model.layer1], [model.layer2], [model.layer3], [model.layer4]]
    return Trunk(model, dim, stages)


def _vgg_trunk(model: nn.Module) -> Trunk:
    # The whole VGG classifier goes: the seed experiments replace it with their own MLP.
    dim = model.classifier[0].in_features
    model.classifier = nn.Identity()
    stages: list[list[nn.Module]] = [[]]
    for layer in model.features:
        stages[-1].append(layer)
        if isinstance(layer, nn.MaxPool2d):
            stages.append([])
    return Trunk(model, dim, [s for s in stages if s])


def _densenet_trunk(model: nn.Module) -> Trunk:
    dim = model.classifier.in_features
    model.classifier = nn.Identity()
    f = model.features
    stages = [
        [f.conv0, f.norm0],
        [f.denseblock1, f.transition1],
        [f.denseblock2, f.transition2],
        [f.denseblock3, f.transition3],
        [f.denseblock4, f.norm5],
    ]
    return Trunk(model, dim, stages)


for _name, _trunk, _prefix in [
    ("resnet18", _resnet_trunk, "fc."),
    ("resnet50", _resnet_trunk, "fc."),
    ("vgg16", _vgg_trunk, "classifier."),
    ("densenet121", _densenet_trunk, "classifier."),
]:
    register_backbone(BackboneEntry(_name, _trunk, _torchvision(_name), _prefix, stage_count=5))


# --- a small CNN for fast CPU work ---------------------------------------------------------


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


def _smallcnn_trunk(model: nn.Module) -> Trunk:
    dim = model.fc.in_features
    model.fc = nn.Identity()
    return Trunk(model, dim, [[model.block1], [model.block2]])


register_backbone(
    BackboneEntry(
        "smallcnn", _smallcnn_trunk, SmallCNN, "fc.", stage_count=2, torchvision=False, min_size=8
    )
)


# --- weights --------------------------------------------------------------------------------


def load_full_model(entry: BackboneEntry, weights: str, in_channels: int) -> nn.Module:
    """The full model with ``weights``: torchvision's pretrained set, none, or a local file."""
    if weights == "imagenet":
        if not entry.torchvision:
            raise ModelError(f"backbone {entry.name!r} has no ImageNet weights; use --weights none")
        import torchvision

        default = torchvision.models.get_model_weights(entry.name).DEFAULT
        # torchvision downloads once and caches under $TORCH_HOME.
        return torchvision.models.get_model(entry.name, weights=default)
    model = entry.make(3 if entry.torchvision else in_channels)
    if weights != "none":
        _load_state_dict_file(model, entry, Path(weights))
    return model


def _load_state_dict_file(model: nn.Module, entry: BackboneEntry, path: Path) -> None:
    if not path.is_file():
        raise ModelError(
            f"weights file {str(path)!r} does not exist; accepted: imagenet, none, or a path"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or foreign file
        raise ModelError(f"weights file {str(path)!r} is not a PyTorch state dict: {err}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(
            f"weights file {str(path)!r} holds a {type(state).__name__}, not a state dict"
        )
    trunk_prefixes = entry.classifier_prefix
    # The classifier is replaced by our head, so its weights (another class count) may differ.
    state = {k: v for k, v in state.items() if not k.startswith(trunk_prefixes)}
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(trunk_prefixes)}
    missing = sorted(set(own) - set(state))
    wrong_shape = sorted(
        k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    )
    if missing or wrong_shape:
        detail = f"missing {missing[:3]}" if missing else f"wrong shape for {wrong_shape[:3]}"
        raise ModelError(
            f"weights file {str(path)!r} does not fit backbone {entry.name!r}: {detail}"
        )
    model.load_state_dict(state, strict=False)


def input_normalisation(weights: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Pretrained weights fix the normalisation; otherwise the data's own statistics are used."""
    if weights != "none":  # a local file is taken to be a copy of pretrained weights
        return IMAGENET_MEAN, IMAGENET_STD
    return None


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
        layers: list[nn.Module] = []
        width = trunk.feature_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            width = size
        self.neck = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.embedding_dim = width
        self.frozen: list[nn.Module] = []

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
        frozen = {id(t) for m in self.frozen for t in (*m.parameters(), *m.buffers())}
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
        for module in self.frozen:
            module.eval()
        return self


def parse_freeze(freeze: str, backbone: str) -> tuple[str, int]:
    """``none``, ``backbone`` or ``partial:K`` (the first K of the backbone's stages)."""
    entry = get_backbone(backbone)
    if freeze in {"none", "backbone"}:
        return freeze, 0
    kind, _, k = freeze.partition(":")
    n_stages = entry.stage_count
    if kind == "partial" and k.isdigit() and 1 <= int(k) <= n_stages:
        return kind, int(k)
    raise ModelError(
        f"bad freeze {freeze!r} for {backbone}; accepted: none, backbone, partial:K with "
        f"K in 1..{n_stages}"
    )


def apply_freeze(model: ImageClassifier, freeze: str, backbone: str) -> None:
    kind, k = parse_freeze(freeze, backbone)
    if kind == "none":
        frozen: list[nn.Module] = []
    elif kind == "backbone":
        frozen = [model.backbone]
    else:
        frozen = [m for stage in model.stages[:k] for m in stage]
    for module in frozen:
        module.requires_grad_(False)
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
    full = load_full_model(entry, weights, in_channels)
    trunk = entry.build(full)
    channels = 3 if entry.torchvision else in_channels
    size = image_size or (224 if weights == "imagenet" else max(data_size, entry.min_size))
    norm = input_normalisation(weights)
    if norm is None:
        mean = _fit_channels(data_mean or (0.5,), channels)
        std = _fit_channels(data_std or (0.25,), channels)
    else:
        mean, std = norm
    model = ImageClassifier(
        Preprocess(size, channels, mean, std), trunk, head_hidden, num_classes, dropout
    )
    apply_freeze(model, freeze, backbone)
    return model


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


def _module_names(root: nn.Module, modules: list[nn.Module]) -> tuple[str, ...]:
    wanted = {id(module) for module in modules}
    return tuple(name for name, module in root.named_modules() if id(module) in wanted)


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
