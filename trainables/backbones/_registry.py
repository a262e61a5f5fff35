"""Backbone names and the sources that build them: ``smallcnn`` (ours), every classification
model of torchvision's registry by its torchvision name, and ``timm:NAME`` when timm is
installed. One lookup resolves a name; an unknown one is an error naming the close matches."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

from trainables.backbones._types import InputSpec, ModelError, Source, Trunk
from trainables.backbones._weights import load_weights_file
from trainables.registry import Registry

TIMM_PREFIX = "timm:"
TIMM_HINT = 'timm:NAME (timm\'s models): pip install -e ".[timm]"'


# Sources by label (ours, torchvision, timm); a name is resolved by the sources' prefixes.
SOURCES: Registry[Source] = Registry("backbone source", ModelError)


def register_source(source: Source) -> Source:
    return SOURCES.register(source.label, source)


@dataclass(frozen=True)
class Backbone:
    """A backbone by the name the user typed: ``resnet18``, ``timm:convnext_tiny``."""

    name: str
    arch: str  # the source's own name for it
    source: Source

    @property
    def pretrained_available(self) -> bool:
        return self.source.has_pretrained(self.arch)

    def pretrained_identity(self) -> str:
        """The library's version and the tag of the weights ``--weights imagenet`` gives."""
        return self.source.pretrained_identity(self.arch)

    def channels(self, in_channels: int) -> int:
        """The network's input channels: 3 for ImageNet models (grey images are expanded)."""
        return self.source.channels(in_channels)

    def input_spec(self) -> InputSpec:
        return self.source.input_spec(self.arch)

    def build(self, *, weights: str, in_channels: int) -> Trunk:
        """The trunk with ``weights``: the source's pretrained set, none, or a local file."""
        trunk = self.source.build(self.arch, weights=weights, in_channels=in_channels)
        if weights not in {"imagenet", "none"}:
            load_weights_file(trunk.module, self.name, Path(weights))
        return trunk


def list_backbones() -> list[str]:
    """Every name ``--backbone`` accepts, source by source (timm's last, and only when it is
    installed)."""
    return [s.prefix + arch for s in _ordered() if s.available() for arch in s.names()]


def _ordered() -> list[Source]:
    return sorted(SOURCES.entries(), key=lambda s: bool(s.prefix))  # stable: ours, then torchvision


def missing_sources_text() -> list[str]:
    """A line for each source that is not installed, saying how to get it."""
    return [TIMM_HINT for s in SOURCES.entries() if not s.available() and s.prefix == TIMM_PREFIX]


def get_backbone(name: str) -> Backbone:
    return _resolve(name)


@functools.cache
def _resolve(name: str) -> Backbone:
    # The longest prefix first: "timm:resnet18" is timm's, "resnet18" torchvision's.
    for source in sorted(SOURCES.entries(), key=lambda s: -len(s.prefix)):
        if not name.startswith(source.prefix):
            continue
        arch = name[len(source.prefix) :]
        if source.prefix and not source.available():
            raise ModelError(f"backbone {name!r} needs timm; install it: {TIMM_HINT}")
        if source.available() and source.knows(arch):
            return Backbone(name, arch, source)
        if source.prefix:  # a prefixed name belongs to that source only
            break
    raise ModelError(_unknown_message(name))


def _unknown_message(name: str) -> str:
    close = difflib.get_close_matches(name, _candidates(name), n=4, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}; " if close else ""
    return (
        f"unknown backbone {name!r}; {hint}accepted: the names `python tune.py "
        "--list-backbones` prints"
    )


def _candidates(name: str) -> list[str]:
    """The names to match against: timm's ~1,300 only for a timm name (importing timm takes
    seconds)."""
    return [
        s.prefix + arch
        for s in _ordered()
        if s.available() and (bool(s.prefix) == name.startswith(TIMM_PREFIX))
        for arch in s.names()
    ]
