"""One frozen config per trial, built once from the flat dict Ray Tune hands the trainable."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

SEARCH_MARK = " search"  # in a search run's name, after the arm


@dataclass(frozen=True)
class TrialConfig:
    """Everything one trial needs; every field is logged as an MLflow param."""

    # Bookkeeping: which sweep, which arm, which phase.
    space: str = "focal"
    factor: str = "loss"
    arm: str = "ce"
    role: str = "search"  # "search" or "confirmation"
    seed: int = 0  # model init and batch order; the confirmation phase varies it
    split_seed: int = 0  # train/val split; paired across arms (--confirm-splits varies it)

    # Data and model.
    dataset: str = "digits"
    val_fraction: float = 0.25
    test_fraction: float = 0.2  # the data's test split (torchvision's datasets: their own)
    backbone: str = "smallcnn"
    weights: str = "none"  # "imagenet", "none" or a path to a state-dict file
    freeze: str = "none"  # "none", "backbone" or "partial:K"
    head_hidden: tuple[int, ...] = (128,)
    dropout: float = 0.0
    augment: bool = False
    classifier: str = "softmax"  # "softmax" head, or "svm" fitted on the embeddings
    image_size: int = 0  # model input; 0: the weights' size, else the data's (at least 32)

    # Loss.
    loss: str = "ce"
    gamma: float | None = None  # focal only
    alpha: str = "none"  # focal class weights: "none" or "balanced"
    margin: float | None = None  # triplet only
    mining: str | None = None  # triplet only: "batch_hard", "batch_all"
    center_lambda: float | None = None  # center loss only
    center_lr: float | None = None  # center loss only: the centers' own learning rate

    # Optimisation.
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    max_epochs: int = 5

    # Monitoring and hardware.
    metric: str = "val_macro_f1"
    mode: str = "max"
    num_threads: int = 1
    amp: bool = True  # mixed precision, used only on CUDA
    channels_last: bool = True  # used only on CUDA
    feature_cache: bool = True  # a frozen backbone's output computed once per node, not per epoch

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrialConfig:
        """Build from Ray's dict; unknown keys are an error, so a typo in a space is caught."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown trial config keys {unknown}; known: {sorted(known)}")
        return cls(**{k: _coerce(known[k], v) for k, v in values.items()})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    @property
    def run_name(self) -> str:
        """What a person needs first in the MLflow UI's narrow name column: the arm and the
        role, then the seed (confirmation runs differ in nothing else) or what the search
        chose, e.g. ``loss=focal confirm s3``,
        ``loss=focal search · smallcnn sgd lr 3e-03 bs 64 gamma 1.5``. Once the search has
        ended, ``numbered_run_name`` adds the trial's number in its arm's Optuna study."""
        lead = f"{self.factor}={self.arm}"
        if self.role == "confirmation":
            return f"{lead} confirm s{self.seed}"
        chosen = [self.backbone, self.optimizer, f"lr {self.lr:.0e}", f"bs {self.batch_size}"]
        if self.gamma is not None:
            chosen.append(f"gamma {self.gamma:.2g}")
        return f"{lead}{SEARCH_MARK} · {' '.join(chosen)}"

    def effective_on(self, device_type: str) -> TrialConfig:
        """The config as it acts on a device: mixed precision and channels-last are CUDA
        only, so on any other device they are off, and logged so."""
        cuda = device_type == "cuda"
        return self.replace(amp=self.amp and cuda, channels_last=self.channels_last and cuda)


def numbered_run_name(name: str, number: int) -> str:
    """A search run's name with its trial number in its arm's Optuna study (the number
    optuna-dashboard shows), e.g. ``loss=focal search #3 · ...``; other names as they are."""
    lead, mark, rest = name.partition(SEARCH_MARK)
    if not mark or rest.startswith(" #"):
        return name
    return f"{lead}{SEARCH_MARK} #{number}{rest}"


def trial_number(name: str) -> int | None:
    """The number ``numbered_run_name`` put into a search run's name; None for any other
    name (a confirmation run, a search run named before its search ended)."""
    _, mark, rest = name.partition(SEARCH_MARK)
    found = re.match(r" #(\d+)", rest) if mark else None
    return int(found.group(1)) if found else None


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Optuna categoricals must be primitives, so tuples travel as strings like ``"256-128"``."""
    if f.name == "head_hidden":
        if isinstance(value, str):
            return tuple(int(v) for v in value.split("-") if v)
        return tuple(int(v) for v in value)
    if f.name in {"seed", "split_seed", "batch_size", "max_epochs", "num_threads"}:
        return int(value)
    if f.name in {"augment", "amp", "channels_last", "feature_cache"}:
        return bool(value)
    if f.name in {"lr", "momentum", "weight_decay", "dropout", "val_fraction", "test_fraction"}:
        return float(value)
    return value
