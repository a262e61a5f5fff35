"""Bad files for image folders, manifests and ``analysis predict``: each kind a user has met.

Unreadable (skipped and counted): a JPEG cut in half, a PNG whose header claims 10^10 pixels
(Pillow refuses it as a decompression bomb, with an error that is not an OSError), and macOS's
AppleDouble ``._name.jpg`` when a manifest names it. Not listed at all from a folder: that
AppleDouble file (hidden) and a folder named ``album.jpg``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

BOMB_SIDE = 100_000  # 10^10 pixels: above twice Image.MAX_IMAGE_PIXELS, so an error at open


def write_image(path: Path, value: int, size: int = 12, channels: int = 3) -> Path:
    """A readable image, its pixels set from ``value`` so that images differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size, size, channels) if channels == 3 else (size, size)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    write_image(path.with_suffix(".tmp.png"), 7, size=32)
    with Image.open(path.with_suffix(".tmp.png")) as img:
        img.save(path, "JPEG")
    path.with_suffix(".tmp.png").unlink()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_bomb_png(path: Path, side: int = BOMB_SIDE) -> Path:
    """A 45-byte PNG: its signature and a header claiming ``side`` x ``side`` RGB pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def write_appledouble(path: Path) -> Path:
    """macOS's resource-fork file beside a copied photo: ``._photo.jpg``, not an image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(64))
    return path


def write_class_folders(root: Path, classes: tuple[str, ...], per_class: int) -> list[Path]:
    """``per_class`` readable PNG images in a folder per class."""
    return [
        write_image(root / name / f"{i}.png", 100 * c + i)
        for c, name in enumerate(classes)
        for i in range(per_class)
    ]


def add_bad_files(folder: Path) -> dict[str, Path]:
    """Every kind of bad file in ``folder``: the unreadable ones (``truncated``, ``bomb``), and
    those a folder's listing leaves out (``appledouble``, ``album``, a folder)."""
    album = folder / "album.jpg"
    album.mkdir(parents=True)
    return {
        "truncated": write_truncated_jpeg(folder / "broken.jpg"),
        "bomb": write_bomb_png(folder / "bomb.png"),
        "appledouble": write_appledouble(folder / "._0.jpg"),
        "album": album,
    }
