"""A trained classifier as an MLflow pyfunc model: raw images in, one row of predictions out
per image.

MLflow loads this file by path ("models from code") in whatever process calls
``mlflow.pyfunc.load_model``, which need not have this repository: it imports only torch,
torchvision (timm for a timm backbone), numpy, pandas, Pillow and MLflow. It rebuilds
``trainables.models.ImageClassifier`` module for module (the weights load with
``strict=True``), reads image files as ``trainables.data.image_files.read_image`` does (the same
pixels, the same files unreadable) and resizes arrays as ``trainables.data.resize_uint8`` does;
tests/trainables_tests/edge_tests/test_served_model.py holds both sides to that for every backbone.

What it takes: a uint8 array N x C x H x W (any H and W; C 1, 2, 3 or 4: grey, grey and
alpha, RGB, RGBA), a list of image file paths, a list of C x H x W arrays, or a one-column
DataFrame of paths. Each image is first brought to the dataset's channels, as Pillow's
``convert`` brings a file to the dataset's mode (alpha dropped, RGB to grey by ITU-R 601-2
luma, grey to RGB by repetition), and to the dataset's stored size (as the dataset was); then
the model's own preprocessing resizes and normalises it, as in training.
What it returns: a DataFrame, one row per image: ``predicted`` (the class name; multi-label
models: ``labels``, the labels at or above the threshold joined by ``;``) and one
``prob_<class>`` column per class.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from mlflow.models import set_model
from mlflow.pyfunc import PythonModel
from torch import nn

# The model's files (``context.artifacts``), its MLmodel metadata, and its output columns.
WEIGHTS_ARTIFACT = "weights"
SPEC_ARTIFACT = "spec"  # ModelSpec as JSON; also in the MLmodel file's metadata, for readers
METADATA_KEY = "image_classifier"
PREDICTED = "predicted"  # single-label: the class name
LABELS = "labels"  # multi-label: the labels at or above the threshold, joined by ";"
LABEL_SEPARATOR = ";"
PROB_PREFIX = "prob_"
ERROR = "error"  # only with on_unreadable="skip": why a file gave no prediction
# Parameters of ``predict`` (``params=``), with their defaults.
PARAMS: dict[str, Any] = {
    "batch_size": 256,  # as trainables.engine.evaluate, so the same images give the same numbers
    "threshold": 0.5,  # multi-label only; the training metrics' threshold
    "on_unreadable": "raise",  # or "skip": a row with an error message instead of an exception
}
UNREADABLE_CHOICES = ("raise", "skip")


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the network and read its input."""

    classes: tuple[str, ...]
    multilabel: bool
    backbone: str
    trunk: str  # "torchvision" or "timm" (their model without its classifier), or "smallcnn"
    classifier_attr: str  # the torchvision model's classifier attribute, replaced by ...
    feature_dim: int
    head_hidden: tuple[int, ...]
    data_channels: int  # the dataset's images, as the model was trained on them
    data_size: int
    input_channels: int  # the network's input, after preprocessing
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    svm: bool = False  # a linear SVM on the embeddings replaces the head's scores
    smallcnn_width: int = 32
    classifier_keep: tuple[str, ...] = ()  # ... those of its layers (by name) that stay
    build_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)  # the constructor's

    def to_config(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.asdict().items()}

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ModelSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
        return cls(**{k: v for k, v in values.items() if k in names})

    @property
    def image_mode(self) -> str:
        """The Pillow mode files are converted to, as the dataset's loader converted them."""
        return "L" if self.data_channels == 1 else "RGB"


def output_columns(spec: ModelSpec) -> list[str]:
    first = LABELS if spec.multilabel else PREDICTED
    return [first, *(f"{PROB_PREFIX}{name}" for name in spec.classes)]


# --- the network, module for module as trainables.models.ImageClassifier -------------------


class Preprocess(nn.Module):
    """uint8 images to the backbone's input: scale, grey to RGB, resize, normalise."""

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


class SmallCNNTrunk(nn.Module):
    """The small CNN with its classifier removed."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.block1 = _conv_block(in_channels, width)
        self.block2 = _conv_block(width, width * 2)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.block2(self.block1(x))), 1))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def build_trunk(spec: ModelSpec) -> nn.Module:
    if spec.trunk == "smallcnn":
        return SmallCNNTrunk(spec.input_channels, spec.smallcnn_width)
    if spec.trunk == "timm":
        import timm

        arch = spec.backbone.removeprefix("timm:")
        return timm.create_model(arch, pretrained=False, **spec.build_kwargs)
    if spec.trunk != "torchvision":
        raise ValueError(f"unknown trunk {spec.trunk!r}; known: torchvision, timm, smallcnn")
    import torchvision

    model = torchvision.models.get_model(spec.backbone, weights=None, **spec.build_kwargs)
    # The classifier goes; the layers of it the trunk kept (ConvNeXt's norm) stay, by name.
    head, keep = getattr(model, spec.classifier_attr), spec.classifier_keep
    kept = OrderedDict((k, head.get_submodule(k)) for k in keep)
    setattr(model, spec.classifier_attr, nn.Sequential(kept) if keep else nn.Identity())
    return model


class Network(nn.Module):
    """Preprocess -> backbone trunk -> MLP neck -> linear head."""

    def __init__(self, spec: ModelSpec, *, skeleton: bool = False) -> None:
        """``skeleton``: the backbone on the meta device, without values, for weights that
        ``load_network`` assigns next."""
        super().__init__()
        self.preprocess = Preprocess(spec.input_size, spec.input_channels, spec.mean, spec.std)
        with torch.device("meta") if skeleton else contextlib.nullcontext():
            self.backbone = build_trunk(spec)
        layers: list[nn.Module] = []
        width = spec.feature_dim
        for size in spec.head_hidden:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True), nn.Dropout(0.0)]
            width = size
        self.neck = nn.Sequential(*layers)
        self.head = nn.Linear(width, len(spec.classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.backbone(self.preprocess(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def load_network(spec: ModelSpec, state: dict[str, torch.Tensor]) -> Network:
    """The network with the weights ``state``. Its backbone starts as a skeleton that takes
    the weights as they are: no random values first, which took 2 s of VGG-16's 2.05 s build.
    A backbone that cannot be built so is built as usual: RegNet's constructor reads its
    widths back from tensors, and a buffer no state dict holds would stay without a value."""
    try:
        network = Network(spec, skeleton=True)
    except NotImplementedError:
        network = None
    if network is not None:
        network.load_state_dict(state, assign=True)
        if not any(t.is_meta for t in (*network.parameters(), *network.buffers())):
            return network
    network = Network(spec)
    network.load_state_dict(state)
    return network


@dataclass(frozen=True)
class LinearSVM:
    """A fitted ``StandardScaler`` + ``LinearSVC`` on the embeddings, computed in numpy as
    scikit-learn computes it, so the probabilities are those the run logged."""

    mean: np.ndarray  # (D,)
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (K' or 1, D)
    intercept: np.ndarray
    classes: np.ndarray  # (K',) indices of the classes the SVM saw

    def probabilities(self, embedding: np.ndarray, num_classes: int) -> np.ndarray:
        x = embedding.copy()
        x -= self.mean.astype(x.dtype)  # the scaler works in the embedding's precision
        x /= self.scale.astype(x.dtype)
        scores = x @ self.coef.T + self.intercept
        if scores.shape[1] == 1:  # two classes: one decision value
            scores = np.concatenate([-scores, scores], axis=1)
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        prob = e / e.sum(axis=1, keepdims=True)
        out = np.zeros((len(prob), num_classes))
        out[:, self.classes] = prob
        return out

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: torch.from_numpy(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> LinearSVM:
        return cls(**{f.name: tensors[f.name].numpy() for f in dataclasses.fields(cls)})


# --- input ----------------------------------------------------------------------------------


def unreadable_errors() -> tuple[type[Exception], ...]:
    """What Pillow raises for a file that is no readable image, as
    ``trainables.data.image_files.unreadable_errors`` says: its refusal of a decompression bomb is
    not an OSError, and without it one bomb among the paths ended the whole call."""
    from PIL import Image

    return (OSError, ValueError, Image.DecompressionBombError)


def read_image(path: str | Path, spec: ModelSpec) -> np.ndarray:
    """One file as C x H x W uint8 at the dataset's size, as ``trainables.data.image_files``."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert(spec.image_mode).resize((spec.data_size,) * 2, Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return array.transpose(2, 0, 1).copy()


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """As ``trainables.data.resize_uint8``: bilinear with antialiasing, rounded to uint8."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


# Pillow's modes by channel count: what an array of each is taken to hold.
CHANNEL_MODES = {1: "grey", 2: "grey and alpha", 3: "RGB", 4: "RGBA"}


def convert_channels(images: torch.Tensor, channels: int, what: str = "images") -> torch.Tensor:
    """uint8 N x C x H x W images brought to ``channels`` (1 or 3) as Pillow's ``convert`` brings
    a file to "L" or "RGB", so that an array gives what its file gives: alpha dropped, RGB to
    grey by ITU-R 601-2 luma in Pillow's integer arithmetic (torchvision's rgb_to_grayscale
    truncates instead, one level darker on about half the pixels), grey to RGB repeated."""
    have = int(images.shape[1])
    if have == channels:
        return images
    if channels not in (1, 3):  # no dataset has had another count: no rule to convert by
        raise ValueError(f"{what} have {have} channels; this model takes {channels} only")
    if have not in CHANNEL_MODES:
        *first, last = (f"{c} ({mode})" for c, mode in CHANNEL_MODES.items())
        raise ValueError(
            f"{what} have {have} channels; this model takes {', '.join(first)} or {last}, "
            f"and converts them to the dataset's {channels}"
        )
    if have in (2, 4):
        images = images[:, :-1]
    if images.shape[1] == 3 and channels == 1:
        r, g, b = images.to(torch.int32).unbind(1)
        luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16  # Pillow's L24
        return luma.to(torch.uint8).unsqueeze(1)
    return images.expand(-1, channels, -1, -1)  # grey to RGB, or already right


def check_array(array: Any, spec: ModelSpec, what: str = "images") -> torch.Tensor:
    """A uint8 N x C x H x W tensor with the dataset's channel count (``convert_channels``).
    Other integer types are taken when every value fits 0-255 (JSON, as MLflow's model server
    reads it, has no uint8); floats are refused, as they are likely scaled or normalised
    already."""
    # A copy: arrays handed in may be read-only views, which torch cannot wrap.
    tensor = array if isinstance(array, torch.Tensor) else torch.as_tensor(np.array(array))
    if tensor.dtype != torch.uint8:
        fits = not (tensor.dtype.is_floating_point or tensor.dtype.is_complex) and (
            tensor.numel() == 0 or (int(tensor.min()) >= 0 and int(tensor.max()) <= 255)
        )
        if tensor.dtype == torch.bool or not fits:
            raise ValueError(f"{what} must be uint8 (0-255), got {tensor.dtype}")
        tensor = tensor.to(torch.uint8)
    # Contiguous, as the training data: a channels-last view (an H x W x C array transposed)
    # or a repeated grey channel changed the convolutions' sums in the last bit.
    return convert_channels(tensor, spec.data_channels, what).contiguous()


def as_items(model_input: Any) -> list[Any] | np.ndarray | torch.Tensor:
    """A 4-D array or tensor as it is, anything else as a list of paths and C x H x W arrays."""
    if isinstance(model_input, np.ndarray | torch.Tensor) and _numeric(model_input):
        if model_input.ndim != 4:
            raise ValueError(
                "an array of images must be N x C x H x W (one image: add a first axis), got "
                f"shape {tuple(model_input.shape)}"
            )
        return model_input if isinstance(model_input, torch.Tensor) else np.asarray(model_input)
    if isinstance(model_input, pd.DataFrame):
        model_input = model_input.iloc[:, 0]
    if isinstance(model_input, str | Path):
        return [model_input]
    if isinstance(model_input, pd.Series | np.ndarray | list | tuple):
        return list(model_input)
    raise ValueError(
        "expected a uint8 array N x C x H x W, a list of image paths or of C x H x W arrays, "
        f"or a DataFrame of paths; got {type(model_input).__name__}"
    )


def _numeric(array: np.ndarray | torch.Tensor) -> bool:
    return isinstance(array, torch.Tensor) or array.dtype.kind in "biuf"


# --- the pyfunc model -----------------------------------------------------------------------


class ImageClassifierModel(PythonModel):
    # MLflow's switch for a model that checks its own input: no type hint MLflow validates
    # can say "an array or a list of paths", so ``predict`` has none and checks ``as_items``.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        with open(context.artifacts[SPEC_ARTIFACT]) as spec:
            self.spec = ModelSpec.from_config(json.load(spec))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        state = torch.load(
            context.artifacts[WEIGHTS_ARTIFACT], map_location="cpu", weights_only=True
        )
        self.network = load_network(self.spec, state["network"])
        self.network.to(self.device).eval()
        self.svm = LinearSVM.from_tensors(state["svm"]) if self.spec.svm else None

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        params = {**PARAMS, **(params or {})}
        if params["on_unreadable"] not in UNREADABLE_CHOICES:
            raise ValueError(f"on_unreadable must be one of {UNREADABLE_CHOICES}")
        items = as_items(model_input)
        batch_size = max(1, int(params["batch_size"]))
        probs, errors = [], []
        for start in range(0, len(items), batch_size):
            batch, failed = self._batch(items[start : start + batch_size], params)
            probs.append(self.probabilities(batch) if len(batch) else np.zeros((0, 0)))
            errors.extend(failed)
        return self._frame(probs, errors, float(params["threshold"]), params["on_unreadable"])

    def _batch(self, items: Any, params: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
        """The batch at the dataset's size, and an error message per item ('' when read)."""
        if isinstance(items, np.ndarray | torch.Tensor):  # a slice of an N x C x H x W batch
            images = resize_uint8(check_array(items, self.spec), self.spec.data_size)
            return images, [""] * len(images)
        images, errors = [], []
        for item in items:
            try:
                images.append(self._one(item))
                errors.append("")
            except unreadable_errors() as err:  # a bad array's ValueError: raised below
                if params["on_unreadable"] == "raise" or not isinstance(item, str | Path):
                    raise
                errors.append(f"{type(err).__name__}: {err}")
        batch = torch.stack(images) if images else torch.zeros(0, dtype=torch.uint8)
        return batch, errors

    def _one(self, item: Any) -> torch.Tensor:
        if isinstance(item, str | Path):
            return torch.from_numpy(read_image(item, self.spec))
        array = np.asarray(item)
        if array.ndim != 3:
            raise ValueError(f"each image in a list must be C x H x W, got shape {array.shape}")
        image = check_array(array[None], self.spec, "images")
        return resize_uint8(image, self.spec.data_size)[0]

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> np.ndarray:
        """(N, K) class probabilities of uint8 images at the dataset's size."""
        x = images.to(self.device)
        embedding = self.network.embed(x).float()
        if self.svm is not None:
            return self.svm.probabilities(embedding.cpu().numpy(), len(self.spec.classes))
        logits = self.network.head(embedding).float()
        prob = logits.sigmoid() if self.spec.multilabel else logits.softmax(dim=1)
        return prob.cpu().numpy()

    def _frame(
        self, probs: list[np.ndarray], errors: list[str], threshold: float, on_unreadable: str
    ) -> pd.DataFrame:
        classes = list(self.spec.classes)
        read = np.concatenate([p for p in probs if p.size] or [np.zeros((0, len(classes)))])
        full = np.full((len(errors), len(classes)), np.nan)
        ok = np.array([not e for e in errors], dtype=bool)
        full[ok] = read
        first, *prob_columns = output_columns(self.spec)
        frame = pd.DataFrame(full, columns=prob_columns)
        frame.insert(
            0,
            first,
            [self._label(row, threshold) if o else "" for row, o in zip(full, ok, strict=True)],
        )
        if on_unreadable == "skip":
            frame[ERROR] = errors
        return frame

    def _label(self, prob: np.ndarray, threshold: float) -> str:
        if self.spec.multilabel:
            chosen = np.flatnonzero(prob >= threshold)
            return LABEL_SEPARATOR.join(self.spec.classes[i] for i in chosen)
        return self.spec.classes[int(prob.argmax())]


set_model(ImageClassifierModel())
