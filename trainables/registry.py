"""One registry type for every named thing a user picks: spaces, losses, datasets, optimizers,
backbone sources, metrics, report sections.

As in timm's model registry: ``register`` records an entry under a name (twice is a bug),
``get`` looks one up and an unknown name is a user error naming the close matches and what is
accepted, ``names("resnet*")`` filters with a glob.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from trainables.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries of one kind by name, in the order they were registered."""

    def __init__(self, kind: str, error: type[UserError] = UserError) -> None:
        self.kind = kind  # how the error spells it: "loss", "search space"
        self.error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, make: Callable[[Callable], T]) -> Callable[[Callable], Callable]:
        """A decorator registering ``make(function)`` under ``name``; the function is returned
        unchanged, so it stays callable and testable on its own."""

        def register(function: Callable) -> Callable:
            self.register(name, make(function))
            return function

        return register

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise self.error(self.unknown(name)) from None

    def unknown(self, name: str, accepted: str | None = None) -> str:
        """The one line for a name nobody registered: close matches, then what is accepted."""
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        accepted = accepted or ", ".join(self.names())
        return f"unknown {self.kind} {name!r}; {hint}accepted: {accepted}"

    def names(self, pattern: str | None = None) -> list[str]:
        """The names, sorted; those matching the glob ``pattern`` (``"resnet*"``) if given."""
        return sorted(n for n in self._entries if pattern is None or fnmatch.fnmatch(n, pattern))

    def entries(self) -> list[T]:
        """The entries in registration order."""
        return list(self._entries.values())

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        """The names in registration order (``names()`` sorts them)."""
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
