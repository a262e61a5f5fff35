"""``--set KEY=VALUE`` pins, and the values each arm of a space can produce: surveyed by dry
runs of the space, every value checked against the project's registries before any trial."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from search_spaces import (
    ArmDefineByRun,
    ArmSurvey,
    PinError,
    SearchSpace,
    SpaceContext,
    Suggest,
    show_value,
)
from sweep.options import UsageError
from trainables.data import ImageData
from trainables.errors import UserError
from trainables.losses import LossContext, build_loss, check_loss_fits, get_loss
from trainables.models import get_backbone, parse_freeze
from trainables.optim import get_optimizer
from trainables.svm import CLASSIFIERS

# Pinned strings outside a space's choices that check_space_values checks against the
# project's registries; any other string must be one of the space's choices.
REGISTERED = {"loss", "optimizer", "freeze", "classifier"}


def parse_sets(texts: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` options as typed; their types come from the space (_pins.coerce)."""
    pins: dict[str, str] = {}
    for text in texts:
        key, equals, value = (part.strip() for part in text.partition("="))
        if not equals or not key or not value:
            raise UsageError(f"bad --set {text!r}; accepted: KEY=VALUE, e.g. --set lr=1e-4")
        if key in pins:
            raise UsageError(f"--set {key} is given twice; accepted: each key once")
        pins[key] = value
    return pins


def check_pins(
    space: SearchSpace, arms: tuple[str, ...], context: SpaceContext, *, reserved: set[str]
) -> tuple[dict[str, ArmSurvey], list[str]]:
    """Survey every arm with the pins in place (for _check_space_values); refuse a pin no arm
    can take, and warn of one only some arms have or outside what the space searches."""
    if not context.pins:
        return _survey(space, arms, context), []
    free = _survey(space, arms, replace(context, pins={}))
    keys = set().union(*(s.keys for s in free.values())) - {space.factor}
    for key in context.pins:
        _check_pin_key(key, space, arms, keys, reserved)
    surveys = _survey(space, arms, context)
    warnings = [
        warning
        for key, text in context.pins.items()
        for warning in _pin_warnings(key, text, arms, surveys)
    ]
    return surveys, warnings


def _survey(
    space: SearchSpace, arms: tuple[str, ...], context: SpaceContext
) -> dict[str, ArmSurvey]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return {arm: ArmDefineByRun(space, arm, context, {}).survey() for arm in arms}
    except PinError as err:
        raise UsageError(f"--set {err}") from None


def _check_pin_key(
    key: str, space: SearchSpace, arms: tuple[str, ...], keys: set[str], reserved: set[str]
) -> None:
    if key == space.factor:
        raise UsageError(
            f"--set {key}: {key} is what the arms of space {space.name!r} differ in; pick "
            f"arms with --arms (accepted: {', '.join(space.choices)})"
        )
    if key not in keys:
        what = (
            f"{key} is fixed for the whole sweep (an option of its own, or bookkeeping)"
            if key in reserved or key == "backbone"
            else f"no arm searched ({', '.join(arms)}) of space {space.name!r} has {key}"
        )
        raise UsageError(f"--set {key}: {what}; accepted: {', '.join(sorted(keys))}")


def _pin_warnings(
    key: str, text: str, arms: tuple[str, ...], surveys: dict[str, ArmSurvey]
) -> list[str]:
    """A pin some arms lack, or outside the range or choices an arm searches: allowed (the
    seed reports used lr 1e-4, below the focal space's range), but said."""
    used = [arm for arm in arms if key in surveys[arm].pinned]
    if not used:  # other pins took the branch that asks for it away
        raise UsageError(f"--set {key}={text} applies to no arm, given the other --set values")
    warnings = []
    if len(used) < len(arms):
        lacking = [arm for arm in arms if arm not in used]
        warnings.append(
            f"{key}={text} applies only to arm{'s' * (len(used) > 1)} {', '.join(used)}; "
            f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no {key}"
        )
    outside: dict[tuple[str, Suggest], list[str]] = {}
    for arm in used:
        value = surveys[arm].pinned[key]
        for suggest in surveys[arm].suggests.get(key, ()):
            if not suggest.contains(value):
                _check_outside(key, text, value, suggest)
                outside.setdefault((show_value(value), suggest), []).append(arm)
    for (value, suggest), where in outside.items():
        everywhere = len(outside) == 1 and len(where) == len(used)
        warnings.append(
            f"{key}={value} is {'outside' if suggest.kind != 'categorical' else 'not among'} "
            f"the space's {suggest.describe()}"
            + ("" if everywhere else f" (arm{'s' * (len(where) > 1)} {', '.join(where)})")
        )
    return warnings


def _check_outside(key: str, text: str, value: Any, suggest: Suggest) -> None:
    """Refuse what can only fail in every trial: a negative number where the space searches
    none, a count below 1 where it searches counts (batch size 0), or a string choice no
    registry of ours checks. Zero stays a number like any other (focal gamma 0 is CE)."""
    lowest = _lowest(suggest)
    if lowest is None:
        if key not in REGISTERED:
            accepted = ", ".join(map(show_value, suggest.choices))
            raise UsageError(f"--set {key}={text}: accepted: {accepted}")
        return
    counts = suggest.kind != "float" and isinstance(lowest, int)
    floor = 1 if counts and lowest >= 1 else 0 if lowest >= 0 else None
    if floor is not None and value < floor:
        raise UsageError(
            f"--set {key}={text}: {key} must be {floor} or more (the space searches the "
            f"{suggest.describe()})"
        )


def _lowest(suggest: Suggest) -> float | None:
    """The smallest number the space searches; None for choices that are not all numbers."""
    if suggest.kind != "categorical":
        return suggest.low
    numbers = [c for c in suggest.choices if isinstance(c, int | float) and not isinstance(c, bool)]
    return min(numbers) if numbers and len(numbers) == len(suggest.choices) else None


def check_space_values(
    surveys: dict[str, ArmSurvey], data: ImageData, head: tuple[int, ...], context: SpaceContext
) -> None:
    """Check every value each arm's dry runs produced, a pin in place of what it replaces:
    optimizers and classifiers exist, losses fit the data and head, freeze specs fit the
    backbones."""
    pins = context.pins
    for arm, survey in surveys.items():
        options = _arm_options(survey)
        with _blame_pin(pins, "optimizer"):
            for optimizer in options.get("optimizer", ()):
                get_optimizer(optimizer)
        with _blame_pin(pins, "classifier"):
            for classifier in options.get("classifier", ()):
                CLASSIFIERS.get(classifier)
        for loss in options.get("loss", ()):
            with _blame_pin(pins, "loss"):
                entry = get_loss(loss)
                check_loss_fits(entry, multilabel=data.multilabel, embedding_dim=len(head))
                # Built once: a loss pinned into an arm that searches none of its settings
                # (--space svm --set loss=focal: no gamma) would fail in every trial.
                build_loss(loss, _loss_context(options, data, head))
            if not entry.trains_head and "svm" not in options.get("classifier", []):
                with _blame_pin(pins, "classifier", "loss"):
                    raise UsageError(
                        f"arm {arm!r}: loss {loss!r} trains no head; pair it with classifier 'svm'"
                    )
        with _blame_pin(pins, "freeze"):
            for bb in options.get("backbone", context.backbones):
                get_backbone(bb)
                for freeze in options.get("freeze", []):
                    parse_freeze(freeze, bb)


def frozen_random_warning(surveys: dict[str, ArmSurvey], context: SpaceContext) -> str | None:
    """One line when arms freeze layers of a randomly initialised backbone: an arm whose every
    trial freezes some (a constant or pinned freeze), or whose search may freeze it all. Their
    frozen features stay random, so the comparison says little; it is allowed, and said."""
    if context.pretrained:
        return None
    arms = [arm for arm, survey in surveys.items() if _freezes(survey)]
    if not arms:
        return None
    return (
        f"arm{'s' * (len(arms) > 1)} {', '.join(arms)} freeze{'s' * (len(arms) == 1)} layers of "
        f"a randomly initialised {'/'.join(context.backbones)} (--weights none): their features "
        "stay random, so this measures little of use; --weights imagenet or a weights file "
        "makes it meaningful"
    )


def _freezes(survey: ArmSurvey) -> bool:
    fixed = set(survey.constants.get("freeze", set()))
    if "freeze" in survey.pinned:
        fixed = {survey.pinned["freeze"]}
    searched = {c for s in survey.suggests.get("freeze", ()) for c in s.choices}
    return bool(fixed - {"none"}) or ("freeze" not in survey.pinned and "backbone" in searched)


def _loss_context(options: dict[str, list[Any]], data: ImageData, head: tuple[int, ...]):
    def first(name: str) -> Any:
        return options.get(name, [None])[0]

    return LossContext(
        num_classes=data.num_classes,
        embedding_dim=head[-1] if head else 0,
        class_counts=data.class_counts("train").tolist(),
        multilabel=data.multilabel,
        gamma=first("gamma"),
        margin=first("margin"),
        mining=first("mining"),
        center_lambda=first("center_lambda"),
    )


def _arm_options(survey: ArmSurvey) -> dict[str, list[Any]]:
    """Every categorical value and constant an arm can produce (and the low end of each
    number it searches); a pin replaces them."""
    options: dict[str, set[Any]] = {}
    for name, suggests in survey.suggests.items():
        for suggest in suggests:
            values = suggest.choices if suggest.kind == "categorical" else (suggest.low,)
            options.setdefault(name, set()).update(values)
    for name, values in survey.constants.items():
        options.setdefault(name, set()).update(values)
    options.update({name: {value} for name, value in survey.pinned.items()})
    return {name: sorted(values, key=str) for name, values in options.items()}


@contextlib.contextmanager
def _blame_pin(pins: Mapping[str, str], *keys: str) -> Iterator[None]:
    """A bad value under a pinned key is the pin's fault: name the first pinned one as typed."""
    try:
        yield
    except UserError as err:
        key = next((k for k in keys if k in pins), None)
        if key is None:
            raise
        raise UsageError(f"--set {key}={pins[key]}: {err}") from None
