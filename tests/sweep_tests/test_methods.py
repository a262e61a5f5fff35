"""The search methods a user picks (``--searcher``, ``--scheduler``): each arm gets the
sampler named, a grid covers every combination once, and bad choices are one line."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from types import SimpleNamespace

import optuna
import pytest
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from search_spaces import ArmDefineByRun, SpaceContext, get_space
from sweep import methods
from sweep.options import UsageError
from sweep.pins import check_pins
from tests.sweep_tests.conftest import ROOT

PINS = {"lr": "0.05", "momentum": "0.9", "gamma": "2"}


def surveys(space: str, arms: tuple[str, ...], pins: dict[str, str]):
    return check_pins(get_space(space), arms, SpaceContext(pins=pins), reserved=set())[0]


def plan(**fields) -> SimpleNamespace:
    defaults = dict(
        searcher="tpe", scheduler="asha", seed=3, num_samples=8, grids={}, arms=("a", "b"),
        metric="val_macro_f1", mode="max", max_epochs=8, grace_period=2,
    )  # fmt: skip
    return SimpleNamespace(**{**defaults, **fields})


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("grid", optuna.samplers.GridSampler),
    ],
)
def test_each_searcher_gives_its_sampler(name, kind):
    p = plan(searcher=name, grids={"a": {"batch_size": [32, 64]}})
    assert isinstance(methods.arm_sampler(p, "a"), kind)


def test_tpe_starts_at_random_for_a_third_of_the_arms_trials():
    assert methods.arm_sampler(plan(num_samples=24), "a")._n_startup_trials == 8
    assert methods.arm_sampler(plan(num_samples=12), "a")._n_startup_trials == 4
    assert methods.arm_sampler(plan(num_samples=4), "a")._n_startup_trials == 2


def test_tpe_models_the_parameters_jointly_on_every_supported_optuna():
    # Optuna 4 (which pyproject accepts) defaults to independent TPE without constant liar;
    # the benchmark measured Optuna 5's joint TPE with it.
    sampler = methods.arm_sampler(plan(), "a")
    assert sampler._multivariate is True
    assert sampler._constant_liar is True


def test_the_schedulers_and_the_epochs_they_decide_at():
    asha = methods.arms_scheduler(plan(scheduler="asha"))
    none = methods.arms_scheduler(plan(scheduler="none"))
    assert {type(s) for s in asha.schedulers.values()} == {ASHAScheduler}
    assert {type(s) for s in none.schedulers.values()} == {FIFOScheduler}
    # Reduction factor 3 from grace period 2 to 8 epochs: rungs at 2 and 6, as Ray places them.
    assert methods.decision_epochs(plan(scheduler="asha")) == {2, 6}
    for scheduler in asha.schedulers.values():
        (bracket,) = scheduler._brackets
        assert ({epoch for epoch, _ in bracket._rungs}, bracket.rf) == ({2, 6}, 3)
    assert methods.decision_epochs(plan(scheduler="none")) == frozenset()


def test_a_grid_is_each_arms_choices_with_the_ranges_pinned():
    grids = methods.arm_grids("grid", surveys("focal", ("focal", "ce"), PINS), num_samples=6)
    assert grids["focal"] == {"batch_size": [32, 64, 128], "freeze": grids["focal"]["freeze"]}
    assert len(grids["focal"]["freeze"]) == 2 and grids["ce"] == grids["focal"]
    assert methods.arm_grids("tpe", surveys("focal", ("focal",), {}), num_samples=99) == {}


def test_a_grid_of_ranges_or_too_few_combinations_is_refused_in_one_line():
    with pytest.raises(UsageError) as err:
        methods.arm_grids("grid", surveys("focal", ("focal", "ce"), {}), num_samples=2)
    line = str(err.value)
    assert "\n" not in line and "arm 'focal' searches ranges: gamma [0.5, 3], lr" in line
    assert "--set NAME=VALUE" in line
    ce_pins = {k: v for k, v in PINS.items() if k != "gamma"}
    with pytest.raises(UsageError, match=r"--num-samples 7 exceeds the grid of arm 'ce' \(6 "):
        methods.arm_grids("grid", surveys("focal", ("ce",), ce_pins), num_samples=7)


def test_the_grid_runs_every_combination_once_under_rays_optuna_search():
    space, context = get_space("focal"), SpaceContext(pins=PINS)
    pins = {k: v for k, v in PINS.items() if k != "gamma"}
    grid = methods.arm_grids("grid", surveys("focal", ("ce",), pins), num_samples=6)["ce"]
    searcher = OptunaSearch(
        space=ArmDefineByRun(space, "ce", context, {"seed": 0}),
        metric="v",
        mode="max",
        sampler=methods.arm_sampler(plan(searcher="grid", grids={"ce": grid}), "ce"),
    )
    configs = [searcher.suggest(f"t{i}") for i in range(6)]
    for i in range(6):
        searcher.on_trial_complete(f"t{i}", {"v": 0.5})
    seen = {(c["batch_size"], c["freeze"]) for c in configs}
    assert seen == set(itertools.product(grid["batch_size"], grid["freeze"]))
    assert {c["lr"] for c in configs} == {0.05}


def test_an_unknown_method_is_refused_with_what_is_accepted():
    with pytest.raises(UsageError, match="unknown searcher 'bayes'; accepted: grid, random, tpe"):
        methods.SEARCHERS.get("bayes")
    with pytest.raises(UsageError, match="accepted: asha, none"):
        methods.SCHEDULERS.get("hyperband")


@pytest.mark.slow
def test_random_search_without_early_stopping_runs_and_is_logged(tmp_path):
    result = subprocess.run(
        [
            sys.executable, str(ROOT / "tune.py"), "--space", "focal", "--num-samples", "2",
            "--max-epochs", "2", "--grace-period", "1", "--confirm-seeds", "0",
            "--num-cpus", "2", "--searcher", "random", "--scheduler", "none", "--quiet",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "stopped early" not in result.stdout and "Study.stop" not in result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("focal").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert (parent.data.params["searcher"], parent.data.params["scheduler"]) == ("random", "none")
    search = [r for r in runs if r.data.tags.get("role") == "search"]
    assert len(search) == 4
    for run in search:  # nothing stops a trial: each ran every epoch
        assert len(client.get_metric_history(run.info.run_id, "val_macro_f1")) == 2
