"""Images on disk: a folder of class sub-folders (``imagefolder:PATH``) and a CSV manifest
(``csv:PATH``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import trainables.data.image_files as image_files
from trainables.data._image_cache import ImageSource, load_images
from trainables.data._registry import register_dataset
from trainables.data._types import (
    SPLITS,
    DataError,
    DataOptions,
    ImageData,
)
from trainables.data.image_files import IMAGE_SUFFIXES


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
    source = ImageSource(paths, labels, tuple(folders), name, f"{name}: class folder", root)
    return load_images(source, options)


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
    given = None if rows[0].split is None else np.asarray([row.split for row in rows])
    what = f"{where}: class"
    source = ImageSource(
        paths, labels, classes, f"csv:{manifest}", what, manifest.parent, given, multilabel
    )
    return load_images(source, options)


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
