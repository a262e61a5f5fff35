"""Class names and counts of a sweep's data (the parent run's ``data/classes.json``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainables.contract import metric_safe  # how the trials put class names into metric keys


@dataclass(frozen=True)
class ClassInfo:
    names: tuple[str, ...]
    train_counts: tuple[int, ...] = ()
    val_counts: tuple[int, ...] = ()
    multilabel: bool = False
    test_counts: tuple[int, ...] = ()  # sweeps with a held-out test split

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> ClassInfo:
        return cls(
            names=tuple(str(c) for c in payload["classes"]),
            train_counts=tuple(int(c) for c in payload.get("train_counts") or ()),
            val_counts=tuple(int(c) for c in payload.get("val_counts") or ()),
            multilabel=bool(payload.get("multilabel", False)),
            test_counts=tuple(int(c) for c in payload.get("test_counts") or ()),
        )

    def counts(self, split: str) -> dict[str, int]:
        """Class name -> its image count in ``split`` (train, val or test); empty when the
        sweep did not record that split's counts."""
        found = getattr(self, f"{split}_counts", ())
        return dict(zip(self.names, found, strict=True)) if len(found) == len(self.names) else {}

    def minority_first(self) -> list[str]:
        """Class names by train count, rarest first: the classes focal loss is meant to help."""
        if len(self.train_counts) != len(self.names):
            return list(self.names)
        order = sorted(range(len(self.names)), key=lambda i: (self.train_counts[i], i))
        return [self.names[i] for i in order]


def class_metric_keys(classes: Sequence[str], metric_suffixes: Iterable[str]) -> dict[str, str]:
    """Class name -> the suffix its per-class metrics carry (``val_recall.<suffix>``).

    Matching on the suffixes actually logged, rather than trusting the sanitising rule alone,
    keeps classes whose names needed no change exact and drops classes with no metrics.
    """
    available = set(metric_suffixes)
    keys = {}
    for name in classes:
        for candidate in (name, metric_safe(name)):
            if candidate in available:
                keys[name] = candidate
                break
    return keys
