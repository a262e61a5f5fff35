"""Image folders decoded in parallel into one memory-mapped cache file, reused by later loads
(trainables.data._image_cache, _decode): the same pixels and splits as decoding one file at a
time, no decoding the second time, a new entry for a changed file, eviction to the budget, a
killed decoder's leftovers never trusted, a dataset too big refused before any work, and
trials that read the map instead of copies."""

from __future__ import annotations

import gc
import json
import os
import pickle
import pwd
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image

import trainables.data._decode as decode
import trainables.data._image_cache as image_cache
from tests.bad_images import write_image, write_truncated_jpeg
from trainables.data import (
    TENSOR_FIELDS,
    DataError,
    DataOptions,
    limit_train,
    load_dataset,
    resplit,
    resplit_index,
    split_stratified,
)
from trainables.data.image_files import image_files, read_image, read_images, skipped_line
from trainables.errors import UserError
from trainables.feature_files import file_bytes

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("cat", "dog", "eel")
SIZE = 16


def make_folder(root: Path, per_class: int = 8, seed: int = 0) -> Path:
    """PNGs and JPEGs of a few sizes, one folder per class; none twice ``SIZE``, so the JPEGs'
    draft decode is the full decode (exact pixels)."""
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            suffix = ".jpg" if i % 2 else ".png"
            write_image(root / name / f"{i}{suffix}", seed + 100 * c + i, size=10 + 3 * (i % 7))
    return root


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(image_cache.IMAGES.folder_env, str(folder))
    monkeypatch.setenv(image_cache.IMAGES.budget_env, "1")
    return folder


@pytest.fixture
def decodes(monkeypatch) -> list[int]:
    """How many files each load decoded."""
    counted: list[int] = []
    real = image_cache.decode_files

    def counting(target, paths, *args, **kwargs):
        counted.append(len(paths))
        return real(target, paths, *args, **kwargs)

    monkeypatch.setattr(image_cache, "decode_files", counting)
    return counted


def old_way(root: Path, options: DataOptions):
    """What loading did before the cache: one file at a time, stacked, then split."""
    paths = [p for name in CLASSES for p in image_files(root / name)]
    labels = np.repeat(np.arange(len(CLASSES)), [len(image_files(root / c)) for c in CLASSES])
    batch = read_images(paths, options.image_size)
    data = split_stratified(
        torch.from_numpy(batch.images), labels[batch.read], CLASSES, options, f"imagefolder:{root}"
    )
    return data, batch.skipped, len(paths)


def assert_same_tensors(a, b) -> None:
    for field in TENSOR_FIELDS:
        assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_decode_gives_the_old_pixels_splits_and_skipped_files(
    tmp_path, cache_dir, monkeypatch, workers
):
    monkeypatch.setattr(decode, "MIN_FILES_PER_WORKER", 1)
    monkeypatch.setattr(decode, "usable_cores", lambda: workers)
    root = make_folder(tmp_path / "data", per_class=9)
    write_truncated_jpeg(root / "dog" / "broken.jpg")  # unreadable: rows move once
    options = DataOptions(split_seed=3, image_size=SIZE)
    data = load_dataset(f"imagefolder:{root}", options)
    want, skipped, total = old_way(root, options)
    assert_same_tensors(data, want)
    assert data.notes == (f"imagefolder:{root}: {skipped_line(skipped, total, root)}",)
    assert "dog/broken.jpg (" in data.notes[0] and "of 28" in data.notes[0]
    assert data.backing is not None and Path(data.backing.path).parent == cache_dir


def test_without_a_cache_workers_decode_into_shared_memory(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(decode, "MIN_FILES_PER_WORKER", 1)
    monkeypatch.setattr(decode, "usable_cores", lambda: 2)
    monkeypatch.setenv(image_cache.IMAGES.budget_env, "0")
    root = make_folder(tmp_path / "data")
    options = DataOptions(split_seed=1, image_size=SIZE)
    data = load_dataset(f"imagefolder:{root}", options)
    assert data.backing is None and not cache_dir.exists()
    assert_same_tensors(data, old_way(root, options)[0])
    assert "memfd:decoded-images" in _mapping_of(data.train_x.data_ptr())


def test_a_worker_runs_on_python_3_10_and_decodes_with_neither_folder_on_its_path(tmp_path):
    command = decode.worker_command()
    assert command[0] == sys.executable and command[1] == "-c"  # no -P: Python 3.11 only
    write_image(tmp_path / "a.png", 3, size=SIZE)
    out = tmp_path / "out.bin"
    out.write_bytes(bytes(3 * SIZE * SIZE))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "numpy.py").write_text("raise ImportError('the working folder is on sys.path')")
    task = {"target": [str(out), 0, [1, 3, SIZE, SIZE]], "size": SIZE, "mode": "RGB"}
    task["parent"] = os.getpid()
    task["items"] = [[0, 0, str(tmp_path / "a.png")]]
    done = subprocess.run(
        command, input=json.dumps(task).encode(), cwd=cwd, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(done.stdout) == []
    pixels = np.fromfile(out, np.uint8).reshape(3, SIZE, SIZE)
    np.testing.assert_array_equal(pixels, read_image(tmp_path / "a.png", SIZE))


NOISY = """
import sys
import trainables.data._decode as decode
from trainables.data import DataOptions, load_dataset

decode.MIN_FILES_PER_WORKER, decode.usable_cores = 1, lambda: 2
data = load_dataset(f"imagefolder:{sys.argv[1]}", DataOptions(image_size=16))
print(len(data.train_x) + len(data.val_x) + len(data.test_x))
"""


def test_a_worker_writing_much_to_stderr_still_finishes(tmp_path, cache_dir):
    root = make_folder(tmp_path / "data")
    site = tmp_path / "site"
    site.mkdir()  # every interpreter started with it on its path writes 256 KiB to stderr
    (site / "sitecustomize.py").write_text("import sys\nsys.stderr.write('w' * 2**18)\n")
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    done = subprocess.run(
        [sys.executable, "-c", NOISY, str(root)], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode().split() == ["24"]


def test_draft_decoding_keeps_small_jpegs_exact_and_large_ones_within_levels(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, (32, 24, 3), dtype=np.uint8), np.ones((25, 25, 1)))
    Image.fromarray(smooth.astype(np.uint8)).save(tmp_path / "big.jpg", quality=90)
    write_image(tmp_path / "small.png", 1, size=256)
    Image.open(tmp_path / "small.png").save(tmp_path / "small.jpg")
    files = decode._image_files()
    for name, size, tolerance in (("small.jpg", 224, 0.0), ("big.jpg", 64, 3.0)):
        path = tmp_path / name
        drafted = files.decode_image(path, size, "RGB", draft=True).transpose(2, 0, 1)
        full = read_image(path, size)
        assert np.abs(drafted.astype(int) - full).mean() <= tolerance, name
    with Image.open(tmp_path / "big.jpg") as img:
        img.draft(img.mode, (64, 64))
        assert img.size == (75, 100)  # decoded at 1/8 scale: the draft did act


def test_a_second_load_maps_the_file_and_decodes_nothing(tmp_path, cache_dir, decodes):
    root = make_folder(tmp_path / "data")
    options = DataOptions(image_size=SIZE)
    first = load_dataset(f"imagefolder:{root}", options)
    second = load_dataset(f"imagefolder:{root}", options)
    assert decodes == [24]
    assert_same_tensors(first, second)
    assert first.backing.path == second.backing.path
    assert sorted(p.suffix for p in cache_dir.glob("images-*")) == [".json", ".lock", ".npy"]


def test_a_changed_file_makes_a_new_entry(tmp_path, cache_dir, decodes):
    root = make_folder(tmp_path / "data")
    options = DataOptions(image_size=SIZE)
    before = load_dataset(f"imagefolder:{root}", options)
    changed = write_image(root / "cat" / "0.png", 999, size=10)
    os.utime(changed, ns=(1, 1))
    after = load_dataset(f"imagefolder:{root}", options)
    assert decodes == [24, 24]
    assert len(list(cache_dir.glob("images-*.npy"))) == 2
    assert before.backing.path != after.backing.path
    rows = torch.cat([after.train_x, after.val_x, after.test_x])
    assert any(torch.equal(row, torch.from_numpy(read_image(changed, SIZE))) for row in rows)


def test_a_chmod_or_another_pillow_makes_another_key(tmp_path, monkeypatch):
    root = make_folder(tmp_path / "data")
    source = image_cache.ImageSource(
        paths=image_files(root / "cat"),
        labels=np.zeros(8, dtype=np.int64),
        classes=("cat",),
        name="imagefolder:cat",
        what="class folder",
        root=root,
    )
    options = DataOptions(image_size=SIZE)
    first = image_cache.cache_key(source, options, SIZE)
    assert image_cache.cache_key(source, options, SIZE) == first
    stat = os.stat(source.paths[0])
    time.sleep(0.01)
    os.chmod(source.paths[0], 0o600 if stat.st_mode & 0o777 != 0o600 else 0o644)
    assert os.stat(source.paths[0]).st_mtime_ns == stat.st_mtime_ns  # only ctime moved
    chmodded = image_cache.cache_key(source, options, SIZE)
    assert chmodded != first
    monkeypatch.setattr(image_cache.PIL, "__version__", "0.0.1")
    assert image_cache.cache_key(source, options, SIZE) not in (first, chmodded)
    monkeypatch.undo()
    monkeypatch.setattr(image_cache, "DRAFT", not image_cache.DRAFT)
    assert image_cache.cache_key(source, options, SIZE) not in (first, chmodded)


def test_a_home_that_cannot_be_found_means_uncached_with_a_note(tmp_path, monkeypatch):
    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv(image_cache.IMAGES.folder_env, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    root = make_folder(tmp_path / "data")
    options = DataOptions(image_size=SIZE)
    data = load_dataset(f"imagefolder:{root}", options)
    assert data.backing is None
    assert_same_tensors(data, old_way(root, options)[0])
    assert data.notes == (
        f"imagefolder:{root}: uncached: the image cache cannot place its folder "
        "'~/.cache/finetune-sweeps/images' (Could not determine home directory.)",
    )


@pytest.mark.parametrize("budget", ["20GB", "nan", "inf"])
def test_a_budget_that_is_not_a_number_is_refused_in_one_line(tmp_path, monkeypatch, budget):
    monkeypatch.setenv(image_cache.IMAGES.budget_env, budget)
    root = make_folder(tmp_path / "data", per_class=1)
    with pytest.raises(UserError) as err:
        load_dataset(f"imagefolder:{root}", DataOptions(image_size=SIZE))
    assert str(err.value) == (
        f"$FINETUNE_SWEEPS_IMAGE_CACHE_GIB={budget!r} is not a number of GiB: set it to one "
        "such as 20, or to 0 to turn the image cache off"
    )


def test_old_entries_are_evicted_to_the_budget(tmp_path, cache_dir, monkeypatch):
    entry = file_bytes((24, 3, SIZE, SIZE), np.dtype(np.uint8))
    monkeypatch.setenv(image_cache.IMAGES.budget_env, str(1.5 * entry / 2**30))
    options = DataOptions(image_size=SIZE)
    first = load_dataset(f"imagefolder:{make_folder(tmp_path / 'a')}", options)
    kept = Path(first.backing.path)
    del first
    gc.collect()  # unmapped: its shared lock goes with the mapping
    second = load_dataset(f"imagefolder:{make_folder(tmp_path / 'b', seed=7)}", options)
    assert [p.name for p in cache_dir.glob("images-*.npy")] == [Path(second.backing.path).name]
    assert not kept.exists() and not kept.with_suffix(".json").exists()


def test_a_file_in_use_is_not_evicted_and_the_new_one_goes_to_memory(
    tmp_path, cache_dir, monkeypatch
):
    entry = file_bytes((24, 3, SIZE, SIZE), np.dtype(np.uint8))
    monkeypatch.setenv(image_cache.IMAGES.budget_env, str(1.5 * entry / 2**30))
    options = DataOptions(image_size=SIZE)
    first = load_dataset(f"imagefolder:{make_folder(tmp_path / 'a')}", options)
    second = load_dataset(f"imagefolder:{make_folder(tmp_path / 'b', seed=7)}", options)
    assert Path(first.backing.path).exists() and second.backing is None
    assert len(second.notes) == 1 and "uncached: the image cache at" in second.notes[0]


KILLED = """
import os, signal, sys
import trainables.data._decode as decode
from trainables.data import DataOptions, load_dataset

real = decode.decode_rows

def decode_half_then_die(files, out, items, size, mode):
    real(files, out, items[: len(items) // 2], size, mode)
    os.kill(os.getpid(), signal.SIGKILL)

decode.decode_rows = decode_half_then_die
load_dataset(f"imagefolder:{sys.argv[1]}", DataOptions(image_size=16))
"""


def test_a_decoder_killed_midway_leaves_nothing_a_later_load_trusts(tmp_path, cache_dir, decodes):
    root = make_folder(tmp_path / "data")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED, str(root)], env=env, capture_output=True, timeout=120
    )
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert list(cache_dir.glob("images-*.npy")) == []  # only a partial file
    assert list(cache_dir.glob(".images-*.tmp.npy"))
    options = DataOptions(image_size=SIZE)
    data = load_dataset(f"imagefolder:{root}", options)
    assert decodes == [24]
    assert_same_tensors(data, old_way(root, options)[0])


SLOW_SITE = """
import time
from PIL import Image

real_open = Image.open

def slow_open(*args, **kwargs):
    time.sleep(0.05)
    return real_open(*args, **kwargs)

Image.open = slow_open
"""


def _decoders_of(driver: psutil.Process) -> list[psutil.Process]:
    return [p for p in driver.children() if "_decode.py" in " ".join(p.cmdline())]


def test_workers_of_a_driver_killed_midway_exit_and_a_rerun_gives_the_pixels(
    tmp_path, cache_dir, decodes
):
    root = make_folder(tmp_path / "data", per_class=100)
    site = tmp_path / "site"
    site.mkdir()  # every process with it on its path takes 50 ms to open an image
    (site / "sitecustomize.py").write_text(SLOW_SITE)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    script = "import sys, trainables.data._decode as d; d.usable_cores = lambda: 2\n"
    script += "from trainables.data import DataOptions, load_dataset\n"
    script += "load_dataset(f'imagefolder:{sys.argv[1]}', DataOptions(image_size=16))\n"
    proc = subprocess.Popen([sys.executable, "-c", script, str(root)], env=env)
    try:
        driver = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while len(workers := _decoders_of(driver)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) == 2
        time.sleep(1.0)  # decoding: 300 images take the two workers 7.5 s
        assert proc.poll() is None
        proc.kill()
        proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=3)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert alive == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert list(cache_dir.glob(".images-*.tmp.npy"))  # left by the killed driver
    options = DataOptions(image_size=SIZE)
    data = load_dataset(f"imagefolder:{root}", options)
    assert decodes == [300]
    assert_same_tensors(data, old_way(root, options)[0])


def test_a_crashed_worker_is_one_line_naming_its_last_words(tmp_path, cache_dir, monkeypatch):
    root = make_folder(tmp_path / "data")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys\nif sys.argv[0] == '-c':\n"
        "    sys.stderr.write('Traceback (most recent call last):\\nMemoryError: here\\n\\n')\n"
        "    os._exit(3)\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.setattr(decode, "MIN_FILES_PER_WORKER", 1)
    monkeypatch.setattr(decode, "usable_cores", lambda: 2)
    with pytest.raises(DataError) as err:
        load_dataset(f"imagefolder:{root}", DataOptions(image_size=SIZE))
    assert str(err.value) == (
        f"imagefolder:{root}: an image decoder worker exited with 3: MemoryError: here"
    )


def test_a_dataset_too_big_for_cache_and_memory_is_refused_in_one_line(
    tmp_path, cache_dir, monkeypatch, decodes
):
    root = make_folder(tmp_path / "data")
    monkeypatch.setattr(image_cache, "available_memory", lambda: 10_000)
    monkeypatch.setattr(image_cache, "disk_free", lambda folder: 20_000)
    with pytest.raises(DataError) as err:
        load_dataset(f"imagefolder:{root}", DataOptions(image_size=64))
    text = str(err.value)
    assert "\n" not in text and decodes == []
    assert "24 images at 64 px need 0.000275 GiB decoded" in text
    assert "more than the 9.31e-06 GiB of memory available" in text
    assert f"disk ({cache_dir}) has 1.86e-05 GiB free" in text
    assert "use a smaller --image-size" in text and "FINETUNE_SWEEPS_IMAGE_CACHE_DIR" in text


def test_available_memory_is_the_smaller_of_the_host_s_and_the_cgroup_s(tmp_path, monkeypatch):
    host = image_cache._host_available()
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # Bytes, not KiB read as bytes (a fixed bug: 1024x too little).
    assert physical // 1000 < host <= physical
    monkeypatch.setattr(image_cache, "_host_available", lambda: 8 * 2**30)
    monkeypatch.setattr(image_cache, "CGROUP", tmp_path)
    assert image_cache.available_memory() == 8 * 2**30  # no cgroup files
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "memory.current").write_text(f"{2**30}\n")
    assert image_cache.available_memory() == 8 * 2**30
    (tmp_path / "memory.max").write_text(f"{3 * 2**30}\n")
    assert image_cache.available_memory() == 2 * 2**30
    (tmp_path / "memory.max").write_text(f"{20 * 2**30}\n")
    assert image_cache.available_memory() == 8 * 2**30
    (tmp_path / "memory.current").write_text(f"{21 * 2**30}\n")
    assert image_cache.available_memory() == 0


def test_a_full_disk_falls_back_to_memory_with_one_line(tmp_path, cache_dir, monkeypatch):
    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    root = make_folder(tmp_path / "data")
    options = DataOptions(image_size=SIZE)
    data = load_dataset(f"imagefolder:{root}", options)
    assert data.backing is None
    assert_same_tensors(data, old_way(root, options)[0])
    assert len(data.notes) == 1 and "No space left on device" in data.notes[0]
    assert data.notes[0].startswith(f"imagefolder:{root}: uncached: the image cache at")


def _mapping_of(address: int) -> str:
    for line in Path("/proc/self/maps").read_text().splitlines():
        low, high = (int(v, 16) for v in line.split()[0].split("-"))
        if low <= address < high:
            return line
    return ""


def test_cached_data_pickles_as_the_files_path_and_rows(tmp_path, cache_dir):
    data = load_dataset(
        f"imagefolder:{make_folder(tmp_path / 'data')}", DataOptions(image_size=SIZE)
    )
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(data, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 3  # the labels; the images are rows of the file
    back = pickle.loads(payload, buffers=buffers)
    assert_same_tensors(back, data)
    assert data.backing.path in _mapping_of(back.train_x.data_ptr())
    assert data.backing.path in _mapping_of(back.test_x.data_ptr())
    shipped: list[pickle.PickleBuffer] = []
    pickle.dumps(data.without_backing(), protocol=5, buffer_callback=shipped.append)
    assert len(shipped) == 6


def test_resplit_and_limit_train_work_on_cached_data(tmp_path, cache_dir):
    root = make_folder(tmp_path / "data", per_class=12)
    options = DataOptions(image_size=SIZE)
    data = load_dataset(f"imagefolder:{root}", options)
    plain = old_way(root, options)[0]
    assert_same_tensors(resplit(data, 5), resplit(plain, 5))
    assert all(
        np.array_equal(a, b)
        for a, b in zip(resplit_index(data, 5), resplit_index(plain, 5), strict=True)
    )
    limited = limit_train(data, 10, seed=1)
    assert_same_tensors(limited, limit_train(plain, 10, seed=1))
    back = pickle.loads(pickle.dumps(resplit(limited, 5), protocol=5))
    assert_same_tensors(back, resplit(limit_train(plain, 10, seed=1), 5))


def test_a_manifest_keeps_its_given_splits_through_the_cache(tmp_path, cache_dir):
    root = make_folder(tmp_path / "data")
    files = sorted(root.rglob("*.*"))
    lines = [
        f"{p.relative_to(root)},{p.parent.name},{'train' if i % 4 else 'test'}"
        for i, p in enumerate(files)
    ]
    manifest = root / "list.csv"
    manifest.write_text("path,label,split\n" + "\n".join(lines))
    data = load_dataset(f"csv:{manifest}", DataOptions(image_size=SIZE))
    again = load_dataset(f"csv:{manifest}", DataOptions(image_size=SIZE))
    assert len(data.test_y) == 6 and data.backing is not None
    assert_same_tensors(data, again)
    test_files = [p for i, p in enumerate(files) if i % 4 == 0]
    assert all(
        torch.equal(x, torch.from_numpy(read_image(p, SIZE)))
        for x, p in zip(data.test_x, test_files, strict=True)
    )


TRAIN_FROM_MAP = """
import sys
from pathlib import Path
import torch
import trainables.data._image_cache as image_cache
from trainables.config import TrialConfig
from trainables.data import DataOptions, load_dataset
from trainables.engine import fit

def anon() -> int:
    lines = Path("/proc/self/status").read_text().splitlines()
    return int(next(l for l in lines if l.startswith("RssAnon")).split()[1]) * 1024

data_bytes = int(sys.argv[2])
image_cache.available_memory = lambda: data_bytes // 2  # half the data: only the map can hold it
torch.set_num_threads(1)
before = anon()
data = load_dataset(f"imagefolder:{sys.argv[1]}", DataOptions(image_size=256))
assert data.backing is not None
cfg = TrialConfig(backbone="smallcnn", batch_size=64, max_epochs=1, image_size=32)
list(fit(cfg, data, torch.device("cpu")))
print(anon(), anon() - before, Path(data.backing.path).stat().st_size)
"""


@pytest.mark.slow
def test_a_dataset_twice_the_memory_budget_trains_from_the_map(tmp_path, cache_dir):
    root = tmp_path / "data"
    for c, name in enumerate(CLASSES):
        for i in range(1000):
            write_image(root / name / f"{i}.png", 10_000 * c + i, size=8)
    data_bytes = 3000 * 3 * 256 * 256  # 590 MB: more than the process's own ~300 MB
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        run = subprocess.run(
            [sys.executable, "-c", TRAIN_FROM_MAP, str(root), str(data_bytes)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)  # not 590 MB in each kept tmp_path
    assert run.returncode == 0, run.stderr[-3000:]
    anon, grown, mapped = map(int, run.stdout.split()[-3:])
    assert mapped > data_bytes
    assert anon < data_bytes and grown < data_bytes / 2, (anon, grown, data_bytes)


def test_unreadable_files_only_refuse_their_class(tmp_path, cache_dir):
    root = make_folder(tmp_path / "data", per_class=3)
    for path in (root / "eel").iterdir():
        path.unlink()
    write_truncated_jpeg(root / "eel" / "a.jpg")
    with pytest.raises(
        DataError, match=r"class folder 'eel' has no readable image \(1 unreadable: eel/a.jpg"
    ):
        load_dataset(f"imagefolder:{root}", DataOptions(image_size=SIZE))
    assert sorted(p.name for p in cache_dir.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_a_ray_trial_on_the_node_maps_the_cache_file(tmp_path, cache_dir):
    import ray

    data = load_dataset(
        f"imagefolder:{make_folder(tmp_path / 'data')}", DataOptions(image_size=SIZE)
    )
    # The task goes by value: Ray's worker cannot import this test module.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote
        def mapped_from(received) -> tuple[list[str], int]:
            """The /proc/self/maps lines holding the received images."""
            lines = []
            maps = Path("/proc/self/maps").read_text().splitlines()
            for tensor in (received.train_x, received.val_x):
                address = tensor.data_ptr()
                for line in maps:
                    low, high = (int(v, 16) for v in line.split()[0].split("-"))
                    if low <= address < high:
                        lines.append(line)
            return lines, int(received.train_x.sum())

        lines, total = ray.get(mapped_from.remote(data))
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert len(lines) == 2 and all(data.backing.path in line for line in lines), lines
    assert total == int(data.train_x.sum())
