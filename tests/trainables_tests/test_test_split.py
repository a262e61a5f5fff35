"""The test split: scored once, with the best epoch's weights, after training, and never read
by anything that chooses a config or an epoch (``fit``, the feature cache during training)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from trainables.config import TrialConfig
from trainables.data import DataOptions, ImageData, load_dataset
from trainables.engine import (
    build_training_state,
    evaluate,
    evaluate_test,
    fit,
)
from trainables.feature_cache import FeatureCache

CPU = torch.device("cpu")


class Recorded(torch.Tensor):
    """A tensor that notes every torch operation on it (indexing, ``len``, ``.shape``, a
    conversion to numpy): a test split no code may touch."""

    log: list[str] = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.log.append(getattr(func, "__name__", str(func)))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def digits() -> ImageData:
    full = load_dataset("digits", DataOptions(split_seed=0))
    return dataclasses.replace(full, train_x=full.train_x[:300], train_y=full.train_y[:300])


@pytest.fixture
def watched(digits) -> ImageData:
    Recorded.log = []
    return dataclasses.replace(
        digits,
        test_x=digits.test_x.as_subclass(Recorded),
        test_y=digits.test_y.as_subclass(Recorded),
    )


def _cfg(**changes) -> TrialConfig:
    return TrialConfig(**{"batch_size": 32, "max_epochs": 3, "lr": 0.05, **changes})


def _best_weights(cfg: TrialConfig, data: ImageData, cache=None):
    """Train as a trial does, keeping a copy of the best epoch's weights; the state after."""
    state = build_training_state(cfg, data, CPU)
    best, epochs = None, []
    for outcome in fit(cfg, data, CPU, state, cache=cache):
        epochs.append(outcome)
        if outcome.improved:
            best = {k: v.clone() for k, v in state.model.trained_state_dict().items()}
    return state, best, epochs


@pytest.mark.parametrize("role", ["search", "confirmation"])
def test_training_never_touches_the_test_split(watched, role, tmp_path):
    cfg = _cfg(role=role, freeze="backbone")  # the feature cache's path too
    cache = FeatureCache(tmp_path, budget_bytes=2**30)
    _best_weights(cfg, watched, cache)
    assert Recorded.log == []
    assert not list(tmp_path.glob("*-test-*.npy"))  # no frozen output of test images either


def test_the_recorder_sees_the_test_evaluation(watched, tmp_path):
    """The recorder would have seen an access: evaluating the test split is one."""
    cfg = _cfg(role="confirmation", max_epochs=1)
    state, best, _ = _best_weights(cfg, watched)
    assert Recorded.log == []
    evaluate_test(cfg, watched, CPU, state, best, cache=FeatureCache(tmp_path, 2**30))
    assert "__getitem__" in Recorded.log


def test_test_images_change_nothing_in_training(digits):
    """Other test images (noise, with other labels): the same epochs, values and best epoch."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, digits.test_x.shape, dtype=torch.uint8, generator=g)
    other = dataclasses.replace(digits, test_x=noise, test_y=(digits.test_y + 1) % 10)
    _, best_a, a = _best_weights(_cfg(), digits)
    _, best_b, b = _best_weights(_cfg(), other)
    assert [o.metrics for o in a] == [o.metrics for o in b]
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)


def test_the_test_split_is_scored_with_the_weights_it_is_given(digits):
    """The trial passes the best epoch's weights; here the first epoch's, then two more."""
    cfg = _cfg(max_epochs=3)
    state = build_training_state(cfg, digits, CPU)
    epochs = fit(cfg, digits, CPU, state)
    first = next(epochs)
    chosen = {k: v.clone() for k, v in state.model.trained_state_dict().items()}
    list(epochs)
    last = {k: v.clone() for k, v in state.model.trained_state_dict().items()}
    outcome = evaluate_test(cfg, digits, CPU, state, chosen)
    # Reference: a model built anew with those weights, and scikit-learn's metrics.
    fresh = build_training_state(cfg, digits, CPU)
    fresh.model.load_trained_state_dict(chosen)
    expected = evaluate(fresh.model, fresh.criterion, digits.test_x, digits.test_y, CPU)
    np.testing.assert_allclose(outcome.test.y_prob, expected.y_prob, rtol=1e-5, atol=1e-6)
    y_true, y_pred = digits.test_y.numpy(), expected.y_prob.argmax(axis=1)
    assert outcome.metrics["test_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert outcome.metrics["test_macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, average="macro")
    )
    assert outcome.metrics["test_loss"] == pytest.approx(expected.loss, rel=1e-5)
    assert np.array_equal(outcome.confusion, confusion_matrix(y_true, y_pred, labels=range(10)))
    val_names = {k.removeprefix("val_") for k in first.metrics if k.startswith("val_")}
    assert {k.removeprefix("test_") for k in outcome.metrics} == val_names
    fresh.model.load_trained_state_dict(last)  # the last epoch's weights score otherwise
    at_last = evaluate(fresh.model, fresh.criterion, digits.test_x, digits.test_y, CPU)
    assert not np.allclose(at_last.y_prob, outcome.test.y_prob)


def test_the_svm_classifier_is_refitted_on_the_best_epochs_train_embeddings(digits):
    cfg = _cfg(classifier="svm", loss="triplet", margin=0.2, mining="batch_hard", max_epochs=2)
    state, best, _ = _best_weights(cfg, digits)
    outcome = evaluate_test(cfg, digits, CPU, state, best)
    fresh = build_training_state(cfg, digits, CPU)
    fresh.model.load_trained_state_dict(best)
    train = evaluate(fresh.model, fresh.criterion, digits.train_x, digits.train_y, CPU)
    test = evaluate(fresh.model, fresh.criterion, digits.test_x, digits.test_y, CPU)
    scaler = StandardScaler().fit(train.embedding)
    svm = LinearSVC(C=1.0, random_state=cfg.seed, max_iter=5000)
    svm.fit(scaler.transform(train.embedding), train.y_true)
    y_pred = svm.predict(scaler.transform(test.embedding))
    assert np.array_equal(outcome.test.y_pred, y_pred)
    assert outcome.metrics["test_macro_f1"] == pytest.approx(
        f1_score(digits.test_y.numpy(), y_pred, average="macro")
    )


def test_the_feature_cache_scores_test_as_the_uncached_model_does(digits, tmp_path):
    cache = FeatureCache(tmp_path, budget_bytes=2**30)
    cached_cfg = _cfg(freeze="backbone", role="confirmation", max_epochs=2)
    state, best, _ = _best_weights(cached_cfg, digits, cache)
    assert cache.computed == 2  # train and val only
    cached = evaluate_test(cached_cfg, digits, CPU, state, best, cache=cache)
    assert cache.computed == 3 and len(list(tmp_path.glob("*-test-*.npy"))) == 1
    plain_cfg = dataclasses.replace(cached_cfg, feature_cache=False)
    state, best, _ = _best_weights(plain_cfg, digits)
    plain = evaluate_test(plain_cfg, digits, CPU, state, best)
    np.testing.assert_allclose(cached.test.y_prob, plain.test.y_prob, rtol=1e-4, atol=1e-5)
    assert cached.metrics["test_macro_f1"] == pytest.approx(plain.metrics["test_macro_f1"])


def test_multilabel_test_metrics_are_named_as_val_ones():
    full = load_dataset("digits-multilabel")
    data = dataclasses.replace(full, train_x=full.train_x[:200], train_y=full.train_y[:200])
    cfg = _cfg(loss="bce", metric="val_map", max_epochs=1)
    state, best, epochs = _best_weights(cfg, data)
    outcome = evaluate_test(cfg, data, CPU, state, best)
    assert outcome.confusion is None
    val_names = {k.removeprefix("val_") for k in epochs[0].metrics if k.startswith("val_")}
    assert {k.removeprefix("test_") for k in outcome.metrics} == val_names
    assert "test_map" in outcome.metrics and outcome.test.y_prob.shape == (300, 10)


# --- the trial: Ray's side replaced by a recorder, MLflow a local SQLite store ---------------


@pytest.fixture
def fake_ray(monkeypatch):
    """``train_trial`` without Ray: each report notes the test-split accesses so far."""
    from types import SimpleNamespace

    import ray

    from trainables.edge import trial

    reports: list[tuple[dict, list[str]]] = []
    fake = SimpleNamespace(
        get_checkpoint=lambda: None,
        get_context=lambda: SimpleNamespace(get_trial_id=lambda: None),
        report=lambda metrics, checkpoint=None: reports.append((metrics, list(Recorded.log))),
        Checkpoint=SimpleNamespace(from_directory=lambda folder: None),
    )
    monkeypatch.setattr(trial, "tune", fake)
    node = SimpleNamespace(get_node_id=lambda: "node")
    monkeypatch.setattr(ray, "get_runtime_context", lambda: node)
    return reports


def _run_trial(cfg: TrialConfig, data: ImageData, store):
    from trainables.edge import tracking
    from trainables.edge.trial import train_trial

    train_trial(cfg.to_dict(), data=data, tracking=store)
    (run,) = tracking.child_runs(store.uri, store.experiment_id, store.parent_run_id)
    return tracking.client(store.uri), run


def _npz(client, run_id: str, path: str) -> dict[str, np.ndarray]:
    local = client.download_artifacts(run_id, path)
    with np.load(local) as arrays:
        return dict(arrays)


def test_a_search_trial_never_touches_the_test_split(watched, fake_ray, store):
    client, run = _run_trial(_cfg(max_epochs=2), watched, store)
    assert Recorded.log == [] and len(fake_ray) == 2
    assert not [m for m in run.data.metrics if m.startswith("test_")]
    files = [f.path for f in client.list_artifacts(run.info.run_id, "predictions")]
    assert "predictions/test_predictions.npz" not in files


def test_a_confirmation_trial_scores_test_once_its_epoch_is_chosen(watched, fake_ray, store):
    cfg = _cfg(role="confirmation", max_epochs=3, split_seed=5)
    client, run = _run_trial(cfg, watched, store)
    run_id = run.info.run_id
    # No test image before the last epoch ended; Ray never hears a test metric.
    assert [accesses for _, accesses in fake_ray[:-1]] == [[], []]
    assert Recorded.log and not any(k.startswith("test_") for m, _ in fake_ray for k in m)
    best_epoch = int(run.data.metrics["best_epoch"])
    history = client.get_metric_history(run_id, "test_macro_f1")
    assert [(m.step, m.value) for m in history] == [(best_epoch, run.data.metrics["test_macro_f1"])]
    val_names = {k.removeprefix("val_") for k in run.data.metrics if k.startswith("val_")}
    test_names = {k.removeprefix("test_") for k in run.data.metrics if k.startswith("test_")}
    assert test_names == val_names
    test = _npz(client, run_id, "predictions/test_predictions.npz")
    val = _npz(client, run_id, "predictions/val_predictions.npz")
    assert set(test) == set(val) and np.array_equal(test["y_true"], watched.test_y.numpy())
    assert run.data.metrics["test_macro_f1"] == pytest.approx(
        f1_score(test["y_true"], test["y_pred"], average="macro")
    )
    confusion = client.download_artifacts(run_id, "confusion/test_confusion.csv")
    counts = np.loadtxt(confusion, delimiter=",", skiprows=1, usecols=range(1, 11))
    assert np.array_equal(counts, confusion_matrix(test["y_true"], test["y_pred"]))
    pictures = [f.path for f in client.list_artifacts(run_id, "confusion")]
    assert "confusion/test_confusion.png" in pictures
    # The run trained and chose on the train/val split of its split seed.
    from trainables.data import resplit

    assert run.data.tags["split_seed"] == "5" and run.data.params["split_seed"] == "5"
    assert np.array_equal(val["y_true"], resplit(watched, 5).val_y.numpy())
