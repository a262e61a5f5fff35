"""When a trial checkpoints: its first epoch always; the scheduler's decision epochs and its last
one where the driver may log its model from the checkpoint; others only while checkpoints stay
under a share of its time. And the checkpoint a
paced trial ends with still holds its best epoch's weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from sklearn.metrics import f1_score

from trainables.config import TrialConfig
from trainables.data import DataOptions, ImageData, load_dataset
from trainables.edge.checkpoint_pacing import CheckpointPacer, CheckpointPolicy
from trainables.engine import build_model_and_criterion


def _paced(
    policy: CheckpointPolicy, max_epochs: int, epoch_s: float, cost_s: float, wait_s: float = 0.0
) -> list:
    """The epochs checkpointed; each report waits ``wait_s`` for the driver, and one with a
    checkpoint ``cost_s`` more."""
    pacer = CheckpointPacer(policy, max_epochs)
    written = []
    for epoch in range(1, max_epochs + 1):
        checkpointed = pacer.due(epoch, epoch_s)
        written += [epoch] if checkpointed else []
        pacer.reported(wait_s + cost_s * checkpointed, checkpointed=checkpointed)
    return written


def test_a_cheap_checkpoint_is_written_every_epoch():
    assert _paced(CheckpointPolicy(), 6, epoch_s=1.0, cost_s=0.01) == [1, 2, 3, 4, 5, 6]


def test_a_costly_one_waits_until_it_is_a_small_share_of_the_work_since_the_last():
    # 0.2 s per checkpoint at most 5% of the time: one per 4 s of epochs, and the last.
    assert _paced(CheckpointPolicy(), 10, epoch_s=1.0, cost_s=0.2) == [1, 5, 9, 10]
    every_2 = [1, 3, 5, 7, 9, 10]
    assert _paced(CheckpointPolicy(max_share=0.1), 10, epoch_s=1.0, cost_s=0.2) == every_2


def test_the_wait_for_the_driver_is_not_counted_as_the_checkpoints_cost():
    # The first checkpoint's report also waited 0.3 s for the driver (0.5 s: one per 10 s of
    # epochs); once a plain report shows that wait, a checkpoint costs its 0.2 s alone.
    paced = _paced(CheckpointPolicy(), 16, epoch_s=1.0, cost_s=0.2, wait_s=0.3)
    assert paced == [1, 11, 15, 16]


def test_one_plain_report_that_waited_long_does_not_make_checkpoints_look_free():
    # Epoch 14's plain report waits 2 s for a busy driver: a 0.2 s checkpoint measured against
    # it cost nothing, and every epoch after checkpointed (a fixed bug).
    pacer = CheckpointPacer(CheckpointPolicy(), 30)
    written = []
    for epoch in range(1, 31):
        checkpointed = pacer.due(epoch, 1.0)
        written += [epoch] if checkpointed else []
        wait = 2.0 if epoch == 14 else 0.3
        pacer.reported(wait + 0.2 * checkpointed, checkpointed=checkpointed)
    assert written == [1, 11, 15, 19, 23, 27, 30]


def test_decision_epochs_and_the_last_are_always_written():
    policy = CheckpointPolicy(frozenset({2, 4, 8}), max_share=0.0)
    assert _paced(policy, 10, epoch_s=1.0, cost_s=5.0) == [1, 2, 4, 8, 10]


def test_a_trial_whose_model_comes_from_no_checkpoint_is_only_paced():
    # Confirmation runs log their own model, and so does every trial of a sweep with them:
    # their last and decision epochs need no checkpoint (0.4-0.6 s for a ResNet-18).
    policy = CheckpointPolicy(frozenset({2, 4, 8}), max_share=0.0, model_roles=frozenset())
    assert _paced(policy, 10, epoch_s=1.0, cost_s=5.0) == [1]
    cheap = CheckpointPolicy(frozenset({2}), max_share=0.05, model_roles=frozenset())
    assert _paced(cheap, 10, epoch_s=1.0, cost_s=0.2) == [1, 5, 9]


def test_the_roles_the_driver_logs_models_for_keep_their_checkpoints():
    policy = CheckpointPolicy(frozenset({2}), max_share=0.0, model_roles=frozenset({"search"}))
    for role, written in {"search": [1, 2, 6], "confirmation": [1]}.items():
        pacer = CheckpointPacer(policy, 6, role)
        due = []
        for epoch in range(1, 7):
            due += [epoch] if pacer.due(epoch, 1.0) else []
            pacer.reported(1.0, checkpointed=epoch in due)
        assert due == written, role


def test_a_decision_epoch_resets_the_clock():
    policy = CheckpointPolicy(frozenset({3}))
    # 1 s checkpoints need 20 s of work: 3 is a decision epoch, 23 the first paced one after it.
    assert _paced(policy, 30, epoch_s=1.0, cost_s=1.0) == [1, 3, 23, 30]


# --- the trial under a recorder of Ray's side -------------------------------------------------


@pytest.fixture
def recorded_reports(monkeypatch):
    """``train_trial`` without Ray: each report's epoch, and the checkpoint file it came with
    (read while its temporary folder still exists)."""
    import ray

    from trainables.edge import trial

    reports: list[tuple[int, dict | None]] = []

    def report(metrics, checkpoint=None):
        saved = checkpoint and torch.load(checkpoint / trial.CHECKPOINT_FILE, weights_only=False)
        reports.append((metrics["epoch"], saved))

    fake = SimpleNamespace(
        get_checkpoint=lambda: None,
        get_context=lambda: SimpleNamespace(get_trial_id=lambda: None),
        report=report,
        Checkpoint=SimpleNamespace(from_directory=Path),
    )
    monkeypatch.setattr(trial, "tune", fake)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=str))
    return reports


def _trial(
    policy: CheckpointPolicy, store, max_epochs: int = 5, mode: str = "max"
) -> tuple[TrialConfig, ImageData]:
    from trainables.edge.trial import train_trial

    full = load_dataset("digits", DataOptions(split_seed=0))
    data = dataclasses.replace(full, train_x=full.train_x[:200], train_y=full.train_y[:200])
    cfg = TrialConfig(batch_size=32, max_epochs=max_epochs, lr=0.05, mode=mode)
    train_trial(cfg.to_dict(), data=data, tracking=store, checkpoints=policy)
    return cfg, data


def test_a_trial_checkpoints_where_its_policy_says(recorded_reports, store):
    _trial(CheckpointPolicy(frozenset({2}), max_share=0.0), store)
    assert [epoch for epoch, _ in recorded_reports] == [1, 2, 3, 4, 5]
    assert [epoch for epoch, saved in recorded_reports if saved] == [1, 2, 5]


def test_every_epoch_is_checkpointed_when_the_share_allows_it(recorded_reports, store):
    _trial(CheckpointPolicy(max_share=1e9), store)
    assert [epoch for epoch, saved in recorded_reports if saved] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_last_checkpoint_of_a_paced_trial_holds_its_best_epoch(recorded_reports, store, mode):
    from trainables.edge.trial import _best_of

    # "min": the best epoch by the least val F1 is one before the last, whose weights the
    # checkpoint keeps apart from the last epoch's.
    cfg, data = _trial(CheckpointPolicy(max_share=0.0), store, max_epochs=6, mode=mode)
    assert [epoch for epoch, saved in recorded_reports if saved] == [1, 6]
    last = recorded_reports[-1][1]
    history = last["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    values = [row["val_macro_f1"] for row in history]
    best_value = max(values) if mode == "max" else min(values)
    assert last["state"]["best_epoch"] == 1 + values.index(best_value)
    assert ("best" in last) is (last["state"]["best_epoch"] < 6)
    if mode == "min":
        assert last["state"]["best_epoch"] < 6
    # The weights the driver logs for --confirm-seeds 0 score the best epoch's value.
    model, _ = build_model_and_criterion(cfg, data, torch.device("cpu"))
    model.load_trained_state_dict(_best_of(last))
    model.eval()
    with torch.no_grad():
        predicted = model(data.val_x.float()).argmax(dim=1).numpy()
    assert f1_score(data.val_y.numpy(), predicted, average="macro") == pytest.approx(best_value)


@pytest.mark.parametrize(("outcome", "trained"), [("completed", False), ("interrupted", True)])
def test_a_restarted_trial_without_a_checkpoint_trains_only_if_its_run_had_not_ended(
    recorded_reports, store, monkeypatch, outcome, trained
):
    """Ray's saved state can hold a trial without any of its checkpoints (it checkpoints only
    some epochs): restarted, it starts from its first epoch. If its run had ended before the
    driver died, it is not trained again (a fixed bug: only a trial restored from a
    checkpoint asked)."""
    from trainables import contract
    from trainables.edge import tracking, trial

    c = tracking.client(store.uri)
    tags = {contract.RAY_TRIAL_TAG: "t1", contract.PARENT_TAG: store.parent_run_id}
    earlier = c.create_run(store.experiment_id, tags={**tags, contract.OUTCOME_TAG: outcome})
    for step in (1, 2):
        c.log_metric(earlier.info.run_id, "val_macro_f1", 0.1 * step, step=step)
        c.log_metric(earlier.info.run_id, "best_val_macro_f1", 0.1 * step, step=step)
    c.set_terminated(earlier.info.run_id, "FINISHED" if outcome == "completed" else "KILLED")
    context = SimpleNamespace(get_trial_id=lambda: "t1")
    monkeypatch.setattr(trial.tune, "get_context", lambda: context)
    _trial(CheckpointPolicy(), store, max_epochs=2)
    # Trained: a report per epoch; not: the ended run's result once, at its last epoch.
    assert [epoch for epoch, _ in recorded_reports] == ([1, 2] if trained else [2])
    assert len(c.get_metric_history(earlier.info.run_id, "val_macro_f1")) == 2 + 2 * trained
    (run,) = tracking.child_runs(store.uri, store.experiment_id, store.parent_run_id)
    assert run.info.run_id == earlier.info.run_id  # the same run, continued or left as it was


@pytest.mark.parametrize("outcome", ["stopped_early", "diverged"])
def test_a_restarted_trial_whose_run_had_ended_tells_ray_that_runs_result(
    store, monkeypatch, outcome
):
    """Ray's saved state can hold such a trial without any of its results; a trial that then
    returned without a report left Ray without the searched metric, and the resumed sweep
    stopped on Ray's error (a fixed bug). It reports what the run had reported last, at its
    last epoch, without the test split's scores."""
    from mlflow.entities import Metric

    from trainables import contract
    from trainables.edge import tracking, trial

    c = tracking.client(store.uri)
    tags = {contract.RAY_TRIAL_TAG: "t2", contract.PARENT_TAG: store.parent_run_id}
    tags.update({contract.OUTCOME_TAG: outcome, contract.DIVERGED_EPOCH_TAG: "3"})
    tags[contract.FEATURE_CACHE_TAG] = "used"
    earlier = c.create_run(store.experiment_id, tags=tags).info.run_id
    for step, (f1, best, loss) in enumerate([(0.2, 0.2, 2.0), (0.5, 0.5, 1.5), (0.4, 0.5, 1.7)]):
        values = {"val_macro_f1": f1, "best_val_macro_f1": best, "val_loss": loss, "lr": 0.1}
        c.log_batch(earlier, [Metric(k, v, 0, step + 1) for k, v in values.items()])
    c.log_metric(earlier, "test_macro_f1", 0.45, step=2)
    c.set_terminated(earlier, "FINISHED" if outcome == "stopped_early" else "FAILED")
    reports = _fake_ray(monkeypatch, "t2")
    _trial(CheckpointPolicy(), store, max_epochs=5)
    if outcome == "diverged":
        expected = {"best_val_macro_f1": 0.5, trial.DIVERGED_KEY: 1}
    else:
        expected = {"best_val_macro_f1": 0.5, "val_macro_f1": 0.4, "val_loss": 1.7}
    expected.update({"epoch": 3, "training_iteration": 3, "feature_cache": "used"})
    assert reports == [{**expected, "mlflow_run_id": earlier}]
    assert len(c.get_metric_history(earlier, "val_macro_f1")) == 3  # nothing trained again


@pytest.mark.parametrize("outcome", ["failed", "completed"])
def test_a_restarted_trial_whose_run_ended_without_a_result_fails_again(
    store, monkeypatch, outcome
):
    """A run that had failed, or that ended with no value of the searched metric, has no
    result to give Ray: the trial fails (Ray records it so), and is not trained again."""
    from trainables import contract
    from trainables.edge import tracking, trial

    c = tracking.client(store.uri)
    tags = {contract.RAY_TRIAL_TAG: "t3", contract.PARENT_TAG: store.parent_run_id}
    earlier = c.create_run(store.experiment_id, tags={**tags, contract.OUTCOME_TAG: outcome})
    c.set_terminated(earlier.info.run_id, "FAILED" if outcome == "failed" else "FINISHED")
    reports = _fake_ray(monkeypatch, "t3")
    with pytest.raises(trial.EndedRunError, match="ended before the restart with no result"):
        _trial(CheckpointPolicy(), store, max_epochs=2)
    assert reports == [] and c.get_metric_history(earlier.info.run_id, "val_macro_f1") == []


def _fake_ray(monkeypatch, trial_id: str) -> list[dict]:
    """Ray's side of ``train_trial`` for a restarted trial: the metrics of every report."""
    from trainables.edge import trial

    reports: list[dict] = []
    fake = SimpleNamespace(
        get_context=lambda: SimpleNamespace(get_trial_id=lambda: trial_id),
        report=lambda metrics, checkpoint=None: reports.append(metrics),
    )
    monkeypatch.setattr(trial, "tune", fake)
    return reports


def test_a_trial_looks_for_its_earlier_run_once(recorded_reports, store, monkeypatch):
    """Whether its run had ended and which run to continue are one query of the store."""
    from trainables.edge import tracking, trial

    calls = []
    real = tracking.find_child_run

    def counted(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(tracking._runs, "find_child_run", counted)
    monkeypatch.setattr(trial, "find_child_run", counted)
    context = SimpleNamespace(get_trial_id=lambda: "t7")
    monkeypatch.setattr(trial.tune, "get_context", lambda: context)
    _trial(CheckpointPolicy(), store, max_epochs=1)
    assert calls == ["t7"]
