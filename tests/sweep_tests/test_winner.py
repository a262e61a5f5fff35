"""The overall winner: the best arm by the mean of its confirmation runs (its best seed's model),
or without confirmation runs the arm with the best search trial."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sweep.runner import ArmResult
from sweep.winner import model_run_id, pick_winner


def _plan(mode: str = "max", seeds: tuple[int, ...] = (0, 1, 2)):
    return SimpleNamespace(mode=mode, confirm_seeds=seeds)


def _arms() -> list[ArmResult]:
    # b has the single best seed (0.95) and the best search trial, a the best mean.
    a = ArmResult("a", {"arm": "a"}, 0.80, confirmation_values=[0.90, 0.91, 0.89])
    b = ArmResult("b", {"arm": "b"}, 0.85, confirmation_values=[0.95, 0.70, 0.72])
    c = ArmResult("c", None)  # no trial finished
    a.best_confirmation_run_id, b.best_confirmation_run_id = "a-seed", "b-seed"
    a.best_trial_run_id, b.best_trial_run_id = "a-search", "b-search"
    return [a, b, c]


def test_the_best_mean_wins_not_the_best_single_seed():
    winner = pick_winner(_arms(), _plan())
    assert winner.arm == "a" and model_run_id(winner, _plan()) == "a-seed"


def test_a_metric_to_minimise_picks_the_lowest_mean():
    assert pick_winner(_arms(), _plan(mode="min")).arm == "b"


def test_without_confirmation_runs_the_best_search_trial_wins():
    plan = _plan(seeds=())
    winner = pick_winner(_arms(), plan)
    assert winner.arm == "b" and model_run_id(winner, plan) == "b-search"


@pytest.mark.parametrize("seeds", [(0,), ()])
def test_no_result_no_winner(seeds):
    assert pick_winner([ArmResult("a"), ArmResult("b")], _plan(seeds=seeds)) is None
