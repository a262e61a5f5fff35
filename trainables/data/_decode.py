"""Decode many image files in parallel straight into rows of one preallocated uint8 array.

The destination is a file mapped by every process: the image cache's file being written, or
an anonymous shared file (``memfd``) when there is no cache. Each worker opens the same file,
decodes its share of the files with Pillow (``image_files.decode_image``, draft mode for
JPEGs) and writes each image into its row: no list of arrays, no stacking, no second copy.

Workers are fresh interpreters running this file as a script (spawn, never fork: the driver
has threads). They load ``image_files`` by its path, not through the ``trainables.data``
package, whose imports (torch, scikit-learn) would add over a second to each worker's start.
A worker reads its task as JSON on stdin and answers the files it could not read as JSON on
stdout; anything else (a crash, an error) is ``WorkerFailed``, one line: the last of its
stderr. Every worker is killed when the call fails and dies with the driver.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

# Below this many files per worker, starting a worker (~0.15 s) costs more than it saves.
MIN_FILES_PER_WORKER = 64
BLOCK = 32  # consecutive files a worker takes in turn: files of a folder stay together
DRAFT = True  # JPEGs decoded at a reduced scale before resizing (part of the cache key)


@dataclass(frozen=True)
class Target:
    """Where the rows go: a file any process can map (``offset``: where the array starts)."""

    path: str
    offset: int
    shape: tuple[int, ...]  # (N, C, H, W)

    def open(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.uint8, mode="r+", offset=self.offset, shape=self.shape)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, as a container's CPU set limits it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_files(
    target: Target,
    paths: Sequence[Path],
    rows: np.ndarray,
    size: int,
    mode: str,
    out: np.ndarray | None = None,
) -> dict[int, str]:
    """Decodes ``paths[i]`` into row ``rows[i]`` of ``target`` with every usable core; returns
    the unreadable files' reasons by index in ``paths``. ``out``: the caller's own mapping of
    the target, used when the work is too small for workers."""
    items = [
        (i, int(row), str(path)) for i, (row, path) in enumerate(zip(rows, paths, strict=True))
    ]
    workers = min(usable_cores(), math.ceil(len(items) / MIN_FILES_PER_WORKER))
    if workers <= 1:
        array = target.open() if out is None else out
        return dict(decode_rows(_image_files(), array, items, size, mode))
    shares: list[list[tuple[int, int, str]]] = [[] for _ in range(workers)]
    for block, start in enumerate(range(0, len(items), BLOCK)):
        shares[block % workers].extend(items[start : start + BLOCK])
    task = {"target": [target.path, target.offset, list(target.shape)], "size": size}
    task["parent"] = os.getpid()
    procs: list[subprocess.Popen] = []
    try:
        for share in shares:
            procs.append(_start_worker({**task, "mode": mode, "items": share}))
        failed: dict[int, str] = {}
        for proc in procs:
            failed.update(_finish_worker(proc))
        return failed
    finally:  # one worker failed, or the driver was interrupted: none is left writing
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


class WorkerFailed(Exception):
    """A decoder worker died or raised: its exit status and its last line of stderr."""


def decode_rows(
    files: ModuleType,
    out: np.ndarray,
    items: list[tuple[int, int, str]],
    size: int,
    mode: str,
    parent: int | None = None,
) -> list[tuple[int, str]]:
    """Each ``(index, row, path)`` of ``items`` decoded into ``out[row]``; the unreadable ones'
    indices and reasons. A worker stops as soon as its ``parent`` is gone."""
    failed = []
    for index, row, path in items:
        if parent is not None and os.getppid() != parent:
            sys.exit("the driver that started this decoder is gone")
        try:
            out[row] = files.decode_image(path, size, mode, draft=DRAFT).transpose(2, 0, 1)
        except files.UnreadableImage as err:
            failed.append((index, err.reason))
    return failed


def worker_command() -> list[str]:
    """This file run as a script, with neither its folder nor the working folder on
    ``sys.path``: ``trainables/data/`` holds modules whose names shadow top-level ones. Not
    ``-P`` (Python 3.11 and later), not ``-I`` (it would also drop ``PYTHONPATH``, the user's
    site-packages and ``PYTHON*`` settings, where Pillow or numpy may come from): ``-c`` puts
    the working folder first on ``sys.path``, which the command takes off before anything is
    imported, and ``runpy.run_path`` of a plain file adds no folder."""
    code = (
        "import sys; sys.path.pop(0); import runpy; "
        f"runpy.run_path({__file__!r}, run_name='__main__')"
    )
    return [sys.executable, "-c", code]


def _start_worker(task: dict) -> subprocess.Popen:
    # The task comes from a file, not a pipe: ``communicate`` then reads stdout and stderr
    # together and never writes (it cannot flush a pipe closed before it).
    with tempfile.TemporaryFile() as stdin:
        stdin.write(json.dumps(task).encode())
        stdin.seek(0)
        return subprocess.Popen(
            worker_command(),
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )


def _finish_worker(proc: subprocess.Popen) -> dict[int, str]:
    out, err = proc.communicate()  # both pipes at once: a full one would block the worker
    if proc.returncode != 0:
        code = proc.returncode
        status = (
            f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        )
        lines = [line.strip() for line in err.decode(errors="replace").splitlines()]
        last = next((line for line in reversed(lines) if line), "nothing on stderr")
        raise WorkerFailed(f"an image decoder worker {status}: {last}")
    return {int(index): reason for index, reason in json.loads(out)}


def _image_files() -> ModuleType:
    """``trainables.data.image_files``: imported normally in the driver, by path in a worker."""
    if "trainables.data.image_files" in sys.modules or __package__:
        from trainables.data import image_files

        return image_files
    spec = importlib.util.spec_from_file_location(
        "_image_files", Path(__file__).with_name("image_files.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


def _die_with_parent(parent: int) -> None:
    """Killed when the driver dies (even by SIGKILL): never an orphan writing into a file that
    a later load may use. Linux's ``PR_SET_PDEATHSIG``, set here rather than in a
    ``preexec_fn`` (unsafe in a driver with threads); ``decode_rows`` also checks the parent
    between images, where there is no ``prctl``."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        sys.exit("the driver that started this decoder is gone")


def _worker_main() -> None:
    task = json.loads(sys.stdin.buffer.read())
    _die_with_parent(task["parent"])
    path, offset, shape = task["target"]
    out = Target(path, offset, tuple(shape)).open()
    items = [tuple(item) for item in task["items"]]
    failed = decode_rows(_image_files(), out, items, task["size"], task["mode"], task["parent"])
    del out  # unmapped; the pages stay in the shared file
    sys.stdout.write(json.dumps(failed))


if __name__ == "__main__":
    _worker_main()
