"""The search methods a user picks: each arm's sampler (``--searcher``) and the scheduler
that may stop its trials early (``--scheduler``), by name.

TPE and ASHA are the defaults; random search, a grid, and no early stopping are the
baselines people compare them against (W&B Sweeps' random and grid methods, Ray Tune's
searchers). Every arm gets a sampler of the same kind and seed, so their first trials share
the hyperparameters the arms have in common: a paired start. ``docs/search_efficiency.md``
measures them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sweep.arms import ArmsScheduler
from sweep.options import UsageError
from trainables.registry import Registry

if TYPE_CHECKING:
    from search_spaces import ArmSurvey
    from sweep.plan import SweepPlan

# Reduction factor 3 (a trial goes on past a rung when in its top third) with TPE's random
# start-up of a third of the trials: reached random search's final quality in 0.33 (digits-lt)
# and 0.30 (Fashion-MNIST) of its epochs over 20 seeds, where factor 2 with a half start-up
# took 0.46 and 0.40 (docs/search_efficiency.md).
ASHA_REDUCTION_FACTOR = 3
STARTUP_SHARE = 3  # TPE samples the first 1/STARTUP_SHARE of an arm's trials at random


Sampler = Callable[["SweepPlan", Mapping[str, list[Any]]], Any]  # plan, the arm's grid


@dataclass(frozen=True)
class Scheduler:
    """Ray Tune's scheduler for one arm, and the epochs at which it may stop a trial (its
    trials save their model there, so a stopped trial keeps its best epoch's)."""

    make: Callable[[SweepPlan], Any]
    decision_epochs: Callable[[SweepPlan], frozenset[int]]


SEARCHERS: Registry[Sampler] = Registry("searcher", UsageError)
SCHEDULERS: Registry[Scheduler] = Registry("scheduler", UsageError)


@SEARCHERS.decorator("tpe", lambda make: make)
def tpe_sampler(
    plan: SweepPlan,
    grid: Mapping[str, list[Any]],
    startup_share: int = STARTUP_SHARE,
    multivariate: bool = True,
) -> Any:
    import optuna

    # Random for the first 1/startup_share of the arm's trials, then TPE models what it saw.
    # Joint (multivariate) TPE, with running trials counted as poor (constant liar), is Optuna
    # 5's default and what docs/search_efficiency.md measured; Optuna 4 defaults to neither,
    # so both are pinned (Optuna 4 calls them experimental). The other values are the
    # benchmark's variants.
    startup = max(2, plan.num_samples // startup_share)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=plan.seed,
            n_startup_trials=startup,
            multivariate=multivariate,
            constant_liar=multivariate,
        )


@SEARCHERS.decorator("random", lambda make: make)
def _random(plan: SweepPlan, grid: Mapping[str, list[Any]]) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(seed=plan.seed)


@SEARCHERS.decorator("grid", lambda make: make)
def _grid(plan: SweepPlan, grid: Mapping[str, list[Any]]) -> Any:
    import optuna

    return optuna.samplers.GridSampler(dict(grid), seed=plan.seed)


def arm_sampler(plan: SweepPlan, arm: str) -> Any:
    return SEARCHERS.get(plan.searcher)(plan, plan.grids.get(arm, {}))


def asha_scheduler(plan: SweepPlan, reduction_factor: int = ASHA_REDUCTION_FACTOR) -> Any:
    from ray.tune.schedulers import ASHAScheduler

    from sweep.tally import tune_metric

    return ASHAScheduler(
        time_attr="training_iteration",
        metric=tune_metric(plan),
        mode=plan.mode,
        max_t=plan.max_epochs,
        grace_period=plan.grace_period,
        reduction_factor=reduction_factor,
    )


def _no_early_stop(plan: SweepPlan) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULERS.register(
    "asha",
    Scheduler(asha_scheduler, lambda plan: asha_rungs(plan.grace_period, plan.max_epochs)),
)
SCHEDULERS.register("none", Scheduler(_no_early_stop, lambda plan: frozenset()))


def arms_scheduler(plan: SweepPlan) -> ArmsScheduler:
    """One scheduler per arm, of the kind ``--scheduler`` names."""
    make = SCHEDULERS.get(plan.scheduler).make
    return ArmsScheduler(lambda: make(plan), plan.arms)


def decision_epochs(plan: SweepPlan) -> frozenset[int]:
    """The epochs at which the scheduler may stop a trial (its model is saved there)."""
    return SCHEDULERS.get(plan.scheduler).decision_epochs(plan)


def asha_rungs(grace_period: int, max_t: int, rf: int = ASHA_REDUCTION_FACTOR) -> frozenset[int]:
    """The epochs at which ASHA decides whether a trial goes on, by Ray's own formula
    (``ray.tune.schedulers.async_hyperband._Bracket``): its trials checkpoint there."""
    count = int(math.log(max_t / grace_period) / math.log(rf) + 1)
    return frozenset(grace_period * rf**k for k in range(count))


def arm_grids(
    searcher: str, surveys: Mapping[str, ArmSurvey], num_samples: int
) -> dict[str, dict[str, list[Any]]]:
    """Each arm's grid for ``--searcher grid`` (empty for the others): the choices of every
    name it searches. Refused in one line where an arm searches a range, or has fewer
    combinations than ``--num-samples`` (every arm gets the same number of trials)."""
    if searcher != "grid":
        return {}
    grids = {arm: _grid_of(arm, survey) for arm, survey in surveys.items()}
    sizes = {arm: math.prod(len(v) for v in grid.values()) for arm, grid in grids.items()}
    arm, smallest = min(sizes.items(), key=lambda item: item[1])
    if num_samples > smallest:
        raise UsageError(
            f"--num-samples {num_samples} exceeds the grid of arm {arm!r} ({smallest} "
            f"combinations); accepted with --searcher grid: at most {smallest}"
        )
    return grids


def _grid_of(arm: str, survey: ArmSurvey) -> dict[str, list[Any]]:
    searched = {n: s for n, s in sorted(survey.suggests.items()) if n not in survey.pinned}
    ranges = {
        name: next(s for s in suggests if s.kind != "categorical")
        for name, suggests in searched.items()
        if any(s.kind != "categorical" for s in suggests)
    }
    if ranges:
        shown = ", ".join(f"{n} {s.describe().removeprefix('range ')}" for n, s in ranges.items())
        raise UsageError(
            f"--searcher grid needs every searched value to be a choice, but arm {arm!r} "
            f"searches ranges: {shown}; pin them (--set NAME=VALUE) or use --searcher tpe "
            "or random"
        )
    return {
        name: list(dict.fromkeys(c for s in suggests for c in s.choices))
        for name, suggests in searched.items()
    }
