"""A node's folder of cached arrays: ``.npy`` files that processes compute together, read
memory-mapped, and that the folder's budget evicts, least recently used first. Two caches use
it: the trials' frozen-backbone features (float32, ``trainables.feature_cache``) and the
driver's decoded images (uint8, ``trainables.data._image_cache``); each has its own folder,
budget and environment variables (``CacheKind``).

A key may have a small sidecar (``<name>.json``) written before its array gets its name; it
goes with the array when the array is evicted.

Why each lock, and what it guards:

- ``<name>.lock`` (``flock``, whole file): opening, finishing or evicting one key's files.
- ``space.flock`` (``flock``): the folder's size; a new file is made room for and reserved on
  disk under it, so two trials never both count the same free space.
- A shared ``flock`` on each mapped ``.npy`` for as long as its mapping lives (the mapping
  holds a duplicate of the descriptor, and ``flock`` belongs to the open file, not to the
  process): eviction takes it exclusively without waiting, so a file a trial has open or is
  computing is never deleted.
- POSIX byte locks (``lockf``) on ``.<name>.tmp.done``, one per chunk being computed. A process
  opens the ``.done`` file once only: closing any descriptor of a file drops every POSIX lock
  the process holds on it.

A file is reserved on disk (``posix_fallocate``) before anything is written into its mapping:
a write into a sparse mapping on a full disk is a SIGBUS that kills the process, where a
reservation fails with ``OSError`` and the trial runs uncached.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from trainables.errors import UserError

FOLDER_ENV = "FINETUNE_SWEEPS_FEATURE_CACHE"
BUDGET_ENV = "FINETUNE_SWEEPS_FEATURE_CACHE_GIB"
DEFAULT_BUDGET_GIB = 2.0
SPACE_LOCK = "space.flock"  # not "<key>.lock": no key can share it
DTYPE = np.dtype("<f4")
SIDECAR = ".json"  # a key's small companion file, evicted with its array


@dataclass(frozen=True)
class CacheKind:
    """What a cache folder holds: its name in messages, its environment variables and their
    defaults (the folder: under the system's temp folder when ``default_folder`` is empty)."""

    what: str
    folder_env: str
    budget_env: str
    default_budget_gib: float
    default_folder: str = ""
    dtype: np.dtype = DTYPE

    def folder(self) -> Path:
        """The folder; ``RuntimeError`` when it names a home that cannot be found."""
        return Path(self.folder_setting()).expanduser()

    def folder_setting(self) -> str:
        default = self.default_folder or str(
            Path(tempfile.gettempdir()) / f"finetune-sweeps-features-{os.getuid()}"
        )
        return os.environ.get(self.folder_env) or default

    def budget_bytes(self) -> int:
        raw = os.environ.get(self.budget_env) or ""
        try:
            gib = float(raw) if raw.strip() else self.default_budget_gib
        except ValueError:
            gib = math.nan
        if not math.isfinite(gib):
            raise CacheSettingError(
                f"${self.budget_env}={raw!r} is not a number of GiB: set it to one such as "
                f"{self.default_budget_gib:g}, or to 0 to turn {self.what} off"
            )
        return int(gib * 2**30)


FEATURES = CacheKind("the feature cache", FOLDER_ENV, BUDGET_ENV, DEFAULT_BUDGET_GIB)


class CacheSettingError(UserError):
    """A cache's environment variable holds something it cannot use; one line."""


class CacheFull(Exception):
    """The budget cannot take a new file: the files in the way are in use by other trials."""


@dataclass
class FeatureCache:
    """The node's folder of feature files; counts what this process computed and read, and
    says why the last ``feature_inputs`` that could use it did not (``uncached``, by purpose).
    The folder's files together stay within ``budget_bytes``."""

    folder: Path
    budget_bytes: int
    computed: int = 0
    read: int = 0
    uncached: dict[str, str] = field(default_factory=dict)
    kind: CacheKind = FEATURES
    unusable: str = ""  # why nothing may be cached (then ``budget_bytes`` is 0), one line

    @classmethod
    def from_env(cls, kind: CacheKind = FEATURES) -> FeatureCache:
        """The cache the environment sets; a bad budget is ``CacheSettingError``, a folder
        in a home that cannot be found (no ``$HOME``, no passwd entry) a cache that is off."""
        budget = kind.budget_bytes()
        try:
            return cls(kind.folder(), budget, kind=kind)
        except RuntimeError as err:  # expanduser: "Could not determine home directory."
            raw = kind.folder_setting()
            why = f"{kind.what} cannot place its folder {raw!r} ({err})"
            return cls(Path(raw), 0, kind=kind, unusable=why)

    def load_or_compute(
        self,
        name: str,
        shape: tuple[int, ...],
        fill: Callable[[np.ndarray, slice], None],
        chunk: int,
        keep: Collection[str] = (),
        resume: bool = True,
    ) -> np.ndarray:
        """The array (of the kind's dtype) stored under ``name``. The trials on the node that
        find it missing compute it together, ``chunk`` rows at a time (``fill(out, rows)`` writes
        ``out[rows]``), and the first to see every chunk written moves it into place. Making
        room for it never evicts the files named in ``keep`` (the trial's other splits).
        ``resume=False``: a partial file no live process is computing is made anew, not
        finished (the image cache: its one chunk may have been written by an orphan), and
        one whose ``fill`` raised is removed.
        Raises ``OSError`` (a full disk, a folder it cannot write) or ``CacheFull``."""
        path = self.folder / f"{name}.npy"
        array = _map_existing(path)
        if array is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = self.folder / f"{name}.lock"
            with _locked(lock):
                array = _map_existing(path)
                room = _Room(self.folder, self.budget_bytes, frozenset(keep) | {name}, self.kind)
                partial = None
                if array is None:
                    partial = _Partial.open(room, name, shape, resume)
            if partial is not None:
                try:
                    helped = partial.fill_with_others(fill, chunk)
                except BaseException:
                    if not resume:  # nobody would resume it: not left reserving the disk
                        with _locked(lock):
                            partial.discard()
                    raise
                with _locked(lock):
                    array = partial.finish(path)
                if helped:
                    self.computed += 1
                    return array
        self.read += 1
        return array


def file_bytes(shape: tuple[int, ...], dtype: np.dtype = DTYPE) -> int:
    """What a file of ``shape`` takes on disk: its header and its values."""
    return len(_header(shape, dtype)) + math.prod(shape) * dtype.itemsize


def map_file(path: Path) -> np.ndarray | None:
    """A finished file mapped read-only and held against eviction while the array lives;
    None when it is not there."""
    return _map_existing(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield  # closing the handle releases the lock


@contextlib.contextmanager
def _locked_if_free(path: Path) -> Iterator[bool]:
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
        else:
            yield True


def _map_existing(path: Path) -> np.ndarray | None:
    """The finished file mapped for reading, its use recorded for eviction; None if missing
    (also when it was evicted between being opened and being locked)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_SH)  # eviction holds it exclusively only to unlink
        if not _still_at(handle, path):
            return None
        with contextlib.suppress(PermissionError):  # another user's file in a shared folder
            os.utime(handle.fileno())  # its last use: eviction takes the oldest first
        return _memmap(handle, "r")


def _still_at(handle: BinaryIO, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _memmap(handle: BinaryIO, mode: str) -> np.ndarray:
    """``handle``'s array, mapped; the mapping keeps a duplicate of the descriptor, and with it
    the shared lock on the file, until the array is freed."""
    version = np.lib.format.read_magic(handle)
    read = (
        np.lib.format.read_array_header_1_0
        if version == (1, 0)
        else np.lib.format.read_array_header_2_0
    )
    shape, fortran, dtype = read(handle)
    order = "F" if fortran else "C"
    return np.memmap(handle, dtype=dtype, mode=mode, offset=handle.tell(), shape=shape, order=order)


def _header(shape: tuple[int, ...], dtype: np.dtype = DTYPE) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


@dataclass(frozen=True)
class _Room:
    """Space for a new file within the folder's budget, never at the cost of ``keep``."""

    folder: Path
    budget: int
    keep: frozenset[str]
    kind: CacheKind = FEATURES

    @contextlib.contextmanager
    def made_for(self, size: int) -> Iterator[None]:
        """Evicts the least recently used files that nobody has open until ``size`` more bytes
        fit; the caller creates the file inside, before another trial counts the space."""
        budget = f"{self.kind.what}'s {self.budget / 2**30:.3g} GiB (${self.kind.budget_env})"
        with _locked(self.folder / SPACE_LOCK):
            if size > self.budget:  # nothing is evicted for a file that could never fit
                raise CacheFull(f"a file of {size / 2**30:.3g} GiB is over {budget}")
            used = _evict(self.folder, self.budget - size, self.keep)
            if used + size > self.budget:
                raise CacheFull(
                    f"{size / 2**30:.3g} GiB more would pass {budget}: "
                    f"{used / 2**30:.3g} GiB are in files that trials are using"
                )
            yield


def _evict(folder: Path, target: int, keep: frozenset[str]) -> int:
    """Removes the folder's unused files, oldest use first, until at most ``target`` bytes
    are left or none can go; returns the bytes left. Called under the space lock."""
    files = []
    for path in folder.iterdir():
        if path.name.endswith(".new"):  # files are created under the space lock: a leftover
            path.unlink(missing_ok=True)
            continue
        if _is_stale_tmp(path):
            path.unlink(missing_ok=True)
            continue
        key = _key_of(path.name)
        if key is not None:
            with contextlib.suppress(FileNotFoundError):
                files.append((path.stat(), path, key))
    used = sum(stat.st_size for stat, _, _ in files)
    for stat, path, key in sorted(files, key=lambda f: f[0].st_mtime_ns):
        if used <= target:
            break
        if key not in keep and _remove_unused(folder, path, key):
            used -= stat.st_size
    return used


def _is_stale_tmp(path: Path, min_age_s: float = 60.0) -> bool:
    """A file written under another name by a process that is gone (``.<name>.<pid>.tmp``,
    a sidecar's); a minute old at least, as a pid from another node or container sharing the
    folder may look dead here."""
    parts = path.name.split(".")
    if not path.name.startswith(".") or parts[-1] != "tmp" or not parts[-2].isdigit():
        return False
    try:
        os.kill(int(parts[-2]), 0)
    except ProcessLookupError:
        pass  # gone
    except (PermissionError, OverflowError):
        return False  # another user's live process (or not a pid)
    else:
        return False
    try:
        return time.time() - path.stat().st_mtime > min_age_s
    except FileNotFoundError:
        return False


def _key_of(file_name: str) -> str | None:
    """The key a data file belongs to (``name.npy``, ``.name.tmp.npy``), or None."""
    if file_name.endswith(".tmp.npy") and file_name.startswith("."):
        return file_name[1 : -len(".tmp.npy")]
    if file_name.endswith(".npy") and not file_name.startswith("."):
        return file_name[: -len(".npy")]
    return None


def _remove_unused(folder: Path, path: Path, key: str) -> bool:
    """Deletes ``path`` unless a trial holds its key (computing or finishing it) or has it
    mapped; True if it is gone."""
    with _locked_if_free(folder / f"{key}.lock") as free:
        if not free:
            return False
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return True
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # mapped by a trial
            if _still_at(handle, path):
                path.unlink()
                (folder / f"{key}{SIDECAR}").unlink(missing_ok=True)
            if path.name.startswith("."):  # a killed trial's half-computed file
                (folder / f".{key}.tmp.done").unlink(missing_ok=True)
        return True


class _Partial:
    """A feature file being computed: the array (``.<name>.tmp.npy``) and one byte per chunk
    (``.<name>.tmp.done``) that says the chunk is written. A trial computing a chunk holds a
    lock on its byte, so another trial takes the next chunk instead of waiting, and a trial
    killed halfway releases its lock and leaves its chunk to the others. A reader never sees
    the array before every chunk is in it: it gets its real name only then."""

    def __init__(self, data: np.ndarray, done: BinaryIO, data_path: Path, done_path: Path):
        self.data: np.ndarray | None = data
        self.done, self.data_path, self.done_path = done, data_path, done_path
        self.stat = os.stat(data_path)  # opened under the key's lock: the file mapped

    @classmethod
    def open(cls, room: _Room, name: str, shape: tuple[int, ...], resume: bool = True) -> _Partial:
        """Opened, or created if missing (or, unless ``resume``, if no process has it open);
        called under the key's lock, so nobody finishes, evicts or removes the files between
        their check and their opening."""
        data_path = room.folder / f".{name}.tmp.npy"
        done_path = room.folder / f".{name}.tmp.done"
        if not resume:
            _remove_if_unused(data_path, done_path)
        try:
            data = _map_partial(data_path)
            done = done_path.open("r+b")
        except (OSError, ValueError):  # missing, or left half-made by a killed trial
            data = None  # its mapping (and shared lock) go before the file is replaced
            for path in (data_path, done_path):
                path.unlink(missing_ok=True)
            with room.made_for(file_bytes(shape, room.kind.dtype)):
                _create(data_path, done_path, shape, room.kind.dtype)
            data, done = _map_partial(data_path), done_path.open("r+b")
        if data.shape != shape:  # the key fixes the shape; a file of another one is not ours
            raise OSError(f"{data_path} holds shape {data.shape}, expected {shape}")
        return cls(data, done, data_path, done_path)

    def fill_with_others(self, fill: Callable[[np.ndarray, slice], None], chunk: int) -> bool:
        """Computes the chunks nobody has taken, then waits for (or, if their trial died,
        computes) the rest; True if this trial computed any."""
        data, fd, rows = self.data, self.done.fileno(), len(self.data)
        chunks = range(math.ceil(rows / chunk))
        helped = False
        with self.done:
            for blocking in (False, True):  # first the free chunks, then the taken ones
                for index in chunks:
                    if _is_done(fd, index) or not _lock_byte(fd, index, blocking):
                        continue
                    try:
                        if not _is_done(fd, index):  # done while this trial waited for it
                            fill(data, slice(index * chunk, min(rows, (index + 1) * chunk)))
                            data.flush()  # on disk before it is marked done
                            os.pwrite(fd, b"\x01", index)
                            helped = True
                    finally:
                        fcntl.lockf(fd, fcntl.LOCK_UN, 1, index)
        return helped

    def discard(self) -> None:
        """Removes the files, if they are still the ones this process opened; under the
        key's lock."""
        self.data = None
        with contextlib.suppress(OSError):
            if os.path.samestat(self.stat, os.stat(self.data_path)):
                self.data_path.unlink()
                self.done_path.unlink(missing_ok=True)

    def finish(self, path: Path) -> np.ndarray:
        """Moves the array into place (the first trial to get here does) and maps it for
        reading; under the key's lock, so it cannot be evicted in between."""
        self.data = None
        if not path.exists():
            os.replace(self.data_path, path)
            self.done_path.unlink(missing_ok=True)
        array = _map_existing(path)
        if array is None:
            raise OSError(f"{path} vanished while its key was locked")
        return array


def _remove_if_unused(data_path: Path, done_path: Path) -> None:
    """Removes a partial file that no process has mapped (each holds a shared ``flock``)."""
    try:
        handle = data_path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a live process is computing it: it is waited for, as with ``resume``
        for path in (data_path, done_path):
            path.unlink(missing_ok=True)


def _map_partial(path: Path) -> np.ndarray:
    with path.open("r+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)  # computing it is using it: not evicted
        return _memmap(handle, "r+")


def _create(data_path: Path, done_path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Both files, the array made under another name and renamed (never half a header) and
    reserved on disk whole: a full disk is an ``OSError`` here, not a SIGBUS when a chunk is
    written into a mapping of blocks that were never allocated."""
    new = data_path.with_name(f"{data_path.name}.{os.getpid()}.new")
    try:
        with new.open("wb") as handle:
            handle.write(_header(shape, dtype))
            handle.flush()
            os.posix_fallocate(handle.fileno(), 0, file_bytes(shape, dtype))
        os.replace(new, data_path)
    finally:
        new.unlink(missing_ok=True)
    done_path.write_bytes(b"")  # grows a byte per chunk as chunks are written


def _is_done(fd: int, index: int) -> bool:
    return os.pread(fd, 1, index) == b"\x01"


def _lock_byte(fd: int, index: int, blocking: bool) -> bool:
    """A POSIX record lock on one byte: per process, released when the process dies."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB), 1, index)
    except BlockingIOError:
        return False
    return True
