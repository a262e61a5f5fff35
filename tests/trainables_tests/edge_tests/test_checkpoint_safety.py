"""Checkpoints are read with ``weights_only``: a file on the storage path that carries a pickle
payload is refused without running it, in the trial and on the driver, and what a trial
writes (its confusion matrices included) reads back the same."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ray import tune as ray_tune

from trainables.config import TrialConfig
from trainables.data import DataOptions, load_dataset
from trainables.edge import trial
from trainables.edge.trial import (
    CHECKPOINT_FILE,
    CheckpointError,
    load_checkpoint,
    load_trained_model,
)
from trainables.engine import (
    TrainedModel,
    TrainingState,
    build_model_and_criterion,
    build_training_state,
    fit,
)

CPU = torch.device("cpu")
CFG = TrialConfig(batch_size=32, max_epochs=2)


@pytest.fixture(scope="module")
def data():
    full = load_dataset("digits", DataOptions(split_seed=0))
    return dataclasses.replace(full, train_x=full.train_x[:64], train_y=full.train_y[:64])


class Payload:
    """What an attacker with write access to the storage path would put in a checkpoint:
    unpickling it calls ``open(marker, "w")`` (anything else could be called the same way)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _trained(data) -> TrainingState:
    state = build_training_state(CFG, data, CPU)
    list(fit(CFG.replace(max_epochs=1), data, CPU, state))
    return state


def _written_by_a_trial(state, folder: Path, monkeypatch, confusions) -> Path:
    """The checkpoint ``_report_with_checkpoint`` writes, kept in ``folder``."""

    def report(metrics, checkpoint=None):
        with checkpoint.as_directory() as written:
            (folder / CHECKPOINT_FILE).write_bytes((Path(written) / CHECKPOINT_FILE).read_bytes())

    monkeypatch.setattr(
        trial, "tune", SimpleNamespace(report=report, Checkpoint=ray_tune.Checkpoint)
    )
    history = [{"epoch": 1, "val_loss": 0.5}]
    trial._report_with_checkpoint({"epoch": 1}, state, history, None, confusions)
    return folder


def _restored(folder: Path, data, monkeypatch):
    checkpoint = ray_tune.Checkpoint.from_directory(folder)
    monkeypatch.setattr(trial, "tune", SimpleNamespace(get_checkpoint=lambda: checkpoint))
    again = build_training_state(CFG, data, CPU)
    return again, trial._restore(again, CPU)


def test_a_trials_checkpoint_holds_only_tensors_and_plain_values_and_round_trips(
    data, tmp_path, monkeypatch
):
    state = _trained(data)
    confusions = {"train": np.eye(10, dtype=np.int64) * 3, "val": np.ones((10, 10), np.int64)}
    folder = _written_by_a_trial(state, tmp_path, monkeypatch, confusions)
    raw = torch.load(folder / CHECKPOINT_FILE, weights_only=True)  # refused before the fix
    assert set(raw) == {"state", "history", "confusions"}
    again, (history, best, restored) = _restored(folder, data, monkeypatch)
    assert history == [{"epoch": 1, "val_loss": 0.5}]
    assert again.epoch == state.epoch == 1 and best is not None  # epoch 1 was its best
    assert restored.keys() == confusions.keys()
    for split, matrix in confusions.items():
        assert isinstance(restored[split], np.ndarray)
        np.testing.assert_array_equal(restored[split], matrix)
    own = state.model.trained_state_dict()
    assert all(torch.equal(again.model.trained_state_dict()[k], own[k]) for k in own)


def _crafted(folder: Path, data, marker: Path) -> Path:
    state = build_training_state(CFG, data, CPU)
    saved = {"state": state.state_dict(), "history": [Payload(marker)]}
    torch.save(saved, folder / CHECKPOINT_FILE)
    return folder


LOADERS = {
    "restore in a trial": lambda folder, data, mp: _restored(folder, data, mp),
    "load_checkpoint": lambda folder, data, mp: load_checkpoint(
        folder, build_training_state(CFG, data, CPU), CPU
    ),
    "the driver's load_trained_model": lambda folder, data, mp: load_trained_model(
        folder, TrainedModel(*build_model_and_criterion(CFG, data, CPU))
    ),
}


@pytest.mark.parametrize("loader", LOADERS, ids=list(LOADERS))
def test_a_checkpoint_with_a_pickle_payload_is_refused_without_running_it(
    loader, data, tmp_path, monkeypatch
):
    marker = tmp_path / "ran"
    folder = _crafted(tmp_path, data, marker)
    with pytest.raises(CheckpointError, match=r"refused: .* values \(io\.open\)") as refused:
        LOADERS[loader](folder, data, monkeypatch)
    assert not marker.exists()
    assert "\n" not in str(refused.value)  # one line, not torch's page of advice


def test_a_checkpoint_of_the_old_format_gets_one_clear_line(data, tmp_path):
    state = build_training_state(CFG, data, CPU)
    old = {"state": state.state_dict(), "history": [], "confusions": {"val": np.eye(3)}}
    torch.save(old, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path, build_training_state(CFG, data, CPU), CPU)
    message = str(refused.value)
    assert message.startswith(f"checkpoint {tmp_path / CHECKPOINT_FILE} refused: ")
    assert "an older version's checkpoint" in message and "\n" not in message


def test_the_driver_logs_no_model_from_a_crafted_checkpoint_and_says_why(data, tmp_path, capsys):
    from sweep.tally import ArmResult
    from sweep.winner import _log_from_checkpoint

    marker = tmp_path / "ran"
    folder = _crafted(tmp_path, data, marker)
    arm = ArmResult("ce", CFG.to_dict(), 0.5)
    arm.best_trial_checkpoint = ray_tune.Checkpoint.from_directory(folder)
    uri = f"sqlite:///{tmp_path / 'unused.db'}"
    assert _log_from_checkpoint(SimpleNamespace(data=data), arm, uri, "run-id") is None
    assert not marker.exists()
    err = capsys.readouterr().err
    assert err.startswith("tune.py: warning: arm ce: no model logged: checkpoint ")
    assert err.count("\n") == 1
