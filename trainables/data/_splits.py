"""Stratified train/val/test splits, and the resplits of ``--confirm-splits``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trainables.data._types import SPLITS, DataError, DataOptions, ImageData
from trainables.stratified import train_test_rows

TOO_SMALL = "is too small for stratified train, val and test splits"
# Given the rows about to be split in two, how many are carved out and which two parts they
# make: what to stratify on (None: a plain seeded split). Raises DataError when it cannot be.
Strata = Callable[[np.ndarray, int, str], "np.ndarray | None"]


@dataclass(frozen=True)
class SplitIndex:
    """Row numbers of each split."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


def split_index(
    n: int,
    strata: Strata,
    options: DataOptions,
    name: str,
    given: np.ndarray | None = None,
    carve_test: bool = True,
) -> SplitIndex:
    """The rows of each split. Test is carved first (``test_fraction`` of the rows), then val
    (``val_fraction`` of what is left), each stratified and decided by ``split_seed`` alone,
    so the test split never depends on the val fraction. Rows ``given`` a split (a manifest's
    ``split`` column) stay in it, and a split some rows are given is not carved."""
    given = np.full(n, "train") if given is None else np.asarray(given)
    rows = np.arange(n)
    pool, val, test = (rows[given == split] for split in SPLITS)
    if carve_test and not len(test):
        size = math.ceil(options.test_fraction * len(pool))
        pool, test = _carve(pool, size, options.split_seed, strata, "train+val and test", name)
    if not len(val):
        size = math.ceil(options.val_fraction * len(pool))
        pool, val = _carve(pool, size, options.split_seed, strata, "train and val", name)
    return SplitIndex(pool, val, test)


def _carve(
    pool: np.ndarray, size: int, seed: int, strata: Strata, parts: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """``pool`` split in two, ``size`` rows carved out; as scikit-learn's ``train_test_split``."""
    if not 0 < size < len(pool):
        raise DataError(
            f"dataset {name!r} {TOO_SMALL}: {len(pool)} images cannot be split into {parts}"
        )
    kept, carved = train_test_rows(len(pool), size, seed, strata(pool, size, parts))
    return pool[kept], pool[carved]


def label_strata(labels: np.ndarray, classes: tuple[str, ...], name: str) -> Strata:
    """Stratify on the class; refuse what cannot give every class a place on both sides."""

    def strata(pool: np.ndarray, size: int, parts: str) -> np.ndarray:
        counts = np.bincount(labels[pool], minlength=len(classes))
        if (counts < 2).any():
            raise DataError(
                f"dataset {name!r} {TOO_SMALL}: {_named_counts(counts, classes, counts < 2)} "
                f"to split into {parts}; each class needs 2 or more there"
            )
        if min(size, len(pool) - size) < len(classes):
            rarest = np.arange(len(classes)) == counts.argmin()
            raise DataError(
                f"dataset {name!r} {TOO_SMALL}: {len(pool)} images split "
                f"{len(pool) - size}/{size} ({parts}) cannot hold all {len(classes)} classes "
                f"on both sides ({_named_counts(counts, classes, rarest)}); need more images "
                "per class"
            )
        return labels[pool]

    return strata


def first_label_strata(targets: np.ndarray) -> Strata:
    """Multi-label rows stratified on their first label (rows without labels form one more
    group) when every group has 2+ rows and fits both sides; otherwise a plain split.
    scikit-learn has no multi-label stratification."""
    targets = np.asarray(targets, dtype=bool)
    first = np.where(targets.any(axis=1), targets.argmax(axis=1), targets.shape[1])

    def strata(pool: np.ndarray, size: int, parts: str) -> np.ndarray | None:
        groups = np.bincount(first[pool])
        groups = groups[groups > 0]
        if groups.min() < 2 or min(size, len(pool) - size) < len(groups):
            return None
        return first[pool]

    return strata


def _named_counts(counts: np.ndarray, classes: tuple[str, ...], which: np.ndarray) -> str:
    named = [f"class {classes[c]!r} has {counts[c]}" for c in np.flatnonzero(which)[:5]]
    more = int(which.sum()) - len(named)
    return ", ".join(named) + (f" (and {more} more classes)" if more > 0 else "")


def check_every_class(
    labels: np.ndarray, index: dict[str, np.ndarray], classes: tuple[str, ...], name: str
) -> None:
    """Stratification rounds: a rare class can still miss a split. Name the first that does."""
    total = np.bincount(labels, minlength=len(classes))
    for split, rows in index.items():
        missing = np.flatnonzero(np.bincount(labels[rows], minlength=len(classes)) == 0)
        if len(missing):
            c = missing[0]
            raise DataError(
                f"dataset {name!r} {TOO_SMALL}: class {classes[c]!r} ({total[c]} images) gets "
                f"no {split} image; need more images of it"
            )


def split_stratified(
    images: torch.Tensor,
    labels: np.ndarray,
    classes: tuple[str, ...],
    options: DataOptions,
    name: str,
    given: np.ndarray | None = None,
) -> ImageData:
    """Deterministic stratified split into train, val and test: the same ``split_seed`` gives
    the same splits everywhere. ``given``: a split name per row that keeps it there."""
    index = stratified_index(labels, classes, options, name, given)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return _split_by_index(name, classes, images, y, index, options.split_seed)


def stratified_index(
    labels: np.ndarray,
    classes: tuple[str, ...],
    options: DataOptions,
    name: str,
    given: np.ndarray | None = None,
) -> SplitIndex:
    """The rows of ``split_stratified``'s splits, for data not yet in memory."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    if (counts < len(SPLITS)).any():
        raise DataError(
            f"dataset {name!r} {TOO_SMALL}: {_named_counts(counts, classes, counts < 3)}; "
            "each class needs an image in each split (3 or more)"
        )
    index = split_index(len(labels), label_strata(labels, classes, name), options, name, given)
    check_every_class(labels, index.as_dict(), classes, name)
    return index


def split_multilabel(
    images: torch.Tensor,
    targets: np.ndarray,
    classes: tuple[str, ...],
    options: DataOptions,
    name: str,
    given: np.ndarray | None = None,
) -> ImageData:
    """Deterministic split of multi-label data (``targets``: (N, K) 0/1 rows) into train, val
    and test, stratified as ``first_label_strata`` can; ``split_seed`` alone decides it."""
    index = multilabel_index(targets, options, name, given)
    y = torch.as_tensor(np.asarray(targets, dtype=bool), dtype=torch.float32)
    return _split_by_index(name, classes, images, y, index, options.split_seed, multilabel=True)


def multilabel_index(
    targets: np.ndarray, options: DataOptions, name: str, given: np.ndarray | None = None
) -> SplitIndex:
    """The rows of ``split_multilabel``'s splits, for data not yet in memory."""
    return split_index(len(targets), first_label_strata(targets), options, name, given)


def split_official_test(
    images: torch.Tensor,
    labels: np.ndarray,
    test: tuple[torch.Tensor, np.ndarray],
    classes: tuple[str, ...],
    options: DataOptions,
    name: str,
) -> ImageData:
    """A dataset that comes with its own test split: only train and val are carved."""
    labels = np.asarray(labels, dtype=np.int64)
    strata = label_strata(labels, classes, name)
    index = split_index(len(labels), strata, options, name, carve_test=False)
    check_every_class(labels, {"train": index.train, "val": index.val}, classes, name)
    data = _split_by_index(
        name, classes, images, torch.as_tensor(labels), index, options.split_seed
    )
    test_y = torch.as_tensor(np.asarray(test[1], dtype=np.int64))
    return dataclasses.replace(data, test_x=test[0], test_y=test_y)


def _split_by_index(
    name: str,
    classes: tuple[str, ...],
    images: torch.Tensor,
    y: torch.Tensor,
    index: SplitIndex,
    split_seed: int,
    multilabel: bool = False,
) -> ImageData:
    return ImageData(
        name=name,
        classes=classes,
        train_x=images[index.train],
        train_y=y[index.train],
        val_x=images[index.val],
        val_y=y[index.val],
        test_x=images[index.test],
        test_y=y[index.test],
        multilabel=multilabel,
        split_seed=split_seed,
    )


def resplit(data: ImageData, split_seed: int) -> ImageData:
    """``data`` with its train and val images pooled and split again by ``split_seed``,
    stratified, keeping both sizes; the test split stays as it is, untouched. ``data``'s own
    split seed gives ``data`` back. Deterministic: every process gets the same split."""
    if split_seed == data.split_seed:
        return data
    train, val = resplit_index(data, split_seed)
    x = torch.cat([data.train_x, data.val_x])
    y = torch.cat([data.train_y, data.val_y])
    return dataclasses.replace(
        data,
        train_x=x[train],
        train_y=y[train],
        val_x=x[val],
        val_y=y[val],
        split_seed=split_seed,
    )


def resplit_index(data: ImageData, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the pooled images (train, then val) that ``resplit`` puts in train and in val;
    a DataError when some class cannot be in both."""
    y = torch.cat([data.train_y, data.val_y]).numpy()
    name = f"{data.name} (train/val split seed {split_seed})"
    strata = first_label_strata(y) if data.multilabel else label_strata(y, data.classes, name)
    pool = np.arange(len(y))
    train, val = _carve(pool, len(data.val_y), split_seed, strata, "train and val", name)
    if not data.multilabel:
        check_every_class(y, {"train": train, "val": val}, data.classes, name)
    return train, val


def split_sizes(n: int, val_fraction: float, test_fraction: float = 0.0) -> tuple[int, int, int]:
    """Train, val and test sizes of ``n`` images (test carved first, then val from the rest),
    rounded as scikit-learn's ``train_test_split`` does."""
    n_test = math.ceil(test_fraction * n)
    n_val = math.ceil(val_fraction * (n - n_test))
    return n - n_test - n_val, n_val, n_test
