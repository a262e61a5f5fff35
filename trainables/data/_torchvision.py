"""torchvision's datasets, read from ``DataOptions.data_root`` (downloaded only when asked).

The MNIST family's idx files are also read as they are distributed, gzipped
(``train-images-idx3-ubyte.gz``): torchvision reads only unpacked ones, and unpacking needs
neither a network nor a writable folder (Debian's dataset-fashion-mnist lies in /usr/share)."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.data._registry import Loader, register_dataset
from trainables.data._splits import split_official_test
from trainables.data._types import DataError, DataOptions, ImageData

GZ = ".gz"  # the MNIST family's idx files as distributed: gzipped
IDX_UBYTE = 0x08  # the idx type code of unsigned bytes, the only one the MNIST family uses


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
    folder = Path(options.data_root).expanduser() / source.folder
    if source.layout == "idx" and (gzipped := _gzipped_idx_files(folder, train)):
        try:
            images, labels = read_idx_pair(*gzipped)
        except ValueError as err:
            raise _unreadable_error(name, folder, err) from err
        return images, labels, list(cls.classes)
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


def _gzipped_idx_files(folder: Path, train: bool) -> tuple[Path, Path] | None:
    """The split's images and labels files when one of them is in ``folder`` only gzipped
    (torchvision would call it missing) and the other in either form; else None, and
    torchvision reads the folder (or says what is missing)."""
    prefix = "train" if train else "t10k"
    found = []
    for stem in (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"):
        unpacked, packed = folder / stem, folder / f"{stem}{GZ}"
        found.append(unpacked if unpacked.is_file() else packed if packed.is_file() else None)
    if None in found or not any(path.suffix == GZ for path in found):
        return None
    return found[0], found[1]


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file (gzipped when its name ends in .gz) as a uint8 array: a magic number
    (0, 0, type, number of dimensions), each dimension's size as a big-endian uint32, then
    the values in C order. Anything else raises ValueError naming the file."""
    try:
        with gzip.open(path, "rb") if path.suffix == GZ else path.open("rb") as file:
            raw = file.read()
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError; EOFError: cut short
        raise ValueError(f"{path.name}: {err}") from err
    if len(raw) < 4 or raw[:3] != bytes([0, 0, IDX_UBYTE]) or raw[3] != ndim:
        raise ValueError(
            f"{path.name}: not an idx file of {ndim}-D unsigned bytes (starts {raw[:4].hex()})"
        )
    header = 4 + 4 * ndim
    shape = struct.unpack_from(f">{ndim}I", raw, 4) if len(raw) >= header else ()
    if len(raw) - header != int(np.prod(shape)) or len(shape) != ndim:
        raise ValueError(f"{path.name}: {len(raw)} bytes do not hold an array of shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def read_idx_pair(images_file: Path, labels_file: Path) -> tuple[torch.Tensor, np.ndarray]:
    """(N, 1, H, W) uint8 images and int64 labels from the MNIST family's idx files, as
    torchvision's class reads them."""
    images, labels = read_idx(images_file, 3), read_idx(labels_file, 1)
    if len(images) != len(labels):
        raise ValueError(
            f"{images_file.name} holds {len(images)} images, {labels_file.name} "
            f"{len(labels)} labels"
        )
    return torch.from_numpy(images).unsqueeze(1), labels.astype(np.int64)


def torchvision_files(source: TorchvisionSource, cls: type) -> list[str]:
    """The files torchvision's class needs in ``source.folder`` to load without a download
    (the MNIST family's: unpacked, or as distributed with .gz added)."""
    if source.layout == "idx":
        return [Path(url).stem for url, _ in cls.resources]
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
    gzipped_too = source.layout == "idx"
    forms = "; each unpacked or gzipped as distributed, NAME.gz" if gzipped_too else ""
    if options.download:
        return DataError(
            f"dataset {name!r}: downloading into {str(root)!r} failed ({reason}); without "
            f"internet, put torchvision's files ({', '.join(files)}{forms}) in {str(folder)!r}"
        )
    missing = [
        file
        for file in files
        if not (folder / file).is_file()
        and not (gzipped_too and (folder / f"{file}{GZ}").is_file())
    ]
    if missing:
        return DataError(
            f"dataset {name!r}: {len(missing)} of torchvision's files missing from "
            f"{str(folder)!r} ({', '.join(missing)}{forms}); put them there, or pass "
            "--download to fetch them"
        )
    return _unreadable_error(name, folder, err)


def _unreadable_error(name: str, folder: Path, err: Exception) -> DataError:
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return DataError(
        f"dataset {name!r}: cannot read the files in {str(folder)!r} ({reason}); "
        "replace them, or delete them and pass --download to fetch them again"
    )
