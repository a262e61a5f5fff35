"""The feature cache's folder: a full disk is an error the trial survives (a real, tiny tmpfs),
eviction of the least recently used files down to the budget, and never of a file a trial has
open or is computing."""

import contextlib
import os
import pwd
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from trainables.feature_files import (
    BUDGET_ENV,
    FOLDER_ENV,
    CacheFull,
    CacheSettingError,
    FeatureCache,
    file_bytes,
)

ROWS, COLS = 64, 1024  # a file of 256 KiB and a header
SIZE = file_bytes((ROWS, COLS))
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def _fill(out: np.ndarray, rows: slice) -> None:
    out[rows] = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None]


def _load(cache: FeatureCache, name: str, keep=()) -> np.ndarray:
    return cache.load_or_compute(name, (ROWS, COLS), _fill, chunk=16, keep=keep)


def _names(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.npy") if not p.name.startswith("."))


def _age(folder: Path, name: str, seconds: int) -> None:
    """Last used ``seconds`` after the epoch: older than anything used in the test."""
    os.utime(folder / f"{name}.npy", (seconds, seconds))


# --- a full disk ----------------------------------------------------------------------------


@contextlib.contextmanager
def _tiny_tmpfs(size: str):
    """A real filesystem of ``size``, mounted for the test (needs root with CAP_SYS_ADMIN)."""
    folder = Path(tempfile.mkdtemp(prefix="full-disk-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a {size} tmpfs to fill (root needed): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()


# Run in a child process: before the fix, the write into the sparse mapping killed the
# process with SIGBUS (status 135 under Ray), which would take pytest down with it.
FULL_DISK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np
    from trainables.feature_files import FeatureCache

    cache = FeatureCache(Path(sys.argv[1]), budget_bytes=2**30)
    def fill(out, rows):
        out[rows] = 1.0
    try:
        cache.load_or_compute("big", (1024, 1024), fill, chunk=32)  # 4 MiB on a 1 MiB disk
    except OSError as err:
        print("OSError", err.errno, flush=True)
    """
)


def test_a_full_disk_is_an_error_before_anything_is_written_not_a_sigbus():
    with _tiny_tmpfs("1m") as disk:
        done = subprocess.run(
            [sys.executable, "-c", FULL_DISK, str(disk / "features")],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=120,
        )
        assert done.returncode == 0, f"status {done.returncode}: {done.stderr[-2000:]}"
        assert done.stdout.split() == ["OSError", "28"]  # ENOSPC
        left = sorted(p.name for p in (disk / "features").iterdir())
        assert left == ["big.lock", "space.flock"]  # no half-made file for the next trial
        assert os.statvfs(disk).f_bfree == os.statvfs(disk).f_blocks  # and nothing reserved


FULL_DISK_TRIAL = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import dataclasses, torch
    from trainables.config import TrialConfig
    from trainables.data import load_dataset
    from trainables.engine import fit
    from trainables.feature_cache import FeatureCache, feature_cache_note

    data = load_dataset("digits")
    data = dataclasses.replace(data, train_x=data.train_x[:200], train_y=data.train_y[:200])
    cfg = TrialConfig(backbone="smallcnn", freeze="partial:1", lr=0.02, max_epochs=1)
    cache = FeatureCache(Path(sys.argv[1]), budget_bytes=2**30)
    cached = list(fit(cfg, data, torch.device("cpu"), cache=cache))
    plain = list(fit(cfg.replace(feature_cache=False), data, torch.device("cpu")))
    print(feature_cache_note(cfg, cache))
    print(cached[-1].metrics["val_loss"] == plain[-1].metrics["val_loss"])
    """
)


def test_a_trial_on_a_full_disk_trains_uncached_and_says_why():
    with _tiny_tmpfs("64k") as disk:  # smaller than the features of train
        done = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", FULL_DISK_TRIAL, str(disk / "features")],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
        )
    assert done.returncode == 0, f"status {done.returncode}: {done.stderr[-2000:]}"
    note, same = done.stdout.strip().splitlines()[-2:]
    folder = str(disk / "features")
    assert note == f"uncached: feature cache folder {folder!r}: [Errno 28] No space left on device"
    assert same == "True"  # the same numbers as a trial with the cache switched off


# --- eviction down to the budget ------------------------------------------------------------


def test_a_new_file_evicts_the_least_recently_used_down_to_the_budget(tmp_path):
    cache = FeatureCache(tmp_path, budget_bytes=2 * SIZE)
    _load(cache, "a"), _load(cache, "b")
    _age(tmp_path, "a", 1000)
    _age(tmp_path, "b", 2000)
    read = _load(cache, "a")  # a is used again: b is now the least recently used
    np.testing.assert_array_equal(read[:, 0], np.arange(ROWS))
    del read
    _load(cache, "c")
    assert _names(tmp_path) == ["a", "c"]
    assert (cache.computed, cache.read) == (3, 1)
    assert sum(p.stat().st_size for p in tmp_path.glob("*.npy")) == 2 * SIZE


def test_the_budget_counts_the_files_as_they_are_on_disk(tmp_path):
    cache = FeatureCache(tmp_path, budget_bytes=SIZE)
    _load(cache, "a")
    assert (tmp_path / "a.npy").stat().st_size == SIZE  # its header counts too
    assert os.stat(tmp_path / "a.npy").st_blocks * 512 >= SIZE  # reserved, not sparse
    with pytest.raises(CacheFull, match=r"is over the feature cache's"):
        cache.load_or_compute("huge", (ROWS + 1, COLS), _fill, chunk=16)
    assert _names(tmp_path) == ["a"]  # nothing evicted for a file that could never fit


def test_a_file_a_trial_has_open_is_never_evicted(tmp_path):
    cache = FeatureCache(tmp_path, budget_bytes=2 * SIZE)
    held = _load(cache, "a")  # this trial still trains on it
    _load(cache, "b")
    _age(tmp_path, "a", 1000)
    _age(tmp_path, "b", 2000)
    _load(cache, "c")
    assert _names(tmp_path) == ["a", "c"]  # b went, though a was older
    np.testing.assert_array_equal(held[:, 0], np.arange(ROWS))


def test_the_trials_own_other_splits_are_kept_while_it_makes_room(tmp_path):
    cache = FeatureCache(tmp_path, budget_bytes=2 * SIZE)
    _load(cache, "val"), _load(cache, "other")
    _age(tmp_path, "val", 1000)
    _load(cache, "train", keep=["train", "val"])  # before it opens val
    assert _names(tmp_path) == ["train", "val"]


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np
    from trainables.feature_files import FeatureCache

    cache = FeatureCache(Path(sys.argv[1]), budget_bytes=2**30)
    def fill(out, rows):
        if sys.argv[3] == "hang":  # computing, never done
            print("computing", flush=True)
            time.sleep(3600)
        out[rows] = 0.0
    held = cache.load_or_compute(sys.argv[2], (64, 1024), fill, chunk=64)
    print("holding", flush=True)
    time.sleep(3600)
    """
)


def _holder(folder: Path, name: str, mode: str) -> subprocess.Popen:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), name, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    assert holder.stdout.readline().strip() in {"holding", "computing"}
    return holder


@pytest.mark.parametrize("mode", ["holding", "hang"], ids=["mapped", "computing"])
def test_a_file_another_process_has_open_or_is_computing_is_never_evicted(tmp_path, mode):
    cache = FeatureCache(tmp_path, budget_bytes=2 * SIZE)
    holder = _holder(tmp_path, "theirs", mode)
    try:
        for data in tmp_path.glob("*theirs*.npy"):
            os.utime(data, (1000, 1000))  # the oldest: the first to go, were it free
        _load(cache, "a")
        _age(tmp_path, "a", 2000)
        _load(cache, "b")  # a goes, theirs stays
        assert _names(tmp_path) == (["b", "theirs"] if mode == "holding" else ["b"])
        assert len(list(tmp_path.glob("*theirs*.npy"))) == 1
        with pytest.raises(CacheFull, match=r"GiB are in files that trials are using"):
            _load(cache, "c", keep=["b"])
    finally:
        holder.kill()
        holder.wait(timeout=30)
    _load(cache, "c", keep=["b"])  # its process ended: its file (or half of one) can go
    assert _names(tmp_path) == ["b", "c"]
    assert not [p.name for p in tmp_path.iterdir() if "theirs" in p.name and "lock" not in p.name]


def test_a_leftover_of_a_killed_creation_is_removed_when_room_is_made(tmp_path):
    cache = FeatureCache(tmp_path, budget_bytes=2 * SIZE)
    _load(cache, "a")
    (tmp_path / ".b.tmp.npy.12345.new").write_bytes(b"\0" * SIZE)
    _load(cache, "c")
    assert not list(tmp_path.glob("*.new"))
    assert _names(tmp_path) == ["a", "c"]


def _leave_a_partial_marked_done(tmp_path: Path) -> None:
    """A partial file whose every chunk an earlier process (an orphan) marked done, wrongly."""
    data = np.lib.format.open_memmap(tmp_path / ".a.tmp.npy", "w+", np.float32, (ROWS, COLS))
    data[:] = -1
    del data
    (tmp_path / ".a.tmp.done").write_bytes(b"\x01" * (ROWS // 16))


def test_a_partial_file_is_resumed_unless_resume_is_off(tmp_path):
    cache = FeatureCache(tmp_path, budget_bytes=4 * SIZE)
    _leave_a_partial_marked_done(tmp_path)
    assert (_load(cache, "a") == -1).all()  # the feature cache resumes its chunks
    (tmp_path / "a.npy").unlink()
    _leave_a_partial_marked_done(tmp_path)
    fresh = cache.load_or_compute("a", (ROWS, COLS), _fill, chunk=ROWS, resume=False)
    np.testing.assert_array_equal(fresh[:, 0], np.arange(ROWS, dtype=np.float32))


def test_the_feature_cache_refuses_a_bad_budget_and_is_off_without_a_home(monkeypatch):
    monkeypatch.setenv(BUDGET_ENV, "two")
    with pytest.raises(CacheSettingError, match=r"^\$FINETUNE_SWEEPS_FEATURE_CACHE_GIB='two' is"):
        FeatureCache.from_env()
    monkeypatch.setenv(BUDGET_ENV, "1")
    monkeypatch.setenv(FOLDER_ENV, "~/features")
    monkeypatch.delenv("HOME")
    monkeypatch.setattr(pwd, "getpwuid", lambda uid: (_ for _ in ()).throw(KeyError(uid)))
    cache = FeatureCache.from_env()
    assert cache.budget_bytes == 0 and "cannot place its folder '~/features'" in cache.unusable


def test_a_dead_process_s_temporary_sidecar_is_removed_when_room_is_made(tmp_path):
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    dead = tmp_path / f".b.json.{int(gone.stdout)}.tmp"
    mine = tmp_path / f".c.json.{os.getpid()}.tmp"
    recent = tmp_path / f".d.json.{int(gone.stdout)}.tmp"
    for path in (dead, mine, recent):
        path.write_text("{}")
    for path in (dead, mine):
        os.utime(path, (1, 1))
    _load(FeatureCache(tmp_path, budget_bytes=2 * SIZE), "a")
    assert not dead.exists() and mine.exists() and recent.exists()
