"""What a worker process hands back between the trials it runs.

Ray Tune runs trial after trial in one worker process (``reuse_actors``), each in a thread of
its own. Two things kept what the trials before had freed, and a worker grew by 0.1 to 0.2 GB
a trial (ResNet-18 on the 8-px digits: 0.9 GB at its first trial, 2.4 GB at its eleventh):

- reference cycles (matplotlib's figures; MLflow's check of a logged model, which loads the
  network once more) wait for Python's full collection, which among the 650,000 objects of a
  worker's imports comes only every several trials;
- glibc's malloc keeps the pages of freed tensors in its per-thread arenas, and a new trial's
  thread does not find them again: the heap grows.

No Ray here: the trial calls ``release_memory`` as it starts.
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable


def release_memory() -> None:
    """Collect the garbage the process's earlier trials left in reference cycles, then hand
    the heap's free pages back to the OS. What survives is frozen (``gc.freeze``: left out of
    every later collection), so each call scans only the objects since the one before (tens
    of ms after a trial, against 0.3 to 1 s for a worker's imports): the first call, before
    any trial has run, freezes the imports without a collection."""
    if gc.get_freeze_count():
        gc.collect()
    gc.freeze()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None for another C library (macOS, musl), which has none."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
