"""The records the backbone sources share: a trunk, its input, the source protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from torch import nn

from trainables.errors import UserError


class ModelError(UserError):
    """Unknown backbone, bad freeze spec, missing or incompatible weights: one line for the user."""


Stage = nn.Module | nn.Parameter  # a loose parameter (ViT's class token) sits in a stage too


@dataclass
class Trunk:
    """A backbone with its classifier removed: features out, plus its stages for freezing."""

    module: nn.Module
    feature_dim: int
    stages: list[list[Stage]]
    # What trainables.edge.served_model needs to rebuild ``module`` without this repository:
    # ModelSpec fields (trunk, classifier_attr, classifier_keep, build_kwargs).
    served: dict[str, Any]


@dataclass(frozen=True)
class InputSpec:
    """The input a backbone takes, from its weights' metadata where it has some."""

    size: int  # what the pretrained weights were trained at (their transforms' crop size)
    smallest: int  # the smallest input the architecture accepts, as its source declares
    min_size: int  # the smallest input this project resizes data to (small data is enlarged)
    fixed: bool  # the architecture takes ``size`` only (vision transformers)
    mean: tuple[float, ...]
    std: tuple[float, ...]


class Source(Protocol):
    """Where backbones come from: their names, their constructors and their input."""

    label: str  # "torchvision", "timm", "project": ModelSpec.trunk of the served model
    prefix: str  # typed before the source's own name ("timm:"), or ""

    def available(self) -> bool: ...
    def names(self) -> list[str]: ...
    def knows(self, arch: str) -> bool: ...
    def has_pretrained(self, arch: str) -> bool: ...
    def pretrained_identity(self, arch: str) -> str:
        """What pins the weights ``imagenet`` gives: the library's version and the weights'
        own name, so that features computed from them are not taken for another release's."""

    def channels(self, in_channels: int) -> int: ...
    def input_spec(self, arch: str) -> InputSpec: ...
    def build(self, arch: str, *, weights: str, in_channels: int) -> Trunk:
        """Untrained, or with the source's pretrained weights for ``imagenet``; for a weights
        file, built as for pretrained weights (the file is loaded after)."""
