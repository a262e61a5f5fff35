"""Datasets: a registry of sources that all return the same in-memory uint8 image bundle.

- ``_types``: the bundle (``ImageData``), the loading options and the data error;
- ``_registry``: ``--dataset NAME[:ARG]`` looked up and loaded;
- ``_splits``: stratified train/val/test splits and resplits;
- one module per source: ``_digits`` (embedded, built from scikit-learn's digits), ``_files``
  (an image folder, a CSV manifest), ``_torchvision`` (torchvision's datasets);
- ``image_files``: which files are images, how one is read, what 'unreadable' means;
- ``_decode``: many files decoded in parallel into rows of one shared array;
- ``_image_cache``: decoded image files kept in a memory-mapped file, reused by later loads.

A new source is one module that calls ``register_dataset``, imported below.
"""

from trainables.data import _digits, _files, _torchvision  # noqa: F401  (they register)
from trainables.data._digits import _digits_arrays, digits_multilabel_arrays, long_tail_counts
from trainables.data._files import read_image, read_manifest
from trainables.data._registry import (
    DATASETS,
    DatasetEntry,
    Loader,
    accepted_datasets,
    limit_train,
    list_datasets,
    load_dataset,
    register_dataset,
    resolve_dataset,
)
from trainables.data._splits import (
    check_every_class,
    resplit,
    resplit_index,
    split_index,
    split_multilabel,
    split_official_test,
    split_sizes,
    split_stratified,
)
from trainables.data._types import (
    DEFAULT_FILE_IMAGE_SIZE,
    SPLITS,
    TENSOR_FIELDS,
    DataError,
    DataOptions,
    ImageData,
    resize_uint8,
)

__all__ = [
    "DATASETS",
    "DEFAULT_FILE_IMAGE_SIZE",
    "SPLITS",
    "TENSOR_FIELDS",
    "DataError",
    "DataOptions",
    "DatasetEntry",
    "ImageData",
    "Loader",
    "_digits_arrays",
    "accepted_datasets",
    "check_every_class",
    "digits_multilabel_arrays",
    "limit_train",
    "list_datasets",
    "load_dataset",
    "long_tail_counts",
    "read_image",
    "read_manifest",
    "register_dataset",
    "resize_uint8",
    "resolve_dataset",
    "resplit",
    "resplit_index",
    "split_index",
    "split_multilabel",
    "split_official_test",
    "split_sizes",
    "split_stratified",
]
