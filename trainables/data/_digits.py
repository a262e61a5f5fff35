"""Embedded data built from scikit-learn's digits (no download): ``digits``, the long-tailed
``digits-lt`` and the multi-label ``digits-multilabel``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainables.data._registry import register_dataset
from trainables.data._splits import split_multilabel, split_stratified
from trainables.data._types import DataOptions, ImageData, resize_uint8


def _digits_arrays() -> tuple[torch.Tensor, np.ndarray]:
    flat, target = _digits_table()
    # 8x8 values in 0..16 become 0..255 grey levels, one channel.
    images = torch.as_tensor(np.round(flat.reshape(-1, 8, 8) * (255 / 16)), dtype=torch.uint8)
    return images.unsqueeze(1), target.astype(np.int64)


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """The digits' 64 pixel values per image and their labels. Read from the file scikit-learn
    ships, as its ``load_digits`` reads it, without importing scikit-learn: that import was
    0.8 s of a sweep's start, spent before anything else could begin."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            return table[:, :-1], table[:, -1].astype(int)
    from sklearn.datasets import load_digits  # a layout without that file

    digits = load_digits()
    return digits.data, digits.target


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


DIGITS_MULTILABEL_COUNT = 1500


def digits_multilabel_arrays() -> tuple[torch.Tensor, np.ndarray]:
    """Images of 16x16: a 2x2 grid of 8x8 cells holding 2 or 3 scikit-learn digits (alternately),
    the other cells blank; the 0/1 target row (N, 10) marks the set of digits shown.

    Which digits and which cells come from ``numpy.random.default_rng(0)``: always the same data.
    """
    tiles, digit = _digits_arrays()
    n = DIGITS_MULTILABEL_COUNT
    rng = np.random.default_rng(0)
    shown = 2 + np.arange(n) % 2  # tiles per image
    sources = rng.integers(0, len(tiles), size=(n, 3))
    cells = np.argsort(rng.random((n, 4)), axis=1)[:, :3]  # distinct cells, in random order
    grid = torch.zeros((n, 4, 8, 8), dtype=torch.uint8)
    targets = np.zeros((n, 10), dtype=np.float32)
    for j in range(3):
        rows = np.flatnonzero(shown > j)
        grid[rows, cells[rows, j]] = tiles[sources[rows, j], 0]
        targets[rows, digit[sources[rows, j]]] = 1
    # cells 0 1 / 2 3: (n, row, col, 8, 8) -> (n, row, 8, col, 8) -> (n, 16, 16)
    images = grid.view(n, 2, 2, 8, 8).permute(0, 1, 3, 2, 4).reshape(n, 1, 16, 16)
    return images, targets


@register_dataset(
    "digits-multilabel",
    description="multi-label: 1500 16x16 grids of 2-3 digits, labelled with the set shown "
    "(embedded, deterministic)",
)
def _load_digits_multilabel(_: str, options: DataOptions) -> ImageData:
    images, targets = digits_multilabel_arrays()
    return split_multilabel(
        resize_uint8(images, options.image_size),
        targets,
        DIGIT_CLASSES,
        options,
        "digits-multilabel",
    )
