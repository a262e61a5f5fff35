"""Image files decoded once into a memory-mapped uint8 file, reused by every later load.

An image folder or CSV manifest is decoded in parallel (``_decode``) straight into one file of
the node's image cache, a folder of ``.npy`` files kept within a budget and evicted least
recently used first (``trainables.feature_files``: reservation on disk, locks, partial files).
A later load with the same key maps the file instead of decoding: the key holds every file's
path, size, inode, modification and change times (a ``chmod`` changes only the latter), the
labels, the decode size and channels, the split options, Pillow's version and whether JPEGs
are drafted. A changed file is a new key; the old entry ages out of the budget.

Layout. Rows are in split order: the train rows, then val, then test, so each split is one
contiguous slice of the map (a view, no copy; ``ImageData`` pickles it as the file's path and
rows, ``_types.Backing``). Rows past the three splits (files found unreadable) hold nothing.
The split is of the readable files, known only after decoding, so the order is predicted
before it, as the split of all the files, and the rows are moved in place once when some
file turns out unreadable. The file order of the rows, the split sizes and the unreadable
files with their reasons are the key's sidecar, ``<key>.json``, written before the array gets
its name: an array under its name always has its sidecar. A decoder killed midway leaves
only a partial file that no load trusts; the next load decodes it again.

Without a usable cache (its budget, ``$FINETUNE_SWEEPS_IMAGE_CACHE_GIB``, too small or 0, its
disk too full, its folder not writable) the images are decoded into anonymous shared memory
(a ``memfd``) the same way, if they fit in the memory available; otherwise a ``DataError``
says how much is needed and what to do, before anything is decoded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import mmap
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
import torch

import trainables.data.image_files as image_files
from trainables.data._decode import DRAFT, Target, WorkerFailed, decode_files
from trainables.data._splits import SplitIndex, multilabel_index, stratified_index
from trainables.data._types import (
    DEFAULT_FILE_IMAGE_SIZE,
    Backing,
    DataError,
    DataOptions,
    ImageData,
    read_only_tensor,
    this_node,
)
from trainables.data.image_files import UnreadableImage
from trainables.feature_files import CacheFull, CacheKind, FeatureCache, file_bytes, map_file

IMAGES = CacheKind(
    what="the image cache",
    folder_env="FINETUNE_SWEEPS_IMAGE_CACHE_DIR",
    budget_env="FINETUNE_SWEEPS_IMAGE_CACHE_GIB",
    default_budget_gib=20.0,
    default_folder="~/.cache/finetune-sweeps/images",
    dtype=np.dtype(np.uint8),
)
FORMAT_VERSION = 1  # raise when what a file holds changes, so old files are not read
CGROUP = Path("/sys/fs/cgroup")  # this process's cgroup v2, as a container sees it
MODE, CHANNELS = "RGB", 3  # image files are read as RGB (``_files.read_image``)


@dataclass(frozen=True)
class ImageSource:
    """Files to load, a label per file (class indices, or 0/1 rows when ``multilabel``)."""

    paths: list[Path]
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str  # the dataset's name, e.g. imagefolder:/data/xray
    what: str  # how messages name a class, e.g. "imagefolder:/data/xray: class folder"
    root: Path  # skipped files are named relative to it
    given: np.ndarray | None = None  # a split name per file (a manifest's split column)
    multilabel: bool = False


@dataclass(frozen=True)
class Layout:
    """What a file's rows are: ``order[k]`` is the file index of row ``k``."""

    order: np.ndarray
    counts: tuple[int, int, int]  # train, val and test rows, in that order
    skipped: dict[int, str]  # unreadable file index -> reason


def load_images(source: ImageSource, options: DataOptions) -> ImageData:
    """``source`` decoded, split and checked: from the image cache when it can be used,
    otherwise decoded into memory (with a note saying why)."""
    size = options.image_size or DEFAULT_FILE_IMAGE_SIZE
    shape = (len(source.paths), CHANNELS, size, size)
    cache = FeatureCache.from_env(IMAGES)
    key = cache_key(source, options, size)
    path = cache.folder / f"{key}.npy"
    layout = _read_layout(path) if cache.budget_bytes > 0 else None  # 0: the cache is off
    array = map_file(path) if layout is not None else None
    if array is not None and layout is not None:  # decoded before: nothing to decode
        return _assemble(source, options, array, layout, Backing(str(path), this_node(), array))
    why = cache_refusal(cache, shape)
    if why is None:
        try:
            return _load_cached(cache, key, source, options, shape)
        except (OSError, CacheFull) as err:  # a full disk, a folder it cannot write
            why = f"{IMAGES.what} at {cache.folder} failed ({type(err).__name__}: {err})"
    check_memory(source, shape, why)
    array, layout = _decode_in_memory(source, options, shape)
    data = _assemble(source, options, array, layout, None)
    return dataclasses.replace(data, notes=(*data.notes, f"{source.name}: uncached: {why}"))


def cache_key(source: ImageSource, options: DataOptions, size: int) -> str:
    """Everything a cache file's bytes depend on, hashed."""
    h = hashlib.sha256()
    settings = [FORMAT_VERSION, size, CHANNELS, options.split_seed, options.val_fraction]
    settings += [options.test_fraction, list(source.classes), source.multilabel]
    settings += [PIL.__version__, DRAFT]  # another Pillow may decode other pixels
    h.update(json.dumps(settings).encode())
    for path in source.paths:
        try:
            st = os.stat(path)
            # ctime: a chmod that makes an unreadable file readable changes it, not mtime
            stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
        except OSError:
            stamp = "missing"
        h.update(f"{os.path.abspath(path)}\0{stamp}\n".encode())
    h.update(np.ascontiguousarray(source.labels).tobytes())
    if source.given is not None:
        h.update("\0".join(map(str, source.given)).encode())
    return f"images-{h.hexdigest()[:40]}"


def cache_refusal(cache: FeatureCache, shape: tuple[int, ...]) -> str | None:
    """Why the cache cannot take a file of ``shape`` (one line), or None if it can."""
    need = file_bytes(shape, IMAGES.dtype)
    if cache.unusable:
        return cache.unusable
    if cache.budget_bytes <= 0:
        return f"{IMAGES.what} is off (${IMAGES.budget_env}=0)"
    if need > cache.budget_bytes:
        budget = gib(cache.budget_bytes)
        return (
            f"{gib(need)} GiB is over {IMAGES.what}'s budget of {budget} GiB (${IMAGES.budget_env})"
        )
    try:
        cache.folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"{IMAGES.what} cannot make its folder ({type(err).__name__}: {err})"
    room = disk_free(cache.folder) + _folder_bytes(cache.folder)  # its own files can go
    if need > room:
        return f"{IMAGES.what}'s disk ({cache.folder}) has {gib(room)} GiB free, {gib(need)} needed"
    return None


def check_memory(source: ImageSource, shape: tuple[int, ...], why: str) -> None:
    """Refuses, before decoding, images that fit neither the cache (``why``) nor memory."""
    need, have = math.prod(shape), available_memory()
    if need > have:
        raise DataError(
            f"{source.name}: {shape[0]} images at {shape[-1]} px need {gib(need)} GiB decoded, "
            f"more than the {gib(have)} GiB of memory available, and the image cache cannot "
            f"hold them ({why}); use a smaller --image-size, or point ${IMAGES.folder_env} at a "
            f"disk with room (budget ${IMAGES.budget_env}, GiB)"
        )


def available_memory() -> int:
    """Bytes of memory this process can have without swapping: the host's MemAvailable, or
    less when its cgroup (v2: a container, a job's allocation) allows less."""
    return int(min(_host_available(), _cgroup_available()))


def _host_available() -> int:
    import psutil  # MemAvailable, with psutil's fallbacks where the kernel has none

    return int(psutil.virtual_memory().available)


def _cgroup_available() -> int | float:
    """``memory.max`` less ``memory.current`` of the cgroup v2 at ``CGROUP``; infinite when
    there is no limit or none can be read."""
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return math.inf
        return max(0, int(limit) - int((CGROUP / "memory.current").read_text()))
    except (OSError, ValueError):
        return math.inf


def disk_free(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def gib(n: int) -> str:
    return f"{n / 2**30:.3g}"


def _folder_bytes(folder: Path) -> int:
    total = 0
    for path in folder.glob("*.npy"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _load_cached(
    cache: FeatureCache, key: str, source: ImageSource, options: DataOptions, shape: tuple
) -> ImageData:
    sidecar = cache.folder / f"{key}.json"

    def fill(out: np.ndarray, rows: slice) -> None:  # one chunk: all the rows
        target = Target(str(out.filename), int(out.offset), tuple(out.shape))
        _write_layout(sidecar, _decode_and_lay_out(source, options, target, out))

    array = cache.load_or_compute(key, shape, fill, chunk=len(source.paths), resume=False)
    layout = _read_layout(cache.folder / f"{key}.npy")
    if layout is None:
        raise OSError(f"{sidecar} is missing beside its array")
    path = cache.folder / f"{key}.npy"
    return _assemble(source, options, array, layout, Backing(str(path), this_node(), array))


def _decode_in_memory(
    source: ImageSource, options: DataOptions, shape: tuple[int, ...]
) -> tuple[np.ndarray, Layout]:
    """Decoded into a ``memfd``: shared memory the workers open by its /proc path."""
    fd = os.memfd_create("decoded-images")
    try:
        os.ftruncate(fd, max(1, math.prod(shape)))
        out = np.frombuffer(mmap.mmap(fd, max(1, math.prod(shape))), np.uint8)
        out = out[: math.prod(shape)].reshape(shape)
        target = Target(f"/proc/{os.getpid()}/fd/{fd}", 0, shape)
        return out, _decode_and_lay_out(source, options, target, out)
    finally:
        os.close(fd)  # the mapping keeps the memory


def _decode_and_lay_out(
    source: ImageSource, options: DataOptions, target: Target, out: np.ndarray
) -> Layout:
    """Every file decoded into ``out``, its rows then put in split order."""
    n = len(source.paths)
    try:
        predicted = _split_order(source, options, np.arange(n))
    except DataError:  # too few files to split: the split of the readable ones will say so
        predicted = np.arange(n)
    rows = np.empty(n, dtype=np.int64)
    rows[predicted] = np.arange(n)
    size = target.shape[-1]
    try:
        skipped = decode_files(target, source.paths, rows, size, MODE, out=out)
    except WorkerFailed as err:  # unreadable files are skipped: this is a crash, said in a line
        raise DataError(f"{source.name}: {err}") from None
    read = np.setdiff1d(np.arange(n), np.fromiter(skipped, dtype=np.int64, count=len(skipped)))
    refuse_empty_class(source, read, skipped)
    index = _split(source, options, read)
    order = read[np.concatenate([index.train, index.val, index.test])]
    _move_rows(out, rows[order])
    return Layout(order, (len(index.train), len(index.val), len(index.test)), skipped)


def _split(source: ImageSource, options: DataOptions, read: np.ndarray) -> SplitIndex:
    """The split of the files ``read`` (positions among them)."""
    labels = source.labels[read]
    given = None if source.given is None else source.given[read]
    if source.multilabel:
        return multilabel_index(labels, options, source.name, given)
    return stratified_index(labels, source.classes, options, source.name, given)


def _split_order(source: ImageSource, options: DataOptions, read: np.ndarray) -> np.ndarray:
    """The file indices of ``read`` in split order: train, val, test."""
    index = _split(source, options, read)
    return read[np.concatenate([index.train, index.val, index.test])]


def _move_rows(out: np.ndarray, sources: np.ndarray) -> None:
    """Row ``k`` of ``out`` gets what row ``sources[k]`` holds, in place (one row of scratch);
    nothing moves when every file was readable, the usual case."""
    m, n = len(sources), len(out)
    if np.array_equal(sources, np.arange(m)):
        return
    perm = np.concatenate([sources, np.setdiff1d(np.arange(n), sources)])
    done = np.zeros(n, dtype=bool)
    for start in range(n):
        if done[start] or perm[start] == start:
            continue
        scratch, k = out[start].copy(), start
        while perm[k] != start:  # follow the cycle: each row is written once
            out[k], done[k] = out[perm[k]], True
            k = perm[k]
        out[k], done[k] = scratch, True


def refuse_empty_class(source: ImageSource, read: np.ndarray, skipped: dict[int, str]) -> None:
    """A class none of whose files can be read is refused, its unreadable files named."""
    labels, n_classes = source.labels, len(source.classes)
    unread = (_per_class(labels, n_classes) > 0) & (_per_class(labels[read], n_classes) == 0)
    if not unread.any():
        return
    c = int(np.flatnonzero(unread)[0])
    errors = [UnreadableImage(source.paths[i], skipped[i]) for i in sorted(skipped)]
    rows = np.asarray(sorted(skipped), dtype=np.int64)
    of_c = labels[rows, c] > 0 if labels.ndim == 2 else labels[rows] == c
    theirs = [err for err, mine in zip(errors, of_c, strict=True) if mine]
    raise DataError(
        f"{source.what} {source.classes[c]!r} has no readable image ({len(theirs)} unreadable: "
        f"{image_files.named(theirs, source.root)})"
    )


def _per_class(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Images per class, of class indices or of 0/1 rows."""
    return labels.sum(axis=0) if labels.ndim == 2 else np.bincount(labels, minlength=n_classes)


def _assemble(
    source: ImageSource,
    options: DataOptions,
    array: np.ndarray,
    layout: Layout,
    backing: Backing | None,
) -> ImageData:
    """The splits as contiguous views of ``array``'s rows, and a note of the skipped files."""
    a, b, c = layout.counts
    x = read_only_tensor(np.asarray(array))
    labels = source.labels[layout.order]
    if source.multilabel:
        y = torch.as_tensor(np.asarray(labels, dtype=bool), dtype=torch.float32)
    else:
        y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    data = ImageData(
        name=source.name,
        classes=source.classes,
        train_x=x[:a],
        train_y=y[:a],
        val_x=x[a : a + b],
        val_y=y[a : a + b],
        test_x=x[a + b : a + b + c],
        test_y=y[a + b : a + b + c],
        multilabel=source.multilabel,
        split_seed=options.split_seed,
        backing=backing,
    )
    if not layout.skipped:
        return data
    errors = [UnreadableImage(source.paths[i], layout.skipped[i]) for i in sorted(layout.skipped)]
    line = f"{source.name}: {image_files.skipped_line(errors, len(source.paths), source.root)}"
    return dataclasses.replace(data, notes=(*data.notes, line))


def _write_layout(path: Path, layout: Layout) -> None:
    """Written whole under another name, then renamed: never half a sidecar."""
    record = {
        "order": layout.order.tolist(),
        "counts": list(layout.counts),
        "skipped": [[i, reason] for i, reason in sorted(layout.skipped.items())],
    }
    new = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not ".new": eviction's leftovers
    new.write_text(json.dumps(record))
    os.replace(new, path)


def _read_layout(array_path: Path) -> Layout | None:
    try:
        record = json.loads(array_path.with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    skipped = {int(i): str(reason) for i, reason in record["skipped"]}
    order = np.asarray(record["order"], dtype=np.int64)
    return Layout(order, tuple(record["counts"]), skipped)
