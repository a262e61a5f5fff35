"""The registry of named search spaces. A space is a define-by-run function (Optuna's idiom)
for one arm: it calls ``trial.suggest_*`` and returns the constants of that arm, so a
parameter that only makes sense under one arm (gamma under focal) only exists there."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna

from search_spaces._pins import PinnedTrial, Suggest
from trainables.errors import UserError
from trainables.registry import Registry

Define = Callable[[optuna.Trial, str, "SpaceContext"], dict[str, Any] | None]
# What the sweep fixes for every search trial and no space may search or set: the search runs
# on one seed and split, and the confirmation runs on seeds chosen apart from it
# (``sweep.plan.confirmation_seeds``).
SWEEP_KEYS = ("seed", "split_seed")


class SpaceError(UserError):
    """Unknown space or arm: one line for the user."""


@dataclass(frozen=True)
class SpaceContext:
    """What the command line fixed for the whole sweep, for spaces whose ranges depend on it."""

    backbones: tuple[str, ...] = ("smallcnn",)  # several: searched as a categorical
    weights: str = "none"
    multilabel: bool = False
    # --set KEY=VALUE as typed: each is coerced to the type of the suggest (or constant) it
    # replaces, which differs between spaces and arms.
    pins: Mapping[str, str] = field(default_factory=dict)

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


SPACES: Registry[SearchSpace] = Registry("space", SpaceError)


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

    def make(define: Define) -> SearchSpace:
        return SearchSpace(
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

    return SPACES.decorator(name, make)


def list_spaces() -> list[SearchSpace]:
    return [SPACES.get(n) for n in SPACES.names()]


def get_space(name: str) -> SearchSpace:
    return SPACES.get(name)


@dataclass(frozen=True)
class ArmDefineByRun:
    """The define-by-run function Ray's OptunaSearch takes: one arm, constants merged in.
    A class rather than a closure so Ray can pickle it into the experiment's state."""

    space: SearchSpace
    arm: str
    context: SpaceContext
    fixed: dict[str, Any]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        return self.run(trial)[0]

    def run(self, trial: optuna.Trial) -> tuple[dict[str, Any], PinnedTrial]:
        """The trial's config, and what the space asked for on the way.

        Pinned values go into the returned config: Ray's OptunaSearch merges it with the
        values it saw suggested, and a pinned name was never suggested."""
        pinned = PinnedTrial(trial, self.context.pins)
        constants = pinned.pin_constants(self.space.define(pinned, self.arm, self.context) or {})
        named = sorted(set(SWEEP_KEYS) & (set(constants) | set(trial.params)))
        if named:
            raise SpaceError(
                f"space {self.space.name!r} (arm {self.arm!r}) sets {', '.join(named)}; the "
                "sweep fixes it for every search trial (--seed)"
            )
        if "backbone" not in constants and "backbone" not in trial.params:
            backbones = list(self.context.backbones)
            if len(backbones) > 1:
                trial.suggest_categorical("backbone", backbones)
            else:
                constants["backbone"] = backbones[0]
        config = {**self.fixed, **constants, **pinned.pinned}
        # Last, so that nothing the space returns can stand in for them.
        sweep = {key: self.fixed[key] for key in SWEEP_KEYS if key in self.fixed}
        return {**config, **sweep, "arm": self.arm, "factor": self.space.factor}, pinned

    def survey(self, runs: int = 20) -> ArmSurvey:
        """What this arm produces over ``runs`` random dry runs: a space can be conditional
        inside an arm (momentum only with SGD), so one run does not show every name."""
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        found = ArmSurvey()
        for _ in range(runs):
            found.add(self.run(study.ask())[1])
        return found


@dataclass
class ArmSurvey:
    """Names an arm suggests (with every range or choices seen) or returns as constants (as
    returned, before pins), and the pins it used with their coerced values."""

    suggests: dict[str, set[Suggest]] = field(default_factory=dict)
    constants: dict[str, set[Any]] = field(default_factory=dict)
    pinned: dict[str, Any] = field(default_factory=dict)

    @property
    def keys(self) -> set[str]:
        return set(self.suggests) | set(self.constants)

    def add(self, run: PinnedTrial) -> None:
        for name, suggest in run.suggests.items():
            self.suggests.setdefault(name, set()).add(suggest)
        for name, value in run.returned.items():
            self.constants.setdefault(name, set()).add(value)
        self.pinned.update(run.pinned)
