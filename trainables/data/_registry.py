"""The registry of dataset sources: ``--dataset NAME`` or ``NAME:ARG``, looked up and loaded."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from trainables.data._types import SPLITS, DataError, DataOptions, ImageData
from trainables.registry import Registry
from trainables.stratified import train_test_rows

Loader = Callable[[str, DataOptions], ImageData]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Loader
    description: str
    takes_argument: bool = False  # ``name:ARG`` (a path)


DATASETS: Registry[DatasetEntry] = Registry("dataset", DataError)


def register_dataset(
    name: str, *, description: str, takes_argument: bool = False
) -> Callable[[Loader], Loader]:
    return DATASETS.decorator(
        name, lambda loader: DatasetEntry(name, loader, description, takes_argument)
    )


def list_datasets() -> list[DatasetEntry]:
    return [DATASETS.get(name) for name in DATASETS.names()]


def accepted_datasets() -> str:
    return ", ".join(f"{e.name}:PATH" if e.takes_argument else e.name for e in list_datasets())


def resolve_dataset(spec: str) -> tuple[DatasetEntry, str]:
    """Split ``name`` or ``name:ARG`` and look the name up; raise DataError when unknown."""
    name, _, arg = spec.partition(":")
    if name not in DATASETS:
        raise DataError(DATASETS.unknown(spec, accepted_datasets()))
    entry = DATASETS.get(name)
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


def limit_train(data: ImageData, limit: int, seed: int = 0) -> ImageData:
    """At most ``limit`` training images, drawn stratified and deterministically: a quick
    smoke run of a whole sweep. Validation images are kept, so metrics stay comparable."""
    n = len(data.train_y)
    if limit <= 0 or limit >= n:
        return data
    labels = data.task.stratify_by(data.train_y.numpy())
    if labels is not None and (
        np.bincount(labels).min() < 2 or min(limit, n - limit) < data.num_classes
    ):
        labels = None  # too few to stratify; a plain seeded draw instead
    keep, _ = train_test_rows(n, n - limit, seed, labels)
    keep = np.sort(keep)
    return dataclasses.replace(data, train_x=data.train_x[keep], train_y=data.train_y[keep])


def _check_trainable(data: ImageData, spec: str) -> None:
    if data.num_classes < 2:
        raise DataError(
            f"dataset {spec!r} has a single class {list(data.classes)}: "
            "a classifier needs at least two"
        )
    empty = [split for split in SPLITS if len(getattr(data, f"{split}_y")) == 0]
    if empty:
        raise DataError(
            f"dataset {spec!r} is too small to split into train, val and test "
            f"({', '.join(empty)} would be empty)"
        )
