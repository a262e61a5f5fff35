"""torchvision's datasets, read from ``DataOptions.data_root`` (downloaded only when asked)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainables.data._registry import Loader, register_dataset
from trainables.data._splits import split_official_test
from trainables.data._types import DataError, DataOptions, ImageData


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
