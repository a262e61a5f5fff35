"""The registry of named search spaces. A space is a define-by-run function (Optuna's idiom)
for one arm: it calls ``trial.suggest_*`` and returns the constants of that arm, so a
parameter that only makes sense under one arm (gamma under focal) only exists there."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from trainables.errors import UserError

Define = Callable[[optuna.Trial, str, "SpaceContext"], dict[str, Any] | None]


class SpaceError(UserError):
    """Unknown space or arm: one line for the user."""


@dataclass(frozen=True)
class SpaceContext:
    """What the command line fixed for the whole sweep, for spaces whose ranges depend on it."""

    backbones: tuple[str, ...] = ("smallcnn",)  # several: searched as a categorical
    weights: str = "none"
    multilabel: bool = False

    @property
    def pretrained(self) -> bool:
        return self.weights != "none"


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    factor: str  # the config key the arms differ in
    arms: tuple[str, ...]  # arms searched by default
    choices: tuple[str, ...]  # every arm this space accepts
    define: Define
    multilabel: bool = False
    reproduces: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)  # fixed values unless the CLI sets them

    def check_arms(self, arms: tuple[str, ...]) -> None:
        unknown = [a for a in arms if a not in self.choices]
        if unknown or len(set(arms)) < len(arms) or not arms:
            raise SpaceError(
                f"bad arms {','.join(arms) or '(none)'} for space {self.name!r}; "
                f"accepted: one or more of {', '.join(self.choices)}"
            )


_SPACES: dict[str, SearchSpace] = {}


def register_space(
    name: str,
    *,
    description: str,
    factor: str,
    arms: tuple[str, ...],
    choices: tuple[str, ...] | None = None,
    multilabel: bool = False,
    reproduces: str = "",
    defaults: dict[str, Any] | None = None,
) -> Callable[[Define], Define]:
    """Register ``define`` under ``name``; it then appears in ``tune.py --list-spaces``."""

    def decorator(define: Define) -> Define:
        if name in _SPACES:
            raise ValueError(f"search space {name!r} is registered twice")
        _SPACES[name] = SearchSpace(
            name=name,
            description=description,
            factor=factor,
            arms=arms,
            choices=choices or arms,
            define=define,
            multilabel=multilabel,
            reproduces=reproduces,
            defaults=defaults or {},
        )
        return define

    return decorator


def list_spaces() -> list[SearchSpace]:
    return [_SPACES[n] for n in sorted(_SPACES)]


def get_space(name: str) -> SearchSpace:
    try:
        return _SPACES[name]
    except KeyError:
        raise SpaceError(
            f"unknown space {name!r}; accepted: {', '.join(sorted(_SPACES))}"
        ) from None


@dataclass(frozen=True)
class ArmDefineByRun:
    """The define-by-run function Ray's OptunaSearch takes: one arm, constants merged in.
    A class rather than a closure so Ray can pickle it into the experiment's state."""

    space: SearchSpace
    arm: str
    context: SpaceContext
    fixed: dict[str, Any]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        constants = self.space.define(trial, self.arm, self.context) or {}
        if "backbone" not in constants and "backbone" not in trial.params:
            backbones = list(self.context.backbones)
            if len(backbones) > 1:
                trial.suggest_categorical("backbone", backbones)
            else:
                constants["backbone"] = backbones[0]
        return {**self.fixed, **constants, "arm": self.arm, "factor": self.space.factor}
