"""What a frozen backbone outputs, computed once per node and shared by every trial that can use
it, so that those trials run only the layers they train.

A trial whose backbone is frozen (``backbone``, or its first K stages with ``partial:K``) and
whose input is not augmented sees the same frozen output for an image in every epoch: the
preprocessing has no parameters and frozen layers stay in eval mode. That output is computed
once, written to one ``.npy`` file per key in a node-local folder, and read back memory-mapped,
so trials on a node share one copy in the page cache. The trials that start together and find
it missing (a sweep's first ones) compute it together, a batch each in turn, rather than one
computing while the others wait. The key holds everything the output
depends on (the images' digest, backbone, weights, input size and normalisation, freeze spec,
device and precision): anything else gets a file of its own, never another's features.

The test split's output is computed only when a confirmation run scores the test split, after
training (``trainables.engine.evaluate_test``); a search trial never runs the backbone on it.

Folder: ``$FINETUNE_SWEEPS_FEATURE_CACHE``, default a folder under the system's temp folder
(node-local, where a home folder may be shared over the network). Size limit per trial, the
splits it uses together: ``$FINETUNE_SWEEPS_FEATURE_CACHE_GIB`` (default 2); above it the trial
runs uncached and says so. Nothing here removes old files: delete the folder to reclaim the space.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch
from torch import nn

from trainables import contract
from trainables.config import TrialConfig
from trainables.models import ImageClassifier, SplitError, split_frozen

# For a type only: the data module brings scikit-learn, a second of start-up for a process
# that only reads or writes the cache files.
if TYPE_CHECKING:
    from trainables.data import ImageData

FOLDER_ENV = "FINETUNE_SWEEPS_FEATURE_CACHE"
BUDGET_ENV = "FINETUNE_SWEEPS_FEATURE_CACHE_GIB"
DEFAULT_BUDGET_GIB = 2.0
FORMAT_VERSION = 1  # raise when what a file holds changes, so old files are not read
# Images per batch of the frozen layers, and per share of the work between trials computing
# the same file. On one CPU thread batches of 32 ran ResNet-18 10-15% faster per image than
# batches of 256 (96 and 224 px), and small shares keep the trials busy until the end.
TRAINING, TEST = "training", "test"  # what a trial asks the cache for (FeatureCache.uncached)
CHUNK_ROWS = {"cuda": 256, "cpu": 32}

_warned: set[str] = set()


class FeatureCacheWarning(UserWarning):
    """A trial that could use the cache runs uncached; the reason is in the message."""


@dataclass
class FeatureCache:
    """The node's folder of feature files; counts what this process computed and read, and
    says why the last ``feature_inputs`` that could use it did not: ``uncached[TRAINING]``
    for a trial's epochs, ``uncached[TEST]`` for the test scoring that ends it."""

    folder: Path
    budget_bytes: int
    computed: int = 0
    read: int = 0
    uncached: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> FeatureCache:
        default = Path(tempfile.gettempdir()) / f"finetune-sweeps-features-{os.getuid()}"
        folder = Path(os.environ.get(FOLDER_ENV) or default).expanduser()
        gib = float(os.environ.get(BUDGET_ENV) or DEFAULT_BUDGET_GIB)
        return cls(folder, int(gib * 2**30))

    def load_or_compute(
        self,
        name: str,
        shape: tuple[int, ...],
        fill: Callable[[np.ndarray, slice], None],
        chunk: int = CHUNK_ROWS["cpu"],
    ) -> np.ndarray:
        """The float32 array stored under ``name``. The trials on the node that find it missing
        compute it together, ``chunk`` rows at a time (``fill(out, rows)`` writes
        ``out[rows]``), and the first to see every chunk written moves it into place."""
        path = self.folder / f"{name}.npy"
        if not path.exists():
            self.folder.mkdir(parents=True, exist_ok=True)
            lock = self.folder / f"{name}.lock"
            with _locked(lock):
                partial = None if path.exists() else _Partial.open(self.folder, name, shape)
            if partial is not None:
                helped = partial.fill_with_others(fill, chunk)
                with _locked(lock):
                    partial.finish(path)
                if helped:
                    self.computed += 1
                    return _open(path)
        self.read += 1
        return _open(path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class _Partial:
    """A feature file being computed: the array (``.<name>.tmp.npy``) and one byte per chunk
    (``.<name>.tmp.done``) that says the chunk is written. A trial computing a chunk holds a
    lock on its byte, so another trial takes the next chunk instead of waiting, and a trial
    killed halfway releases its lock and leaves its chunk to the others. A reader never sees
    the array before every chunk is in it: it gets its real name only then."""

    def __init__(self, data: np.ndarray, done: BinaryIO, data_path: Path, done_path: Path):
        self.data, self.done = data, done
        self.data_path, self.done_path = data_path, done_path

    @classmethod
    def open(cls, folder: Path, name: str, shape: tuple[int, ...]) -> _Partial:
        """Opened, or created if missing; called under the key's lock, so nobody finishes
        and removes the files between their check and their opening."""
        data_path, done_path = folder / f".{name}.tmp.npy", folder / f".{name}.tmp.done"
        try:
            data = np.load(data_path, mmap_mode="r+")
            done = done_path.open("r+b")
        except (OSError, ValueError):  # missing, or left half-made by a killed trial
            _create(data_path, done_path, shape)
            data, done = np.load(data_path, mmap_mode="r+"), done_path.open("r+b")
        if data.shape != shape:  # the key fixes the shape; a file of another one is not ours
            raise OSError(f"{data_path} holds shape {data.shape}, expected {shape}")
        return cls(data, done, data_path, done_path)

    def fill_with_others(self, fill: Callable[[np.ndarray, slice], None], chunk: int) -> bool:
        """Computes the chunks nobody has taken, then waits for (or, if their trial died,
        computes) the rest; True if this trial computed any."""
        fd, rows = self.done.fileno(), len(self.data)
        chunks = range(math.ceil(rows / chunk))
        helped = False
        with self.done:
            for blocking in (False, True):  # first the free chunks, then the taken ones
                for index in chunks:
                    if _is_done(fd, index) or not _lock_byte(fd, index, blocking):
                        continue
                    try:
                        if not _is_done(fd, index):  # done while this trial waited for it
                            fill(self.data, slice(index * chunk, min(rows, (index + 1) * chunk)))
                            self.data.flush()  # on disk before it is marked done
                            os.pwrite(fd, b"\x01", index)
                            helped = True
                    finally:
                        fcntl.lockf(fd, fcntl.LOCK_UN, 1, index)
        return helped

    def finish(self, path: Path) -> None:
        """Moves the array into place; the first trial to get here does, under the key's lock."""
        del self.data
        if not path.exists():
            os.replace(self.data_path, path)
            self.done_path.unlink(missing_ok=True)


def _create(data_path: Path, done_path: Path, shape: tuple[int, ...]) -> None:
    """Both files, each made under another name and renamed: never half a header."""
    for path in (data_path, done_path):
        path.unlink(missing_ok=True)
    new = data_path.with_name(f"{data_path.name}.{os.getpid()}.new")
    try:
        np.lib.format.open_memmap(new, mode="w+", dtype=np.float32, shape=shape).flush()
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


def _open(path: Path) -> np.ndarray:
    return np.load(path, mmap_mode="r")


def uses_feature_cache(cfg: TrialConfig) -> bool:
    """Augmented input changes every epoch, and a trainable backbone changes every step."""
    return cfg.feature_cache and not cfg.augment and cfg.freeze != "none"


@dataclass(frozen=True)
class ModelInputs:
    """What the loop runs on what: the whole model on the images, or the layers after the
    frozen ones on the frozen output (the same numbers, the frozen layers run once)."""

    model: nn.Module  # has ``forward_with_embedding``
    train_x: torch.Tensor
    val_x: torch.Tensor
    test_x: torch.Tensor | None = None  # only for the test evaluation that ends a trial


class FeatureHead(nn.Module):
    """The layers of an ``ImageClassifier`` after its frozen ones; the loop trains and
    evaluates it in place of the whole model, and it updates the model's own parameters."""

    def __init__(self, model: ImageClassifier, rest: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.rest = rest

    def train(self, mode: bool = True) -> FeatureHead:
        # ``rest`` shares the model's modules; the model's own ``train`` keeps the frozen ones
        # in eval mode, which a plain walk over ``rest``'s children would undo.
        self.training = mode
        self.model.train(mode)
        return self

    def forward_with_embedding(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(self.rest, nn.Identity):
            # The first layer after the cut may work in place (a ResNet's ReLU), and on the CPU
            # a batch of evaluation is a view of the shared, read-only file.
            features = features.clone()
        embedding = self.model.neck(self.rest(features))
        return self.model.head(embedding), embedding

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.forward_with_embedding(features)[0]


def feature_inputs(
    cfg: TrialConfig,
    data: ImageData,
    model: ImageClassifier,
    device: torch.device,
    cache: FeatureCache,
    *,
    with_test: bool = False,
) -> ModelInputs | None:
    """The frozen output of train and val (and test, ``with_test``) from the cache, computed
    there first if missing; None when the trial cannot use the cache: then it runs uncached,
    as with ``feature_cache`` off."""
    if not uses_feature_cache(cfg):
        return None
    purpose = TEST if with_test else TRAINING
    cache.uncached.pop(purpose, None)
    try:
        split = split_frozen(model)
    except SplitError as err:
        return _uncached(cache, purpose, f"freeze {cfg.freeze!r} of {cfg.backbone}: {err}")
    frozen = nn.Sequential(model.preprocess, split.frozen)
    amp = cfg.amp and device.type == "cuda"
    shape = _output_shape(frozen, data.train_x[:1], device, amp)
    splits = {"train": data.train_x, "val": data.val_x}
    if with_test:  # read only here: a search trial never touches the test images
        splits["test"] = data.test_x
    size = sum(len(images) for images in splits.values()) * math.prod(shape) * 4
    if size > cache.budget_bytes:
        return _uncached(
            cache,
            purpose,
            f"the frozen output of {cfg.backbone} ({cfg.freeze}) for {', '.join(splits)} "
            f"would take {size / 2**30:.3g} GiB, over the feature cache's "
            f"{cache.budget_bytes / 2**30:.3g} GiB (${BUDGET_ENV})",
        )
    tensors = []
    for split_name, images in splits.items():
        name = feature_name(cfg, model, device, split_name, images)
        fill = _filler(frozen, images, device, amp, cfg.channels_last)
        try:
            chunk = CHUNK_ROWS.get(device.type, CHUNK_ROWS["cuda"])
            array = cache.load_or_compute(name, (len(images), *shape), fill, chunk)
        except OSError as err:  # a full disk or a folder this user cannot write
            reason = f"feature cache folder {str(cache.folder)!r}: {err}"
            return _uncached(cache, purpose, reason)
        tensors.append(_as_tensor(array))
    return ModelInputs(FeatureHead(model, split.rest), *tensors)


def _uncached(cache: FeatureCache, purpose: str, reason: str) -> None:
    """A trial that could use the cache runs uncached: the reason goes to the cache (for the
    trial's run and the sweep's summary) and, once per process, to the worker's log."""
    cache.uncached[purpose] = reason
    _warn_once(f"{reason}; {'scoring test' if purpose == TEST else 'training'} uncached")
    return None


def feature_cache_note(cfg: TrialConfig, cache: FeatureCache) -> str | None:
    """What the cache did for a trial that has run ``feature_inputs``: ``USED``, or
    ``UNCACHED_PREFIX`` and the reason; then, where the test scoring could not use it,
    ``; test`` and the same for it. None for a trial that cannot use the cache."""
    if not uses_feature_cache(cfg):
        return None
    prefix = contract.FEATURE_CACHE_UNCACHED_PREFIX
    training = cache.uncached.get(TRAINING)
    note = contract.FEATURE_CACHE_USED if training is None else prefix + training
    if TEST in cache.uncached:
        note += f"; test {prefix}{cache.uncached[TEST]}"
    return note


def feature_name(
    cfg: TrialConfig,
    model: ImageClassifier,
    device: torch.device,
    split: str,
    images: torch.Tensor,
) -> str:
    """A file name that changes with anything the frozen output of ``images`` depends on."""
    size = model.preprocess.size
    key = {
        "format": FORMAT_VERSION,
        "split": split,
        "images": images_digest(images),
        "backbone": cfg.backbone,
        "weights": weights_identity(cfg.weights, cfg.seed),
        "input_size": size,
        "mean": model.preprocess.mean.flatten().tolist(),
        "std": model.preprocess.std.flatten().tolist(),
        "freeze": cfg.freeze,
        "device": device.type,
        "bf16": cfg.amp and device.type == "cuda",
    }
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=12)
    freeze = cfg.freeze.replace(":", "")
    return f"{cfg.backbone}-{freeze}-{size}px-{split}-{digest.hexdigest()}"


def images_digest(images: torch.Tensor) -> str:
    """A digest of the uint8 images themselves: another split seed, train limit or dataset
    gives other images. BLAKE2b reads about 500 MB/s on one core (0.23 s for CIFAR-10's
    37,500 training images), small next to one pass of a backbone over them."""
    array = np.ascontiguousarray(images.numpy())
    digest = hashlib.blake2b(f"{array.dtype}{array.shape}".encode(), digest_size=16)
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def weights_identity(weights: str, seed: int) -> str:
    """What fixes the frozen weights: torchvision's release for ImageNet's, the seed for a
    random initialisation, the content for a file (a file rewritten within the same clock
    tick keeps its size and modification time)."""
    if weights == "none":
        return f"random-seed{seed}"
    if weights == "imagenet":
        import torchvision

        return f"imagenet-torchvision{torchvision.__version__}"
    stat = os.stat(weights)
    version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    return f"file-{_file_digest(os.path.abspath(weights), version)}"


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, version: tuple[int, int, int]) -> str:
    """Once per file version and process: a trial process reused for the next trial (Ray's
    ``reuse_actors``) does not read ResNet-50's 100 MB again (about 0.2 s)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


@torch.no_grad()
def _output_shape(
    frozen: nn.Module, one: torch.Tensor, device: torch.device, amp: bool
) -> tuple[int, ...]:
    frozen.eval()
    with _autocast(amp):
        return tuple(frozen(one.to(device)).shape[1:])


def _filler(
    frozen: nn.Module, images: torch.Tensor, device: torch.device, amp: bool, channels_last: bool
) -> Callable[[np.ndarray, slice], None]:
    @torch.no_grad()
    def fill(out: np.ndarray, rows: slice) -> None:
        frozen.eval()
        x = images[rows].to(device)
        if device.type == "cuda" and channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(amp):
            features = frozen(x)
        out[rows] = features.float().cpu().numpy()

    return fill


def _autocast(amp: bool):
    # The same precision as the uncached loop, so both runs see the same frozen output.
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp else contextlib.nullcontext()


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        # The file is mapped read-only; nothing writes into it (FeatureHead copies first).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, FeatureCacheWarning, stacklevel=4)  # feature_inputs' caller
