import dataclasses

import numpy as np
import pytest
import torch

from trainables.config import TrialConfig
from trainables.data import DataOptions, load_dataset
from trainables.engine import build_training_state, fit

DEVICE = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    full = load_dataset("digits", DataOptions(split_seed=0))
    # A third of the images keeps each epoch well under a second.
    return dataclasses.replace(full, train_x=full.train_x[:450], train_y=full.train_y[:450])


def _cfg(**overrides) -> TrialConfig:
    base = dict(backbone="smallcnn", lr=0.01, momentum=0.9, batch_size=16, max_epochs=3)
    return TrialConfig(**{**base, **overrides})


def test_fit_learns_digits_and_reports_every_metric(digits):
    outcomes = list(fit(_cfg(), digits, DEVICE))
    assert [o.epoch for o in outcomes] == [1, 2, 3]
    last = outcomes[-1].metrics
    assert last["val_accuracy"] > 0.7  # chance is 0.1
    for split in ("train", "val"):
        for name in ("loss", "accuracy", "balanced_accuracy", "macro_f1"):
            assert np.isfinite(last[f"{split}_{name}"])
        assert {f"{split}_recall.{c}" for c in digits.classes} <= set(last)
    best = max(outcomes, key=lambda o: o.metrics["val_macro_f1"])
    assert last["best_epoch"] == best.epoch
    assert outcomes[0].improved and outcomes[0].confusions["val"].sum() == len(digits.val_y)


def test_resuming_from_a_checkpoint_gives_the_same_run(digits):
    cfg = _cfg(max_epochs=2)
    straight = [o.metrics for o in fit(cfg, digits, DEVICE)]
    state = build_training_state(cfg.replace(max_epochs=1), digits, DEVICE)
    list(fit(cfg.replace(max_epochs=1), digits, DEVICE, state))
    saved = state.state_dict()
    resumed_state = build_training_state(cfg, digits, DEVICE)
    resumed_state.load_state_dict(saved)
    resumed = [o.metrics for o in fit(cfg, digits, DEVICE, resumed_state)]
    assert len(resumed) == 1
    assert resumed[0]["val_loss"] == pytest.approx(straight[1]["val_loss"], rel=1e-5)


def test_the_seed_fixes_initial_weights_across_arms(digits):
    a = build_training_state(_cfg(loss="ce", seed=3), digits, DEVICE).model
    b = build_training_state(_cfg(loss="focal", gamma=2.0, seed=3), digits, DEVICE).model
    c = build_training_state(_cfg(loss="ce", seed=4), digits, DEVICE).model
    assert torch.equal(a.head.weight, b.head.weight)
    assert not torch.equal(a.head.weight, c.head.weight)


def test_svm_classifier_scores_from_the_embeddings(digits):
    outcome = list(fit(_cfg(classifier="svm", max_epochs=1), digits, DEVICE))[-1]
    assert outcome.val.y_prob.shape == (len(digits.val_y), 10)
    assert np.allclose(outcome.val.y_prob.sum(axis=1), 1)
    assert outcome.metrics["val_accuracy"] > 0.5


def test_config_rejects_unknown_keys_and_reads_ray_strings():
    cfg = TrialConfig.from_dict({"head_hidden": "512-256", "batch_size": 32.0, "loss": "focal"})
    assert cfg.head_hidden == (512, 256) and cfg.batch_size == 32
    with pytest.raises(ValueError, match="unknown trial config keys"):
        TrialConfig.from_dict({"learning_rate": 0.1})


def test_svm_scores_match_scikit_learns_linear_svc_on_the_same_embeddings(digits):
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    from trainables.engine import svm_predictions

    outcome = list(fit(_cfg(max_epochs=1), digits, DEVICE))[-1]
    train, val = outcome.train, outcome.val
    _, val_prob = svm_predictions(train, val, seed=0)
    scaler = StandardScaler().fit(train.embedding)
    reference = LinearSVC(random_state=0, max_iter=5000).fit(
        scaler.transform(train.embedding), train.y_true
    )
    np.testing.assert_array_equal(
        val_prob.argmax(axis=1), reference.predict(scaler.transform(val.embedding))
    )


def test_an_absurd_learning_rate_ends_training_as_diverged_with_its_epoch(digits):
    from trainables.engine import TrainingDiverged

    outcomes = []
    with pytest.raises(TrainingDiverged) as caught:
        for outcome in fit(_cfg(lr=1e12), digits, DEVICE):
            outcomes.append(outcome)
    assert caught.value.epoch == len(outcomes) + 1
    assert caught.value.reason.startswith("training loss is ")


def test_the_svm_refuses_embeddings_that_are_not_finite(digits):
    from trainables.engine import SplitEval, TrainingDiverged, svm_predictions

    good = SplitEval(0.0, np.array([0, 1]), np.zeros((2, 2)), np.ones((2, 3)))
    bad = SplitEval(0.0, np.array([0, 1]), np.zeros((2, 2)), np.full((2, 3), np.nan))
    with pytest.raises(TrainingDiverged, match="val embeddings are not finite"):
        svm_predictions(good, bad, seed=0)


def test_a_checkpoint_leaves_out_the_frozen_backbone_and_still_resumes(digits):
    frozen = _cfg(freeze="backbone", max_epochs=1)
    state = build_training_state(frozen, digits, DEVICE)
    list(fit(frozen, digits, DEVICE, state))
    saved = state.state_dict()["model"]
    everything = state.model.state_dict()
    assert set(saved) == {k for k in everything if not k.startswith("backbone.")}
    assert set(saved) < set(everything)
    resumed = build_training_state(frozen, digits, DEVICE)
    resumed.load_state_dict(state.state_dict())
    for key, value in state.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


@pytest.fixture(scope="module")
def digits_lt():
    return load_dataset("digits-lt", DataOptions(split_seed=0))


@pytest.mark.parametrize(
    ("batch_size", "freeze", "reason"),
    [
        # Every batch loss finite, BatchNorm's running variance infinite: eval mode is broken.
        (32, "none", "running_var holds a NaN or an infinity"),
        # The eval-mode loss is NaN while every training batch's was finite.
        (32, "partial:1", "is nan at the end of the epoch"),
    ],
)
def test_a_finite_batch_loss_over_a_broken_state_is_diverged(digits_lt, batch_size, freeze, reason):
    """The focal space's SGD at lr 5000, momentum 0.99: before, these trials 'completed' with
    NaN or astronomically large losses and took part in choosing a winner."""
    from trainables.engine import TrainingDiverged

    cfg = TrialConfig(
        backbone="smallcnn", lr=5000, momentum=0.99, batch_size=batch_size, freeze=freeze
    )
    with pytest.raises(TrainingDiverged, match=reason) as caught:
        next(fit(cfg.replace(max_epochs=1), digits_lt, DEVICE))
    assert caught.value.epoch == 1


def test_a_nan_buffer_or_loss_parameter_is_named(digits):
    from trainables.engine import TrainingDiverged, check_finite_epoch, nonfinite_tensor
    from trainables.losses import CenterLoss

    model = build_training_state(_cfg(), digits, DEVICE).model
    criterion = CenterLoss(num_classes=10, embedding_dim=4, weight=0.1)
    assert nonfinite_tensor(model, criterion) is None
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean[0] = float("nan")
    assert nonfinite_tensor(model, criterion).endswith(".running_mean")
    bn.running_mean[0] = 0.0
    criterion.centers.data[1, 2] = float("inf")
    assert nonfinite_tensor(model, criterion) == "criterion.centers"
    with pytest.raises(TrainingDiverged, match="criterion.centers holds"):
        check_finite_epoch({"val_loss": 1.0}, model, criterion)
    criterion.centers.data[1, 2] = 0.0
    with pytest.raises(TrainingDiverged, match="val_loss is inf"):
        check_finite_epoch({"val_loss": float("inf")}, model, criterion)
