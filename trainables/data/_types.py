"""The dataset type every source returns: a uint8 image bundle split three ways, in memory.

Images are kept as uint8 tensors of one size so a whole dataset is a few arrays. Views of
the image cache's file (``Backing``: image folders and manifests) pickle as the file's path
and rows, and the receiver, on the same node, maps the file; other images travel as arrays,
once per node through Ray's object store, and every trial on the node shares them. Resizing
to the backbone's input and normalising happen on the device, inside the model's
preprocessing.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from trainables.errors import UserError
from trainables.task import Task, task_of

DEFAULT_FILE_IMAGE_SIZE = 224


class DataError(UserError):
    """Bad dataset name, path or content; the message is one line meant for the user."""


SPLITS = ("train", "val", "test")
TENSOR_FIELDS = tuple(f"{split}_{part}" for split in SPLITS for part in ("x", "y"))


def this_node() -> str:
    """This machine's boot: a cache path means the same file only on the same one."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return f"{socket.gethostname()}/{boot}"


@dataclass(frozen=True)
class Backing:
    """The image cache file (``trainables.data._image_cache``) whose rows an ``ImageData``'s
    images are views of: a process on the same node maps it instead of receiving a copy."""

    path: str
    node: str
    array: np.ndarray = field(repr=False, compare=False)  # the map, (N, C, H, W) uint8

    def rows_of(self, tensor: torch.Tensor) -> tuple[int, int] | None:
        """The rows of the map ``tensor`` is exactly, or None (a copy, a selection, a
        transposed view: those travel as arrays)."""
        a = self.array
        row = a[0].nbytes if len(a) else 0
        offset = tensor.data_ptr() - a.ctypes.data
        if not row or tensor.dtype != torch.uint8 or tuple(tensor.shape[1:]) != a.shape[1:]:
            return None
        if not tensor.is_contiguous() or offset < 0 or offset % row:
            return None
        start = offset // row
        return (start, start + len(tensor)) if start + len(tensor) <= len(a) else None


@dataclass(frozen=True)
class MappedRows:
    """Rows of a cache file, pickled in place of their pixels."""

    path: str
    node: str
    start: int
    stop: int


@dataclass(frozen=True)
class ImageData:
    """A dataset split three ways, in memory. ``*_y`` are class indices, or 0/1 rows when
    multi-label. Test images are for the end of a confirmation run only: nothing that picks
    a config or an epoch reads them. ``split_seed`` is the seed of the train/val split.
    ``notes``: what loading it has to tell the user (files skipped), one line each.

    Pickled, tensors that are views of the image cache's file (``backing``) travel as its path
    and rows, and the receiver maps the file: it must be on the same node
    (``without_backing`` for others). The other tensors travel as numpy arrays: Ray's object
    store hands numpy arrays to every process on a node as views of one shared buffer, where
    a pickled tensor would be copied into each trial. Those views (and the cache's map) are
    meant read-only (numpy marks them so, torch cannot): a write in place into an unpickled
    ``ImageData``'s tensors would change the data of every trial on the node. Indexing with a
    list or mask copies; slicing does not.
    """

    name: str
    classes: tuple[str, ...]
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64, or (N, K) float32 when multilabel
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor | None = None  # None: an empty test split (data built by hand)
    test_y: torch.Tensor | None = None
    multilabel: bool = False
    split_seed: int = 0
    notes: tuple[str, ...] = ()
    backing: Backing | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.test_x is None or self.test_y is None:
            object.__setattr__(self, "test_x", self.train_x[:0])
            object.__setattr__(self, "test_y", self.train_y[:0])

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
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {SPLITS}")
        return self.task.class_counts(getattr(self, f"{split}_y").numpy(), self.num_classes)

    @property
    def task(self) -> Task:
        """Single- or multi-label: what the loss, metrics and predictions follow."""
        return task_of(self.multilabel)

    def without_backing(self) -> ImageData:
        """The same data, pickled as arrays: for processes on other nodes."""
        return dataclasses.replace(self, backing=None)

    def __reduce__(self) -> tuple[Callable[..., ImageData], tuple]:
        # Contiguous arrays go out of band under pickle protocol 5 (Ray's): zero-copy on get.
        # Views of a cache file on disk go as its path and rows: the receiver maps the file.
        arrays = {f: self._pickled(f) for f in TENSOR_FIELDS}
        header = (self.name, self.classes, self.multilabel, self.split_seed, self.notes)
        return _rebuild_image_data, (*header, arrays)

    def _pickled(self, name: str) -> np.ndarray | MappedRows:
        tensor = getattr(self, name)
        backing = self.backing
        rows = backing.rows_of(tensor) if backing is not None else None
        if backing is None or rows is None or not os.path.exists(backing.path):
            return np.ascontiguousarray(tensor.numpy())
        return MappedRows(backing.path, backing.node, *rows)


def _rebuild_image_data(
    name: str,
    classes: tuple[str, ...],
    multilabel: bool,
    split_seed: int,
    notes: tuple[str, ...],
    arrays: dict[str, np.ndarray | MappedRows],
) -> ImageData:
    backing = _backing([a for a in arrays.values() if isinstance(a, MappedRows)], name)
    if backing is not None:
        arrays = {
            f: backing.array[a.start : a.stop] if isinstance(a, MappedRows) else a
            for f, a in arrays.items()
        }
    return ImageData(
        name=name,
        classes=classes,
        multilabel=multilabel,
        split_seed=split_seed,
        notes=notes,
        backing=backing,
        **{f: read_only_tensor(a) for f, a in arrays.items()},
    )


def read_only_tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        # The object store's buffers and the cache's maps are read-only and torch has no
        # read-only tensors; ImageData's docstring is the contract that nothing writes into them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _backing(rows: list[MappedRows], name: str) -> Backing | None:
    """The cache file ``rows`` are of, mapped read-only here; a DataError when it is not on
    this node (ship the data with ``ImageData.without_backing`` to other nodes)."""
    if not rows:
        return None
    from trainables.feature_files import map_file

    path, node = rows[0].path, rows[0].node
    array = map_file(Path(path)) if node == this_node() else None
    if array is None:
        raise DataError(
            f"dataset {name!r}: its image cache file {path} is not on this node ({this_node()}); "
            "data for other nodes must be sent as arrays (ImageData.without_backing)"
        )
    return Backing(path, node, array)


@dataclass(frozen=True)
class DataOptions:
    split_seed: int = 0  # fixes the test split and the train/val split
    val_fraction: float = 0.25  # of the images outside the test split
    test_fraction: float = 0.2  # carved first; torchvision's datasets have their own
    image_size: int = 0  # 0: the dataset's own size (files: 224)
    data_root: str = "data"
    download: bool = False


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    if size <= 0 or images.shape[-1] == size:
        return images
    resized = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round().clamp(0, 255).to(torch.uint8)
