"""Datasets: a registry of loaders that all return the same in-memory, uint8 image bundle.

Images are kept as uint8 tensors of one size so a whole dataset is a few arrays: it travels
once per node through Ray's object store and every trial on the node shares it. Resizing to
the backbone's input and normalising happen on the device, inside the model's preprocessing.

Sources: scikit-learn's digits and variants built from them (embedded), torchvision's datasets
read from ``DataOptions.data_root``, a folder of class sub-folders, and a CSV manifest.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables import image_files
from trainables.errors import UserError
from trainables.image_files import IMAGE_SUFFIXES, UnreadableImage
from trainables.registry import Registry
from trainables.stratified import train_test_rows

DEFAULT_FILE_IMAGE_SIZE = 224


class DataError(UserError):
    """Bad dataset name, path or content; the message is one line meant for the user."""


SPLITS = ("train", "val", "test")
TENSOR_FIELDS = tuple(f"{split}_{part}" for split in SPLITS for part in ("x", "y"))


@dataclass(frozen=True)
class ImageData:
    """A dataset split three ways, in memory. ``*_y`` are class indices, or 0/1 rows when
    multi-label. Test images are for the end of a confirmation run only: nothing that picks
    a config or an epoch reads them. ``split_seed`` is the seed of the train/val split.
    ``notes``: what loading it has to tell the user (files skipped), one line each.

    Pickled, the tensors travel as numpy arrays: Ray's object store hands numpy arrays to every
    process on a node as views of one shared buffer, where a pickled tensor would be copied into
    each trial. Those views are meant read-only (numpy marks them so, torch cannot): a write in
    place into an unpickled ``ImageData``'s tensors would change the data of every trial on the
    node. Indexing with a list or mask copies; slicing does not.
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
        y = getattr(self, f"{split}_y").numpy()
        if self.multilabel:
            return y.sum(axis=0).astype(int)
        return np.bincount(y, minlength=self.num_classes)

    def __reduce__(self) -> tuple[Callable[..., ImageData], tuple]:
        # Contiguous arrays go out of band under pickle protocol 5 (Ray's): zero-copy on get.
        arrays = {f: np.ascontiguousarray(getattr(self, f).numpy()) for f in TENSOR_FIELDS}
        header = (self.name, self.classes, self.multilabel, self.split_seed, self.notes)
        return _rebuild_image_data, (*header, arrays)


def _rebuild_image_data(
    name: str,
    classes: tuple[str, ...],
    multilabel: bool,
    split_seed: int,
    notes: tuple[str, ...],
    arrays: dict[str, np.ndarray],
) -> ImageData:
    with warnings.catch_warnings():
        # The object store's buffers are read-only and torch has no read-only tensors; the
        # class docstring is the contract that nothing writes into them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {f: torch.from_numpy(a) for f, a in arrays.items()}
    return ImageData(
        name=name,
        classes=classes,
        multilabel=multilabel,
        split_seed=split_seed,
        notes=notes,
        **tensors,
    )


@dataclass(frozen=True)
class DataOptions:
    split_seed: int = 0  # fixes the test split and the train/val split
    val_fraction: float = 0.25  # of the images outside the test split
    test_fraction: float = 0.2  # carved first; torchvision's datasets have their own
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
    labels = None if data.multilabel else data.train_y.numpy()
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


# --- splits --------------------------------------------------------------------------------

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
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    if (counts < len(SPLITS)).any():
        raise DataError(
            f"dataset {name!r} {TOO_SMALL}: {_named_counts(counts, classes, counts < 3)}; "
            "each class needs an image in each split (3 or more)"
        )
    index = split_index(len(labels), label_strata(labels, classes, name), options, name, given)
    check_every_class(labels, index.as_dict(), classes, name)
    y = torch.as_tensor(labels, dtype=torch.int64)
    return _split_by_index(name, classes, images, y, index, options.split_seed)


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
    index = split_index(len(targets), first_label_strata(targets), options, name, given)
    y = torch.as_tensor(np.asarray(targets, dtype=bool), dtype=torch.float32)
    return _split_by_index(name, classes, images, y, index, options.split_seed, multilabel=True)


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


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    if size <= 0 or images.shape[-1] == size:
        return images
    resized = torch.nn.functional.interpolate(
        images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return resized.round().clamp(0, 255).to(torch.uint8)


# --- embedded data built from scikit-learn's digits (no download) ---------------------------


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


# --- images on disk ----------------------------------------------------------------------


def read_image(path: Path, size: int, channels: int = 3) -> torch.Tensor:
    """One file as C x H x W uint8; ``image_files.UnreadableImage`` when Pillow cannot read it."""
    return torch.from_numpy(image_files.read_image(path, size, "RGB" if channels == 3 else "L"))


@register_dataset(
    "imagefolder",
    description="one sub-folder per class of image files, e.g. imagefolder:/data/xray "
    "(unreadable files are skipped and counted, hidden files ignored)",
    takes_argument=True,
)
def _load_image_folder(arg: str, options: DataOptions) -> ImageData:
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder {str(root)!r} does not exist or is not a folder")
    folders = {
        d.name: files
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (files := image_files.image_files(d))
    }
    if not folders:
        raise DataError(
            f"no images in {str(root)!r}: expected one sub-folder per class holding image files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if len(folders) < 2:
        raise DataError(
            f"only one class folder {next(iter(folders))!r} in {str(root)!r}: "
            "a classifier needs at least two"
        )
    paths = [path for files in folders.values() for path in files]
    labels = np.repeat(np.arange(len(folders)), [len(files) for files in folders.values()])
    name = f"imagefolder:{root}"
    batch = _read_files(paths, labels, tuple(folders), options, f"{name}: class folder", root)
    data = split_stratified(
        torch.from_numpy(batch.images), labels[batch.read], tuple(folders), options, name
    )
    return _with_skipped(data, batch.skipped, len(paths), root)


def _read_files(
    paths: list[Path],
    labels: np.ndarray,
    classes: tuple[str, ...],
    options: DataOptions,
    what: str,
    root: Path,
) -> image_files.ImageBatch:
    """The readable files of ``paths``. A class none of whose files can be read (``labels``:
    a class index per file, or 0/1 rows when multi-label) is refused: ``what`` names it, and
    its files are named relative to ``root``."""
    batch = image_files.read_images(paths, options.image_size or DEFAULT_FILE_IMAGE_SIZE)
    unread = (_per_class(labels, classes) > 0) & (_per_class(labels[batch.read], classes) == 0)
    if unread.any():
        c = int(np.flatnonzero(unread)[0])
        rows = np.setdiff1d(np.arange(len(paths)), batch.read)  # the skipped files, in order
        of_c = labels[rows, c] > 0 if labels.ndim == 2 else labels[rows] == c
        theirs = [err for err, mine in zip(batch.skipped, of_c, strict=True) if mine]
        raise DataError(
            f"{what} {classes[c]!r} has no readable image ({len(theirs)} unreadable: "
            f"{image_files.named(theirs, root)})"
        )
    return batch


def _per_class(labels: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    """Images per class, of class indices or of 0/1 rows."""
    return labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=len(classes))


def _with_skipped(
    data: ImageData, skipped: tuple[UnreadableImage, ...], total: int, root: Path
) -> ImageData:
    """``data`` with a note of the files skipped, if any."""
    if not skipped:
        return data
    line = f"{data.name}: {image_files.skipped_line(skipped, total, root)}"
    return dataclasses.replace(data, notes=(*data.notes, line))


# --- a CSV manifest of image files ---------------------------------------------------------

CSV_ACCEPTED = (
    "path,label (single-label) or path,labels (multi-label, labels joined by ';'), and "
    "optionally split (train, val or test)"
)
SPLIT_COLUMN = "split"


@dataclass(frozen=True)
class ManifestRow:
    line: int  # in the CSV file; the header is line 1
    path: Path
    labels: tuple[str, ...]
    split: str | None = None  # the row's ``split`` cell, lower case; None without that column


@register_dataset(
    "csv",
    description="a CSV manifest with header path,label or path,labels (multi-label, ';' between "
    "labels) and optionally split (train/val/test: those rows stay in that split); paths "
    "relative to the CSV's folder, e.g. csv:/data/train.csv (unreadable files are skipped and "
    "counted)",
    takes_argument=True,
)
def _load_csv(arg: str, options: DataOptions) -> ImageData:
    manifest = Path(arg).expanduser()
    rows, multilabel = read_manifest(manifest)
    where = f"manifest {str(manifest)!r}"
    missing = [row for row in rows if not row.path.is_file()]
    if missing:
        first = ", ".join(f"{str(row.path)!r} (line {row.line})" for row in missing[:3])
        raise DataError(
            f"{where}: {len(missing)} of {len(rows)} image files not found, first {first}; "
            "relative paths are read from the manifest's folder"
        )
    classes = tuple(sorted({label for row in rows for label in row.labels}, key=_label_order))
    if len(classes) < 2:
        raise DataError(
            f"{where} has a single class {list(classes)}: a classifier needs at least two"
        )
    labels = _manifest_labels(rows, classes, multilabel)
    paths = [row.path for row in rows]
    batch = _read_files(paths, labels, classes, options, f"{where}: class", manifest.parent)
    images, labels = torch.from_numpy(batch.images), labels[batch.read]
    name = f"csv:{manifest}"
    given = None if rows[0].split is None else np.asarray([row.split for row in rows])[batch.read]
    split = split_multilabel if multilabel else split_stratified
    data = split(images, labels, classes, options, name, given)
    return _with_skipped(data, batch.skipped, len(rows), manifest.parent)


def _manifest_labels(
    rows: list[ManifestRow], classes: tuple[str, ...], multilabel: bool
) -> np.ndarray:
    """A class index per row, or 0/1 rows (float32) when multi-label."""
    index = {label: i for i, label in enumerate(classes)}
    if not multilabel:
        return np.asarray([index[row.labels[0]] for row in rows], dtype=np.int64)
    targets = np.zeros((len(rows), len(classes)), dtype=np.float32)
    for i, row in enumerate(rows):
        targets[i, [index[label] for label in row.labels]] = 1
    return targets


def read_manifest(manifest: Path) -> tuple[list[ManifestRow], bool]:
    """Rows of a ``path,label`` or ``path,labels`` CSV (with an optional ``split`` column),
    and whether it is multi-label."""
    where = f"manifest {str(manifest)!r}"
    records = _read_csv_records(manifest, where)
    header = [column.lower() for column in records[0][1]]
    expected = (["label", "path"], ["labels", "path"])
    if sorted(c for c in header if c != SPLIT_COLUMN) not in expected or len(set(header)) < len(
        header
    ):
        raise DataError(f"{where} has columns {','.join(header)}; accepted: {CSV_ACCEPTED}")
    if len(records) == 1:
        raise DataError(f"{where} has a header but no rows; accepted: one row per image")
    multilabel = "labels" in header
    rows = [_manifest_row(manifest, where, header, line, r) for line, r in records[1:]]
    _check_split_values(rows, where)
    return rows, multilabel


def _read_csv_records(manifest: Path, where: str) -> list[tuple[int, list[str]]]:
    if not manifest.is_file():
        raise DataError(f"{where} does not exist or is not a file; accepted: a CSV file")
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            records = [(reader.line_num, [cell.strip() for cell in r]) for r in reader]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{where} is not a readable UTF-8 CSV file ({err})") from None
    records = [(line, record) for line, record in records if any(record)]  # no blank lines
    if not records:
        raise DataError(f"{where} is empty; accepted: a header {CSV_ACCEPTED}, one row per image")
    return records


def _manifest_row(
    manifest: Path, where: str, header: list[str], line: int, record: list[str]
) -> ManifestRow:
    if len(record) != len(header):
        raise DataError(
            f"{where} line {line} has {len(record)} fields; the header has {len(header)}"
        )
    cells = dict(zip(header, record, strict=True))
    if not cells["path"]:
        raise DataError(f"{where} line {line} has an empty path")
    cell = cells.get("labels", cells.get("label", ""))
    labels = tuple(dict.fromkeys(p.strip() for p in cell.split(";") if p.strip()))
    if "label" in cells and (not cell or ";" in cell):
        raise DataError(
            f"{where} line {line} has label {cell!r}; accepted: one label per row "
            "(name the column 'labels' for multi-label rows joined by ';')"
        )
    path = Path(cells["path"]).expanduser()
    path = path if path.is_absolute() else manifest.parent / path
    split = cells.get(SPLIT_COLUMN)
    return ManifestRow(line, path, labels, None if split is None else split.lower())


def _check_split_values(rows: list[ManifestRow], where: str) -> None:
    unknown = [row for row in rows if row.split is not None and row.split not in SPLITS]
    if unknown:
        values = ", ".join(repr(v) for v in dict.fromkeys(row.split for row in unknown))
        raise DataError(
            f"{where} has {SPLIT_COLUMN} values {values} (first on line {unknown[0].line}); "
            f"accepted: {', '.join(SPLITS)}"
        )


def _label_order(label: str) -> tuple[int, int | str]:
    """Whole numbers first, in numeric order (2 before 10), then names in alphabetical order."""
    return (0, int(label)) if label.isdigit() else (1, label)


# --- torchvision's datasets, read from DataOptions.data_root -------------------------------


@dataclass(frozen=True)
class TorchvisionSource:
    """One of torchvision's datasets: its class and where under ``data_root`` its files go."""

    class_name: str  # in torchvision.datasets
    layout: str  # "idx" (the MNIST family), "cifar" or "svhn": how torchvision reads the files
    folder: str  # the files' folder, relative to data_root
    about: str
    root: str = ""  # the root handed to torchvision, relative to data_root

    def description(self) -> str:
        return (
            f"{self.about} (torchvision; files in DATA_ROOT/{self.folder}, --download fetches "
            "them); its train split is split stratified into train/val by the seed, its test "
            "split is the test split; native size"
        )


TORCHVISION_SOURCES = {
    "mnist": TorchvisionSource("MNIST", "idx", "MNIST/raw", "MNIST digits, 10 classes, 28x28"),
    "fashionmnist": TorchvisionSource(
        "FashionMNIST", "idx", "FashionMNIST/raw", "Fashion-MNIST clothes, 10 classes, 28x28"
    ),
    "kmnist": TorchvisionSource(
        "KMNIST", "idx", "KMNIST/raw", "Kuzushiji-MNIST characters, 10 classes, 28x28"
    ),
    "cifar10": TorchvisionSource(
        "CIFAR10", "cifar", "cifar-10-batches-py", "CIFAR-10, 10 classes, 32x32 RGB"
    ),
    "cifar100": TorchvisionSource(
        "CIFAR100", "cifar", "cifar-100-python", "CIFAR-100, 100 fine classes, 32x32 RGB"
    ),
    # SVHN reads its .mat files straight from its root: give it a folder of its own.
    "svhn": TorchvisionSource(
        "SVHN", "svhn", "svhn", "SVHN house-number digits, 10 classes, 32x32 RGB", root="svhn"
    ),
}


def _torchvision_loader(name: str, source: TorchvisionSource) -> Loader:
    def load(_: str, options: DataOptions) -> ImageData:
        # Always the native size, whatever options.image_size says: the model resizes on the
        # device, and 50,000 CIFAR images at 224x224 would not fit in Ray's object store.
        images, labels, classes = read_torchvision(name, source, options, train=True)
        test_images, test_labels, _ = read_torchvision(name, source, options, train=False)
        if classes is None:
            classes = tuple(str(i) for i in range(int(labels.max()) + 1))
        test = (test_images, test_labels)
        return split_official_test(images, labels, test, tuple(classes), options, name)

    return load


def _register_torchvision_datasets() -> None:
    for name, source in TORCHVISION_SOURCES.items():
        register_dataset(name, description=source.description())(_torchvision_loader(name, source))


_register_torchvision_datasets()


def read_torchvision(
    name: str, source: TorchvisionSource, options: DataOptions, *, train: bool = True
) -> tuple[torch.Tensor, np.ndarray, list[str] | None]:
    """The official train (or test) split through torchvision's own class: (N, C, H, W) uint8
    images taken from the class's ``data`` array in one copy (no per-image PIL conversion),
    labels and class names. CIFAR keeps (N, H, W, C) and SVHN a transposed view: both are
    made contiguous CHW."""
    import torchvision.datasets

    cls = getattr(torchvision.datasets, source.class_name)
    root = Path(options.data_root).expanduser() / source.root
    try:
        if source.layout == "svhn":
            split = "train" if train else "test"
            dataset = cls(root, split=split, download=options.download)
            images = torch.from_numpy(np.ascontiguousarray(dataset.data))  # (N, C, H, W)
            labels = dataset.labels
        else:
            dataset = cls(root, train=train, download=options.download)
            if source.layout == "idx":
                images = dataset.data.unsqueeze(1)  # a (N, H, W) uint8 tensor
            else:
                images = torch.from_numpy(np.ascontiguousarray(dataset.data.transpose(0, 3, 1, 2)))
            labels = dataset.targets
    except Exception as err:  # torchvision raises RuntimeError, URLError, pickle or scipy errors
        raise _torchvision_error(name, source, cls, root, options, err) from err
    classes = getattr(dataset, "classes", None)
    return images, np.asarray(labels, dtype=np.int64), list(classes) if classes else None


def torchvision_files(source: TorchvisionSource, cls: type) -> list[str]:
    """The files torchvision's class needs in ``source.folder`` to load without a download."""
    if source.layout == "idx":
        return [Path(url).stem for url, _ in cls.resources]  # unpacked: no .gz
    if source.layout == "cifar":
        return [file for file, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [cls.split_list[split][1] for split in ("train", "test")]


def _torchvision_error(
    name: str,
    source: TorchvisionSource,
    cls: type,
    root: Path,
    options: DataOptions,
    err: Exception,
) -> DataError:
    folder = Path(options.data_root).expanduser() / source.folder
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    files = torchvision_files(source, cls)
    if options.download:
        return DataError(
            f"dataset {name!r}: downloading into {str(root)!r} failed ({reason}); without "
            f"internet, put torchvision's files ({', '.join(files)}) in {str(folder)!r}"
        )
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        return DataError(
            f"dataset {name!r}: {len(missing)} of torchvision's files missing from "
            f"{str(folder)!r} ({', '.join(missing)}); put them there, or pass --download to "
            "fetch them"
        )
    return DataError(
        f"dataset {name!r}: torchvision cannot read the files in {str(folder)!r} ({reason}); "
        "replace them, or delete them and pass --download to fetch them again"
    )
