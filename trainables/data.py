"""Datasets: a registry of loaders that all return the same in-memory, uint8 image bundle.

Images are kept as uint8 tensors of one size so a whole dataset is a few arrays: it travels
once per node through Ray's object store and every trial on the node shares it. Resizing to
the backbone's input and normalising happen on the device, inside the model's preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DEFAULT_FILE_IMAGE_SIZE = 224


class DataError(ValueError):
    """Bad dataset name, path or content; the message is one line meant for the user."""


@dataclass(frozen=True)
class ImageData:
    """A split dataset in memory. ``*_y`` are class indices, or 0/1 rows when multi-label."""

    name: str
    classes: tuple[str, ...]
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64, or (N, K) float32 when multilabel
    val_x: torch.Tensor
    val_y: torch.Tensor
    multilabel: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[-1])

    def class_counts(self, split: str) -> np.ndarray:
        y = (self.train_y if split == "train" else self.val_y).numpy()
        if self.multilabel:
            return y.sum(axis=0).astype(int)
        return np.bincount(y, minlength=self.num_classes)


@dataclass(frozen=True)
class DataOptions:
    split_seed: int = 0
    val_fraction: float = 0.25
    image_size: int = 0  # 0: the dataset's own size (files: 224)
    data_root: str = "data"
    download: bool = False


Loader = Callable[[str, DataOptions], ImageData]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Loader
    description: str
    takes_argument: bool = False  # ``name:ARG`` (a path)
    multilabel: bool = False


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str, *, description: str, takes_argument: bool = False, multilabel: bool = False
) -> Callable[[Loader], Loader]:
    def decorator(loader: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = DatasetEntry(name, loader, description, takes_argument, multilabel)
        return loader

    return decorator


def list_datasets() -> list[DatasetEntry]:
    return sorted(_DATASETS.values(), key=lambda e: e.name)


def accepted_datasets() -> str:
    return ", ".join(f"{e.name}:PATH" if e.takes_argument else e.name for e in list_datasets())


def resolve_dataset(spec: str) -> tuple[DatasetEntry, str]:
    """Split ``name`` or ``name:ARG`` and look the name up; raise DataError when unknown."""
    name, _, arg = spec.partition(":")
    entry = _DATASETS.get(name)
    if entry is None:
        raise DataError(f"unknown dataset {spec!r}; accepted: {accepted_datasets()}")
    if entry.takes_argument and not arg:
        raise DataError(f"dataset {name!r} needs a path: {name}:PATH")
    if not entry.takes_argument and arg:
        raise DataError(f"dataset {name!r} takes no argument, got {spec!r}")
    return entry, arg


def load_dataset(spec: str, options: DataOptions | None = None) -> ImageData:
    entry, arg = resolve_dataset(spec)
    data = entry.loader(arg, options or DataOptions())
    _check_trainable(data, spec)
    return data


def _check_trainable(data: ImageData, spec: str) -> None:
    if data.num_classes < 2:
        raise DataError(
            f"dataset {spec!r} has a single class {list(data.classes)}: "
            "a classifier needs at least two"
        )
    if len(data.val_y) == 0 or len(data.train_y) == 0:
        raise DataError(f"dataset {spec!r} is too small to split into train and val")


def split_stratified(
    images: torch.Tensor,
    labels: np.ndarray,
    classes: tuple[str, ...],
    options: DataOptions,
    name: str,
) -> ImageData:
    """Deterministic stratified split: the same ``split_seed`` gives the same split everywhere."""
    counts = np.bincount(labels, minlength=len(classes))
    if (counts < 2).any():
        rare = [classes[i] for i in np.flatnonzero(counts < 2)]
        raise DataError(f"dataset {name!r}: classes {rare} have fewer than 2 images; need 2+")
    idx = np.arange(len(labels))
    train_idx, val_idx = train_test_split(
        idx, test_size=options.val_fraction, stratify=labels, random_state=options.split_seed
    )
    y = torch.as_tensor(labels, dtype=torch.int64)
    return ImageData(
        name=name,
        classes=classes,
        train_x=images[train_idx],
        train_y=y[train_idx],
        val_x=images[val_idx],
        val_y=y[val_idx],
    )


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    if size <= 0 or images.shape[-1] == size:
        return images
    resized = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


# --- embedded data built from scikit-learn's digits (no download) ---------------------------


def _digits_arrays() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # 8x8 values in 0..16 become 0..255 grey levels, one channel.
    images = torch.as_tensor(np.round(digits.images * (255 / 16)), dtype=torch.uint8)
    return images.unsqueeze(1), digits.target.astype(np.int64)


DIGIT_CLASSES = tuple(str(d) for d in range(10))


@register_dataset("digits", description="scikit-learn digits, 10 balanced classes, 8x8 (embedded)")
def _load_digits(_: str, options: DataOptions) -> ImageData:
    images, labels = _digits_arrays()
    return split_stratified(
        resize_uint8(images, options.image_size), labels, DIGIT_CLASSES, options, "digits"
    )


def long_tail_counts(counts: np.ndarray, ratio: float = 0.1) -> np.ndarray:
    """Per-class counts decaying exponentially so the last class has ``ratio`` of the first."""
    k = len(counts)
    keep = counts * ratio ** (np.arange(k) / (k - 1))
    return np.maximum(np.floor(keep).astype(int), 4)


@register_dataset(
    "digits-lt",
    description="digits, long-tailed (class 9 is 10x rarer than class 0), deterministic",
)
def _load_digits_long_tail(_: str, options: DataOptions) -> ImageData:
    images, labels = _digits_arrays()
    keep_counts = long_tail_counts(np.bincount(labels))
    # The first n images of each class, in scikit-learn's order: no randomness at all.
    keep = np.concatenate([np.flatnonzero(labels == c)[:n] for c, n in enumerate(keep_counts)])
    keep.sort()
    return split_stratified(
        resize_uint8(images[keep], options.image_size),
        labels[keep],
        DIGIT_CLASSES,
        options,
        "digits-lt",
    )


# --- images on disk ----------------------------------------------------------------------


def read_image(path: Path, size: int, channels: int = 3) -> torch.Tensor:
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB" if channels == 3 else "L").resize((size, size), Image.BILINEAR)
        array = np.asarray(img, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


@register_dataset(
    "imagefolder",
    description="one sub-folder per class of image files, e.g. imagefolder:/data/xray",
    takes_argument=True,
)
def _load_image_folder(arg: str, options: DataOptions) -> ImageData:
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and _image_files(d))
    if not class_dirs:
        raise DataError(
            f"no images in {str(root)!r}: expected one sub-folder per class holding image files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if len(class_dirs) < 2:
        raise DataError(
            f"only one class folder {class_dirs[0].name!r} in {str(root)!r}: "
            "a classifier needs at least two"
        )
    size = options.image_size or DEFAULT_FILE_IMAGE_SIZE
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        for path in _image_files(class_dir):
            images.append(read_image(path, size))
            labels.append(label)
    classes = tuple(d.name for d in class_dirs)
    return split_stratified(
        torch.stack(images), np.asarray(labels), classes, options, f"imagefolder:{root}"
    )


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
