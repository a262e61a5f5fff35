"""Hyperparameters the user pinned (``tune.py --set lr=1e-4``) for every trial of every arm.

A space's define-by-run function sees a ``PinnedTrial``: a suggest of a pinned name returns
the pinned value, coerced to the suggest's type, and asks the sampler nothing, so the name
leaves the search; a constant the arm returns under a pinned name is replaced the same way.
Every suggest is recorded with its range or choices, so the command line can check a pin
against what the space searches before any trial runs.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from trainables.errors import UserError

_BOOLEANS = {"true": True, "false": False}


class PinError(UserError):
    """A pinned value the space cannot take (``lr=fast``); the message starts ``KEY=VALUE``."""


@dataclass(frozen=True)
class Suggest:
    """One ``trial.suggest_*`` call: a number range, or categorical choices."""

    kind: str  # "float", "int" or "categorical"
    low: float = 0.0
    high: float = 0.0
    choices: tuple[Any, ...] = ()

    def contains(self, value: Any) -> bool:
        if self.kind == "categorical":
            return value in self.choices
        return self.low <= value <= self.high

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"choices {', '.join(map(show_value, self.choices))}"
        return f"range [{show_value(self.low)}, {show_value(self.high)}]"


def show_value(value: Any) -> str:
    """A value as the user would type it: ``0.0001``, ``32``, ``true``, ``focal``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _suggest_of(method: str, args: tuple, kwargs: dict) -> tuple[str, Suggest]:
    """The name and range (or choices) of a ``suggest_*`` call, read as Optuna binds it."""
    bound = inspect.signature(getattr(optuna.Trial, method)).bind(None, *args, **kwargs)
    given = bound.arguments
    if "choices" in given:
        return given["name"], Suggest("categorical", choices=tuple(given["choices"]))
    kind = "int" if method == "suggest_int" else "float"
    return given["name"], Suggest(kind, given["low"], given["high"])


def coerce(name: str, text: str, like: Any) -> Any:
    """``text`` as the type the space uses for ``name``: a suggest's kind, the type of its
    choices, or the type of the constant an arm returns (``like``)."""
    if isinstance(like, Suggest):
        if like.kind == "categorical":
            return _as_choice(name, text, like.choices)
        return _as(float if like.kind == "float" else int, name, text)
    if like is None:
        return parse(text)
    return _as(type(like), name, text)


def parse(text: str) -> Any:
    """A value with no type to follow: a boolean, a whole number, a number, else the text."""
    for kind in (bool, int, float):
        try:
            return _as(kind, "", text)
        except PinError:
            pass
    return text


def _as_choice(name: str, text: str, choices: tuple[Any, ...]) -> Any:
    kinds = {type(c) for c in choices}
    if len(kinds) == 1:
        return _as(kinds.pop(), name, text)
    if kinds <= {int, float}:
        return _as(float, name, text)
    # Mixed choices: the one that reads as the text, else the text's own type.
    return next((c for c in choices if show_value(c) == text), parse(text))


def _as(kind: type, name: str, text: str) -> Any:
    value = _CONVERT.get(kind, lambda t: t)(text.strip())
    if value is None:
        raise PinError(f"{name}={text}: {name} takes {_KIND_NAMES[kind]}")
    return value


def _to_bool(text: str) -> bool | None:
    return _BOOLEANS.get(text.lower())


def _to_int(text: str) -> int | None:
    number = _to_float(text)
    return int(number) if number is not None and number.is_integer() else None


def _to_float(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


_CONVERT: dict[type, Callable[[str], Any]] = {bool: _to_bool, int: _to_int, float: _to_float}
_KIND_NAMES = {bool: "true or false", int: "a whole number", float: "a number"}


class PinnedTrial:
    """The Optuna trial (or Ray's wrapper of it) a define function sees, pins in place.

    ``suggests`` records every suggest of the run, pinned or not; ``pinned`` the pins the
    run used, with their coerced values; ``returned`` the constants as the arm returned them.
    """

    def __init__(self, trial: Any, pins: Mapping[str, str]) -> None:
        self._trial = trial
        self._pins = pins
        self.suggests: dict[str, Suggest] = {}
        self.pinned: dict[str, Any] = {}
        self.returned: dict[str, Any] = {}

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):  # not set yet (copy, pickle): no delegation loop
            raise AttributeError(attr)
        value = getattr(self._trial, attr)
        if attr.startswith("suggest_") and callable(value):
            return functools.partial(self._suggest, attr, value)
        return value

    def _suggest(self, method: str, suggest: Callable, *args: Any, **kwargs: Any) -> Any:
        name, spec = _suggest_of(method, args, kwargs)
        self.suggests[name] = spec
        if name not in self._pins:
            return suggest(*args, **kwargs)
        self.pinned[name] = coerce(name, self._pins[name], spec)
        return self.pinned[name]

    def pin_constants(self, constants: Mapping[str, Any]) -> dict[str, Any]:
        """The arm's constants, a pinned one replaced by its pin in the constant's type."""
        self.returned = dict(constants)
        pinned = {k: coerce(k, self._pins[k], v) for k, v in constants.items() if k in self._pins}
        self.pinned.update(pinned)
        return {**constants, **pinned}
