"""What the real, tiny sweep of ``conftest.sweep`` shows in MLflow: the answer on the parent
run (recomputed here from the child runs), names, dataset inputs, system metrics, the arms'
Optuna studies, and the URL the summary prints."""

import json
import re
import statistics
from collections import Counter
from pathlib import Path

import numpy as np
import optuna
import pytest
from scipy import stats as scipy_stats

from sweep import studies
from tests.sweep_tests.conftest import ARMS, OPTUNA_DB
from trainables import contract
from trainables.config import trial_number
from trainables.data import DataOptions, load_dataset
from trainables.edge import tracking

pytestmark = pytest.mark.slow
METRIC = "best_val_macro_f1"


def _parent(runs):
    return next(r for r in runs if r.data.tags.get("role") == "sweep")


def _children(runs, role=None):
    return [
        r
        for r in runs
        if r.data.tags.get("role") != "sweep" and role in (None, r.data.tags.get("role"))
    ]


def test_the_parent_run_carries_each_arms_values_as_the_child_runs_say(sweep):
    _, _, runs, _ = sweep
    metrics = _parent(runs).data.metrics
    for arm in ARMS:
        search, confirm = (
            [r.data.metrics[METRIC] for r in _children(runs, role) if r.data.tags["arm"] == arm]
            for role in ("search", "confirmation")
        )
        assert metrics[f"arm.{arm}.search_best"] == pytest.approx(max(search))
        assert metrics[f"arm.{arm}.confirm_mean"] == pytest.approx(statistics.fmean(confirm))
        assert metrics[f"arm.{arm}.confirm_std"] == pytest.approx(statistics.stdev(confirm))
        assert metrics[f"arm.{arm}.confirm_n"] == len(confirm)


def test_the_parent_run_carries_the_paired_difference_and_its_verdict(sweep):
    _, _, runs, _ = sweep
    parent = _parent(runs)
    # The winner by the sweep's metric (val); the difference on the held-out test split.
    val, test = (
        {
            (r.data.tags["arm"], r.data.tags["seed"]): r.data.metrics[name]
            for r in _children(runs, "confirmation")
        }
        for name in (METRIC, "test_macro_f1")
    )
    means = {arm: np.mean([v for (a, _), v in val.items() if a == arm]) for arm in ARMS}
    best, other = sorted(ARMS, key=lambda arm: -means[arm])
    seeds = sorted({seed for _, seed in test})
    diffs = np.array([test[best, s] - test[other, s] for s in seeds])
    key = f"answer.{best}_vs_{other}"
    metrics = parent.data.metrics
    assert metrics[f"{key}.diff"] == pytest.approx(diffs.mean())
    assert metrics[f"{key}.n"] == len(seeds)
    t_low, t_high = scipy_stats.t.interval(
        0.95, len(diffs) - 1, loc=diffs.mean(), scale=scipy_stats.sem(diffs)
    )
    assert (metrics[f"{key}.t_low"], metrics[f"{key}.t_high"]) == pytest.approx((t_low, t_high))
    # A percentile bootstrap interval never reaches past the observed differences.
    assert diffs.min() - 1e-12 <= metrics[f"{key}.ci_low"] <= metrics[f"{key}.ci_high"]
    assert metrics[f"{key}.ci_high"] <= diffs.max() + 1e-12
    verdict = parent.data.tags[f"{key}.verdict"]
    assert "on test macro F1" in verdict
    if t_low <= 0 <= t_high:
        assert verdict.startswith("no clear difference")
    answer = parent.data.tags["answer"]
    assert answer.startswith(verdict) and answer.count(f"{len(seeds)} pairs") == 1  # said once


def test_the_parent_run_counts_trials_by_phase_and_outcome(sweep):
    _, _, runs, _ = sweep
    metrics = _parent(runs).data.metrics
    seen = Counter((r.data.tags["role"], r.data.tags["outcome"]) for r in _children(runs))
    for role in contract.TRIAL_ROLES:
        for outcome in contract.OUTCOMES:
            assert metrics[f"trials.{role}.{outcome}"] == seen[role, outcome]
    assert sum(metrics[f"trials.search.{o}"] for o in contract.OUTCOMES) == 2 * len(ARMS)


def test_the_parent_run_says_at_which_search_trial_each_arms_best_came(sweep):
    _, client, runs, stdout = sweep
    parent = _parent(runs)
    for arm in ARMS:
        search = [r for r in _children(runs, "search") if r.data.tags["arm"] == arm]
        assert None not in [trial_number(r.info.run_name) for r in search]
        search.sort(key=lambda r: trial_number(r.info.run_name))
        values = np.array([r.data.metrics[METRIC] for r in search])
        # Brute force: the first trial whose value is the final best so far.
        k = int(np.flatnonzero(values == np.maximum.accumulate(values)[-1])[0]) + 1
        n = len(values)
        assert parent.data.tags[f"best_trial.{arm}"] == f"{k} of {n}"
        outlook = "more trials might still help" if k > 0.75 * n else "the search had settled"
        assert f"= {values.max():.4f}, came at trial {k} of {n} ({outlook})\n" in stdout
    figure = Path(client.download_artifacts(parent.info.run_id, "search/anytime.png"))
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_names_say_what_ran_and_children_lead_with_arm_and_role(sweep):
    _, _, runs, _ = sweep
    assert re.fullmatch(
        r"focal · focal vs ce · digits-lt · smallcnn · \d\d-\d\d \d\d:\d\d",
        _parent(runs).info.run_name,
    )
    for run in _children(runs, "confirmation"):
        tags = run.data.tags
        assert run.info.run_name == f"loss={tags['arm']} confirm s{tags['seed']}"
    for run in _children(runs, "search"):
        assert re.match(rf"loss={run.data.tags['arm']} search #\d+ · smallcnn ", run.info.run_name)


def test_hardware_settings_are_logged_as_they_acted_on_the_cpu(sweep):
    _, _, runs, _ = sweep
    for run in _children(runs):
        assert run.data.params["amp"] == "False"
        assert run.data.params["channels_last"] == "False"


def test_every_run_has_the_dataset_as_an_input_with_its_digest_and_class_counts(sweep):
    _, _, runs, _ = sweep
    data = load_dataset("digits-lt", DataOptions(split_seed=0, val_fraction=0.25))
    expected = tracking.dataset_record(data, "digits-lt")
    for run in runs:
        (found,) = run.inputs.dataset_inputs
        assert (found.dataset.name, found.dataset.digest) == ("digits-lt", expected.digest)
        assert {t.key: t.value for t in found.tags} == {"mlflow.data.context": "training"}
        profile = json.loads(found.dataset.profile)
        counts = np.bincount(data.train_y.numpy(), minlength=10)
        assert list(profile["train_class_counts"].values()) == counts.tolist()
        assert profile["val_images"] == len(data.val_y)


def test_each_trial_run_has_system_metrics_sampled_while_it_ran(sweep):
    _, client, runs, _ = sweep
    for run in _children(runs):
        history = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
        assert history, run.info.run_name
        assert all(0 <= m.value <= 100 for m in history)
        assert "system/system_memory_usage_megabytes" in run.data.metrics
        # Sampled while it ran: the last samples of a trial Ray stopped are written by the
        # trial a moment after the driver has ended its run.
        stamps = [m.timestamp for m in history]
        assert run.info.start_time <= min(stamps) <= max(stamps) <= run.info.end_time + 10_000


def test_the_arms_optuna_studies_reopen_with_their_trials_values(sweep):
    folder, client, runs, _ = sweep
    parent = _parent(runs)
    journal = contract.OPTUNA_JOURNAL_ARTIFACT
    local = client.download_artifacts(parent.info.run_id, journal, str(folder))
    storage = studies.journal_storage(local)
    names = json.loads(parent.data.tags[contract.OPTUNA_STUDIES_TAG])
    for arm in ARMS:
        search = {r.info.run_id: r for r in _children(runs, "search") if r.data.tags["arm"] == arm}
        for where, name in ((storage, arm), (f"sqlite:///{folder / OPTUNA_DB}", names[arm])):
            study = optuna.load_study(study_name=name, storage=where)
            assert study.direction == optuna.study.StudyDirection.MAXIMIZE
            trials = study.get_trials()
            assert len(trials) == len(search)  # every search trial, however it ended
            for trial in trials:
                run = search[trial.user_attrs[studies.MLFLOW_RUN_ATTR]]
                assert f"search #{trial.number} " in run.info.run_name
                assert trial.params["lr"] == pytest.approx(float(run.data.params["lr"]))
                outcome = run.data.tags["outcome"]
                if outcome in ("diverged", "failed"):  # the sampler heard "failed"
                    assert trial.state == optuna.trial.TrialState.FAIL
                elif trial.state == optuna.trial.TrialState.PRUNED:  # stopped with no value
                    assert outcome == "stopped_early" and trial.value is None
                else:
                    assert trial.state == optuna.trial.TrialState.COMPLETE
                    assert trial.value == pytest.approx(run.data.metrics[METRIC])
            assert any(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_the_summary_prints_the_runs_view_url_in_model_training_mode(sweep):
    folder, client, _, stdout = sweep
    experiment = client.get_experiment_by_name("focal")
    url = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
    assert f"  open: {url}?workflowType=machine_learning\n" in stdout
    assert f"    after: mlflow ui --backend-store-uri sqlite:///{folder / 'mlflow.db'}" in stdout
    journal = next((folder / "ray_results").glob("focal-optuna-*.log"))
    assert f"  optuna: optuna-dashboard {journal}" in stdout
