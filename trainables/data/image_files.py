"""Image files on disk: which files of a folder are images, how one is read, and what
'unreadable' means, for every reader of files (image folders, CSV manifests and
``python -m analysis predict``).

A file Pillow cannot read (corrupt, cut short, not an image at all, a folder named like an
image, a decompression bomb) is skipped and counted, never the end of the command: the readers
report the skipped files in one line (``skipped_line``). Hidden files (a name starting with a
dot, such as macOS's ``._photo.jpg``) are not listed at all.

``trainables.edge.served_model`` reads files the same way but cannot import this module (MLflow
loads that file alone); tests/trainables_tests/edge_tests/test_served_model.py holds the two to
the same pixels and the same verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SHOWN = 3  # unreadable files named in a line
REASON_CHARS = 100


class UnreadableImage(Exception):
    """A file Pillow cannot read; ``reason`` is one line."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class ImageBatch:
    """The files of ``paths`` that could be read, in order, and those that could not."""

    images: np.ndarray  # (N, C, H, W) uint8
    read: np.ndarray  # (N,) the positions in ``paths`` of the images read
    skipped: tuple[UnreadableImage, ...]


def unreadable_errors() -> tuple[type[Exception], ...]:
    """What Pillow raises for a file that is no readable image: OSError (not an image, cut
    short, corrupt, a folder, no permission), ValueError (a malformed header), and its refusal
    of a decompression bomb, which is neither. Anything else is a bug and keeps its traceback."""
    from PIL import Image

    return (OSError, ValueError, Image.DecompressionBombError)


def is_hidden(path: Path, root: Path) -> bool:
    """A dot-file, or a file in a dot-folder, below ``root``."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def image_files(folder: Path) -> list[Path]:
    """The image files below ``folder`` (searched recursively), sorted; hidden files, and
    folders named like images, left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and not is_hidden(p, folder) and p.is_file()
    )


def read_image(path: Path, size: int, mode: str = "RGB") -> np.ndarray:
    """One file as C x H x W uint8, converted to Pillow's ``mode`` ("RGB" or "L") and resized
    to ``size`` x ``size`` (bilinear); UnreadableImage when Pillow cannot read it."""
    return decode_image(path, size, mode).transpose(2, 0, 1).copy()


def decode_image(path: Path | str, size: int, mode: str = "RGB", draft: bool = False) -> np.ndarray:
    """``read_image``'s pixels as H x W x C. ``draft``: a JPEG at least twice ``size`` on each
    side is decoded at 1/2, 1/4 or 1/8 scale (never below ``size``) before the same resize,
    several times faster for photos; the pixels then differ from the full decode's by a few
    levels on average (under 3 of 255 for sharp-edged blocks shrunk 12x:
    tests/trainables_tests/test_image_cache.py). Smaller files decode whole, to the same
    pixels."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if draft:
                img.draft(img.mode, (size, size))  # the same mode: only the scale changes
            img = img.convert(mode).resize((size, size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except unreadable_errors() as err:
        raise UnreadableImage(Path(path), _reason(err, path)) from None
    return array[:, :, None] if array.ndim == 2 else array


def read_images(paths: Sequence[Path], size: int, mode: str = "RGB") -> ImageBatch:
    """Every readable file of ``paths``; the others set apart, in order."""
    channels = 1 if mode == "L" else 3
    images, read, skipped = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(read_image(path, size, mode))
            read.append(i)
        except UnreadableImage as err:
            skipped.append(err)
    stacked = np.stack(images) if images else np.zeros((0, channels, size, size), np.uint8)
    return ImageBatch(stacked, np.asarray(read, dtype=np.int64), tuple(skipped))


def skipped_line(skipped: Sequence[UnreadableImage], total: int, root: Path | None = None) -> str:
    """'skipped 2 unreadable image files of 14: a.jpg (OSError: ...), b.png (...)'."""
    files = "file" if len(skipped) == 1 else "files"
    return f"skipped {len(skipped)} unreadable image {files} of {total}: {named(skipped, root)}"


def named(skipped: Sequence[UnreadableImage], root: Path | None = None) -> str:
    """The first few files with why each is unreadable, and how many more; paths relative to
    ``root`` where they are below it."""
    shown = ", ".join(f"{_shown(err.path, root)} ({err.reason})" for err in skipped[:SHOWN])
    more = len(skipped) - SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _shown(path: Path, root: Path | None) -> str:
    if root is not None and path.is_relative_to(root):
        return str(path.relative_to(root))
    return str(path)


def _reason(err: Exception, path: Path) -> str:
    """One short line; without the path, which Pillow's messages often repeat."""
    message = str(err).replace(f": {str(path)!r}", "").replace(f" {str(path)!r}", "")
    text = " ".join(f"{type(err).__name__}: {message}".split())
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."
