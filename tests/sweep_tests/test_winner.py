"""The overall winner: the best arm by the mean of its confirmation runs (its best seed's model),
or without confirmation runs the arm with the best search trial."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sweep.tally import ArmResult
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


@pytest.mark.parametrize("run_best_epoch, logged", [(2, True), (3, False)])
def test_a_checkpoint_of_another_best_epoch_than_the_runs_logs_no_model(
    tmp_path, capsys, run_best_epoch, logged
):
    # A search trial whose run ended at best epoch 3 while Ray kept its checkpoint of epoch 3
    # holding best epoch 2 (the driver died before hearing the later checkpoint).
    import dataclasses

    import torch
    from ray import tune

    from sweep.winner import _log_from_checkpoint
    from trainables import contract
    from trainables.config import TrialConfig
    from trainables.data import DataOptions, load_dataset
    from trainables.edge import tracking
    from trainables.edge.trial import CHECKPOINT_FILE, copy_trained_state
    from trainables.engine import build_training_state

    full = load_dataset("digits", DataOptions(split_seed=0))
    data = dataclasses.replace(full, train_x=full.train_x[:64], train_y=full.train_y[:64])
    cfg = TrialConfig(batch_size=32, max_epochs=3)
    state = build_training_state(cfg, data, torch.device("cpu"))
    state.epoch, state.best_epoch = 3, 2
    saved = {"state": state.state_dict(), "history": [], "best": copy_trained_state(state)}
    torch.save(saved, tmp_path / CHECKPOINT_FILE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "winner")
    run_id = tracking.start_parent_run(uri, experiment, "trial", tags={}, params={})
    tracking.log_metrics(uri, run_id, {contract.BEST_EPOCH_METRIC: float(run_best_epoch)})
    arm = ArmResult("ce", cfg.to_dict(), 0.5)
    arm.best_trial_checkpoint = tune.Checkpoint.from_directory(tmp_path)

    model_uri = _log_from_checkpoint(SimpleNamespace(data=data), arm, uri, run_id)

    assert (model_uri is not None) is logged
    assert (tracking.run_model_uri(uri, run_id) is not None) is logged
    warning = capsys.readouterr().err
    assert ("best epoch is 3, but the checkpoint Ray kept holds epoch 2's" in warning) is not logged


@pytest.mark.parametrize(
    ("argv", "roles"),
    [
        (["--confirm-seeds", "0"], {"search"}),  # the best search trial's model: its checkpoint
        (["--confirm-seeds", "0", "--log-models", "none"], set()),
        (["--confirm-seeds", "2"], set()),  # the confirmation runs log their own
        (["--confirm-seeds", "2", "--log-models", "search"], set()),
    ],
)
def test_only_trials_whose_model_the_driver_logs_keep_a_checkpoint_where_they_end(
    argv, roles, in_tmp
):
    from sweep.options import parse_args
    from sweep.plan import build_plan
    from sweep.winner import models_from_checkpoints

    plan = build_plan(parse_args(["--space", "focal", *argv]))
    assert models_from_checkpoints(plan) == roles


@pytest.fixture
def focal_plan(tmp_path, monkeypatch):
    from sweep.options import parse_args
    from sweep.plan import build_plan

    monkeypatch.chdir(tmp_path)
    return build_plan(parse_args(["--space", "focal", "--register-model", "digits"]))


def _scored_arms(focal: list[float], ce: list[float]) -> list[ArmResult]:
    arms = [
        ArmResult("focal", {"loss": "focal"}, max(focal), confirmation_values=focal),
        ArmResult("ce", {"loss": "ce"}, max(ce), confirmation_values=ce),
    ]
    for arm in arms:
        arm.model_uri, arm.best_confirmation_run_id = f"runs:/{arm.arm}/model", arm.arm
    return arms


def test_a_winner_no_better_than_chance_is_not_named_tagged_or_registered(focal_plan, monkeypatch):
    """digits-lt's val split has ten classes: a guess from the prior scores macro F1 0.1."""
    from sweep import winner as winner_module
    from sweep.summary import format_summary

    arms = _scored_arms([0.05, 0.069, 0.08], [0.06, 0.04, 0.05])
    line = winner_module.no_learning_line(focal_plan, arms)
    assert line.startswith("no trial learned: best val_macro_f1 0.0663 (loss=focal, mean over")
    assert line.count("chance 0.1 ") == 1
    text = format_summary(focal_plan, arms, "1", "abc")
    assert f"No winner: {line}; nothing registered" in text and "Winner:" not in text

    calls = []
    monkeypatch.setattr(winner_module, "_arm_model", lambda plan, arm, uri: arm.model_uri)
    monkeypatch.setattr(winner_module.tracking, "set_tags", lambda *a: calls.append(a))
    monkeypatch.setattr(winner_module.tracking, "register_model", lambda *a: calls.append(a))
    target = SimpleNamespace(uri="sqlite:///unused.db", parent_run_id="parent")
    winner_module.finish_models(focal_plan, arms, target)
    assert calls == [] and arms[0].registered_model is None


def test_a_winner_above_chance_is_named(focal_plan):
    from sweep.summary import format_summary
    from sweep.winner import no_learning_line

    arms = _scored_arms([0.09, 0.12, 0.11], [0.06, 0.04, 0.05])  # focal's mean 0.107 > 0.1
    assert no_learning_line(focal_plan, arms) is None
    clear = {
        "answer": "loss=focal better on test macro F1: +5.3 points [+2.1, +8.5] (3 pairs)",
        "answer.clear": "True",
    }
    text = format_summary(focal_plan, arms, "1", "abc", clear)
    assert f"Answer: {clear['answer']}" in text
    assert "Winner: loss=focal, better than every other arm in the paired comparison; model " in (
        text
    )


def test_without_a_clear_difference_the_model_is_kept_not_crowned(focal_plan):
    """The main job's case: the best mean wins by less than the interval's width."""
    from sweep.summary import format_summary

    arms = _scored_arms([0.90, 0.91, 0.89], [0.91, 0.89, 0.90])
    unclear = {
        "answer": "no clear difference between loss=ce and loss=focal on test macro F1: -0.9 "
        "points [-2.4, +0.6] (the interval covers 0) (3 pairs)",
        "answer.clear": "False",
    }
    text = format_summary(focal_plan, arms, "1", "abc", unclear)
    assert f"Answer: {unclear['answer']}" in text and "Winner" not in text
    assert (
        "Model kept: loss=focal's, the higher mean over confirmation seeds (the paired "
        "comparison does not call it better); model runs:/focal/model" in text
    )


def test_the_summary_says_at_which_trial_each_arms_best_came(focal_plan):
    """From the parent run's tags ``best_trial.<arm>``: settled, or late (last quarter)."""
    from sweep.summary import format_summary

    arms = _scored_arms([0.90, 0.93, 0.89], [0.91, 0.89, 0.90])  # best: focal 0.93, ce 0.91
    tags = {"best_trial.focal": "7 of 32", "best_trial.ce": "25 of 32"}
    lines = format_summary(focal_plan, arms, "1", "abc", tags).splitlines()
    assert (
        "    best search trial: val_macro_f1 = 0.9300, came at trial 7 of 32 (the search had "
        "settled)" in lines
    )
    assert (
        "    best search trial: val_macro_f1 = 0.9100, came at trial 25 of 32 (more trials "
        "might still help)" in lines
    )
    # Without the tag (an older sweep's parent run), the line is as it was.
    assert (
        "    best search trial: val_macro_f1 = 0.9100"
        in format_summary(focal_plan, arms, "1", "abc").splitlines()
    )


def test_a_loss_metric_has_no_chance_level(tmp_path, monkeypatch):
    from sweep.options import parse_args
    from sweep.plan import build_plan
    from sweep.winner import no_learning_line

    monkeypatch.chdir(tmp_path)
    plan = build_plan(parse_args(["--space", "focal", "--metric", "val_loss"]))
    assert no_learning_line(plan, _scored_arms([9.0], [8.0])) is None
