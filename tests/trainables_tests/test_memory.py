import gc
import weakref

import psutil
import pytest
import torch

from trainables.memory import _malloc_trim, release_memory


@pytest.fixture
def collector_at_rest():
    """The automatic collector off, nothing frozen, as before afterwards."""
    gc.disable()
    gc.unfreeze()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


def _tensor_in_a_cycle() -> weakref.ref:
    holder = {"tensor": torch.zeros(1000)}
    holder["self"] = holder
    return weakref.ref(holder["tensor"])


def test_release_memory_frees_what_reference_cycles_held_since_the_last_call(collector_at_rest):
    release_memory()  # the first call: the imports are frozen
    assert gc.get_freeze_count() > 0
    alive = _tensor_in_a_cycle()
    assert alive() is not None  # the collector rests: the cycle keeps it
    release_memory()
    assert alive() is None


def test_the_first_release_freezes_without_collecting(collector_at_rest):
    alive = _tensor_in_a_cycle()
    release_memory()
    assert alive() is not None  # frozen with the imports, never scanned again


@pytest.mark.skipif(_malloc_trim() is None, reason="glibc only")
def test_release_memory_hands_the_heaps_free_pages_back():
    # 100 kB blocks come from malloc's heap (under its mmap threshold); the last one kept
    # pins the heap's top, so free() alone cannot shrink it.
    process = psutil.Process()
    blocks = [bytearray(100_000) for _ in range(2000)]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])
    kept = blocks[-1]
    del blocks
    before = process.memory_info().rss
    release_memory()
    assert before - process.memory_info().rss > 100e6
    assert kept[0] == ord("x")
