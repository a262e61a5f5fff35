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
(node-local, where a home folder may be shared over the network). Size limit of the folder:
``$FINETUNE_SWEEPS_FEATURE_CACHE_GIB`` (default 2). A new file makes room by evicting the
least recently used files no trial has open; a trial whose files cannot fit (over the limit
alone, or with the rest in use), or cannot be reserved on disk, runs uncached and says so.
How the files are shared, reserved and evicted: ``trainables.feature_files``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from trainables import contract
from trainables.backbones import get_backbone
from trainables.config import TrialConfig
from trainables.feature_files import BUDGET_ENV, FOLDER_ENV, CacheFull, FeatureCache, file_bytes
from trainables.models import ImageClassifier, SplitError, split_frozen

# For a type only: the data module brings scikit-learn, a second of start-up for a process
# that only reads or writes the cache files.
if TYPE_CHECKING:
    from trainables.data import ImageData

__all__ = [  # the storage's names, re-exported for the trial and the tests
    "BUDGET_ENV",
    "FOLDER_ENV",
    "FeatureCache",
]

FORMAT_VERSION = 1  # raise when what a file holds changes, so old files are not read
# Images per batch of the frozen layers, and per share of the work between trials computing
# the same file. On one CPU thread batches of 32 ran ResNet-18 10-15% faster per image than
# batches of 256 (96 and 224 px), and small shares keep the trials busy until the end.
TRAINING, TEST = "training", "test"  # what a trial asks the cache for (FeatureCache.uncached)
CHUNK_ROWS = {"cuda": 256, "cpu": 32}

_warned: set[str] = set()


class FeatureCacheWarning(UserWarning):
    """A trial that could use the cache runs uncached; the reason is in the message."""


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
    if cache.unusable:
        return _uncached(cache, purpose, cache.unusable)
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
    shapes = {split_name: (len(images), *shape) for split_name, images in splits.items()}
    size = sum(file_bytes(s) for s in shapes.values())
    if size > cache.budget_bytes:
        return _uncached(
            cache,
            purpose,
            f"the frozen output of {cfg.backbone} ({cfg.freeze}) for {', '.join(splits)} "
            f"would take {size / 2**30:.3g} GiB, over the feature cache's "
            f"{cache.budget_bytes / 2**30:.3g} GiB (${BUDGET_ENV})",
        )
    names = {s: feature_name(cfg, model, device, s, images) for s, images in splits.items()}
    chunk = CHUNK_ROWS.get(device.type, CHUNK_ROWS["cuda"])
    tensors = []
    for split_name, images in splits.items():
        fill = _filler(frozen, images, device, amp, cfg.channels_last)
        try:  # making room for one split never evicts another of the trial's
            array = cache.load_or_compute(
                names[split_name], shapes[split_name], fill, chunk, keep=names.values()
            )
        except (OSError, CacheFull) as err:  # a full disk, a folder it cannot write, ...
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
        "weights": weights_identity(cfg.backbone, cfg.weights, cfg.seed),
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


def weights_identity(backbone: str, weights: str, seed: int) -> str:
    """What fixes the frozen weights: for ImageNet's, the release of the library that gives
    them (torchvision or timm) and their tag; the seed for a random initialisation; the
    content for a file (a file rewritten within the same clock tick keeps its size and
    modification time)."""
    if weights == "none":
        return f"random-seed{seed}"
    if weights == "imagenet":
        return f"imagenet-{get_backbone(backbone).pretrained_identity()}"
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
