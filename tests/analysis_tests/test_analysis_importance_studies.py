"""Importance and parallel coordinates read the arms' own Optuna studies (the journal file a
sweep logs with its parent run), built here with known trials."""

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution

from analysis import importance
from analysis.errors import AnalysisError
from sweep.studies import journal_storage

N = 16


def _journal(tmp_path, ranges=None) -> bytes:
    """Two arms whose value depends on lr only; focal also searches gamma."""
    ranges = ranges or {"focal": (1e-4, 1e-1), "ce": (1e-4, 1e-1)}
    path = tmp_path / "journal.log"
    storage = journal_storage(path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for arm, (low, high) in ranges.items():
        study = optuna.create_study(study_name=arm, storage=storage, direction="maximize")
        for i in range(N):
            lr = low * (high / low) ** (i / (N - 1))
            params = {"lr": lr, "batch_size": (32, 64)[i % 2]}
            distributions = {
                "lr": FloatDistribution(low, high, log=True),
                "batch_size": CategoricalDistribution((32, 64)),
            }
            if arm == "focal":
                params["gamma"] = 0.5 + (i * 7 % N) / N
                distributions["gamma"] = FloatDistribution(0.5, 1.5)
            value = -((math.log10(lr) + 2.5) ** 2)  # best near lr = 3e-3
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=distributions, value=value)
            )
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
    return path.read_bytes()


def test_the_studies_are_read_per_arm_with_their_complete_trials(tmp_path):
    arms = ["focal", "ce", "bce"]
    studies = importance.read_journal(_journal(tmp_path), arms=arms, factor="loss")
    assert set(studies.trials) == {"focal", "ce"}  # bce has no study: absent, not an error
    assert [len(t) for t in studies.trials.values()] == [N, N]
    assert studies.direction == "maximize"
    table = studies.table("val_macro_f1")
    assert len(table) == 2 * N
    assert sorted(table["params.loss"].unique()) == ["ce", "focal"]
    assert table["metrics.best_val_macro_f1"].max() == pytest.approx(
        max(t.value for trials in studies.trials.values() for t in trials)
    )


def test_importance_of_the_arms_studies_finds_the_param_that_matters(tmp_path):
    studies = importance.read_journal(_journal(tmp_path), arms=["focal", "ce"], factor="loss")
    found = importance.param_importance(None, metric="val_macro_f1", mode="max", studies=studies)
    assert found.reason == ""
    assert found.values.index[0] == "lr" and found.values.iloc[0] > 0.8
    assert found.values.sum() == pytest.approx(1.0)
    assert set(found.values.index) == {"lr", "batch_size", "loss"}
    assert found.dropped == ("gamma",)  # focal only


def test_merged_study_keeps_the_search_distributions_and_covers_both_ranges(tmp_path):
    payload = _journal(tmp_path, {"focal": (1e-4, 1e-2), "ce": (1e-3, 1e-1)})
    studies = importance.read_journal(payload, arms=["focal", "ce"], factor="loss")
    merged = importance.merged_study(studies)
    lr = {t.distributions["lr"] for t in merged.trials}
    assert lr == {FloatDistribution(1e-4, 1e-1, log=True)}
    assert {t.params["loss"] for t in merged.trials} == {"focal", "ce"}
    assert len(merged.trials) == 2 * N


def test_parallel_coordinates_of_the_studies_put_each_trial_on_every_axis(tmp_path):
    studies = importance.read_journal(_journal(tmp_path), arms=["focal", "ce"], factor="loss")
    view = importance.parallel_coordinates(None, metric="val_macro_f1", studies=studies)
    assert set(view.axes) == {"lr", "batch_size", "gamma", "loss"}
    assert view.coords.shape == (2 * N, 4)
    lr = view.coords[:, view.axes.index("lr")]
    assert lr.min() == 0.0 and lr.max() == 1.0  # log scale: 3 decades span the axis
    assert lr[1] == pytest.approx(1 / (N - 1))


class _NoJournal:
    def read_bytes(self, run_id, path):
        raise AnalysisError(f"run {run_id} has no artifact '{path}'")


class _Sweep:
    parent_run_id = "p"
    arms = ["focal", "ce"]
    factor = "loss"


def test_a_sweep_without_the_journal_falls_back_to_its_runs():
    assert importance.sweep_studies(_NoJournal(), _Sweep()) is None
