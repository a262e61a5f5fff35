import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, classification_report, confusion_matrix

from trainables.metrics import classification_metrics, confusion, metric_safe, multilabel_metrics

CLASSES = ("normal", "pneumonia", "covid")


def test_hand_example():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    m = classification_metrics(y_true, y_pred, CLASSES, "val")
    assert m["val_accuracy"] == pytest.approx(4 / 6)
    assert m["val_recall.normal"] == pytest.approx(0.5)
    assert m["val_precision.pneumonia"] == pytest.approx(2 / 3)
    assert m["val_recall.covid"] == pytest.approx(0.5)
    assert m["val_balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_per_class_numbers_match_scikit_learn_report():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.integers(0, 3, 200))
    m = classification_metrics(y_true, y_pred, CLASSES, "train")
    report = classification_report(y_true, y_pred, output_dict=True, zero_division=0)
    for i, name in enumerate(CLASSES):
        assert m[f"train_precision.{name}"] == pytest.approx(report[str(i)]["precision"])
        assert m[f"train_recall.{name}"] == pytest.approx(report[str(i)]["recall"])
        assert m[f"train_f1.{name}"] == pytest.approx(report[str(i)]["f1-score"])
    assert m["train_macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])
    assert m["train_accuracy"] == pytest.approx(report["accuracy"])


def test_a_class_never_predicted_has_zero_precision_not_an_error():
    m = classification_metrics(np.array([0, 1, 2]), np.array([0, 0, 0]), CLASSES, "val")
    assert m["val_precision.covid"] == 0.0 and m["val_recall.covid"] == 0.0


def test_confusion_keeps_absent_classes():
    matrix = confusion(np.array([0, 0]), np.array([0, 1]), 3)
    assert matrix.shape == (3, 3)
    np.testing.assert_array_equal(matrix, confusion_matrix([0, 0], [0, 1], labels=[0, 1, 2]))


def test_multilabel_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    y_true = (rng.random((100, 3)) > 0.6).astype(int)
    y_score = np.clip(y_true * 0.6 + rng.random((100, 3)) * 0.5, 0, 1)
    m = multilabel_metrics(y_true, y_score, CLASSES, "val")
    assert m["val_map"] == pytest.approx(average_precision_score(y_true, y_score))
    pred = y_score >= 0.5
    inter = (pred & (y_true == 1)).sum(axis=0)
    union = (pred | (y_true == 1)).sum(axis=0)
    assert m["val_iou.covid"] == pytest.approx(inter[2] / union[2])
    assert m["val_label_accuracy.normal"] == pytest.approx((pred[:, 0] == y_true[:, 0]).mean())


def test_metric_safe_keeps_mlflow_legal_characters():
    assert metric_safe("COVID-19 (rare)") == "COVID-19 _rare_"
    assert metric_safe("a/b.c") == "a/b.c"


@pytest.mark.parametrize("seed", range(30))
def test_single_label_metrics_match_scikit_learn_on_random_labels(seed):
    """Skewed labels with classes missing from the truth or the predictions, as on a tiny
    val split of a long-tailed dataset."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        f1_score,
        precision_recall_fscore_support,
    )

    rng = np.random.default_rng(seed)
    classes = tuple(f"c{i}" for i in range(int(rng.integers(2, 7))))
    k, n = len(classes), int(rng.integers(1, 40))
    weights = rng.dirichlet(np.full(k, 0.3))
    y_true = rng.choice(k, n, p=weights)
    y_pred = np.where(rng.random(n) < 0.5, y_true, rng.choice(k, n, p=weights[::-1]))
    m = classification_metrics(y_true, y_pred, classes, "val")
    labels = np.arange(k)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    for i, name in enumerate(classes):
        assert m[f"val_precision.{name}"] == pytest.approx(precision[i])
        assert m[f"val_recall.{name}"] == pytest.approx(recall[i])
        assert m[f"val_f1.{name}"] == pytest.approx(f1[i])
    assert m["val_macro_f1"] == pytest.approx(
        f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    )
    assert m["val_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    with warnings.catch_warnings():  # a class absent from y_true: scikit-learn warns
        warnings.simplefilter("ignore")
        expected = balanced_accuracy_score(y_true, y_pred)
    assert m["val_balanced_accuracy"] == pytest.approx(expected)
    np.testing.assert_array_equal(
        confusion(y_true, y_pred, k), confusion_matrix(y_true, y_pred, labels=labels)
    )


def test_confusion_refuses_labels_outside_the_classes():
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion(np.array([0, 3]), np.array([0, 1]), 3)


def test_a_trial_worker_imports_no_scikit_learn():
    """Every worker process imports the trial module once; scikit-learn would add more than
    a second to each start (benchmarks/overhead.py)."""
    import subprocess
    import sys

    probe = (
        "import sys, trainables.edge.trial; print(sorted({'sklearn', 'scipy'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_chance_level_is_the_best_predictor_that_ignores_the_image():
    """Against scikit-learn's DummyClassifier: always the majority class, and the prior draw
    ('stratified') averaged over many draws."""
    from sklearn.dummy import DummyClassifier
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    from trainables.metrics import chance_level

    counts = np.array([400, 300, 150, 100, 50])
    y = np.repeat(np.arange(5), counts)
    x = np.zeros((len(y), 1))
    majority = DummyClassifier(strategy="most_frequent").fit(x, y).predict(x)
    draws = [
        DummyClassifier(strategy="stratified", random_state=s).fit(x, y).predict(x)
        for s in range(200)
    ]
    prior_f1 = np.mean([f1_score(y, d, average="macro") for d in draws])
    assert chance_level("val_macro_f1", counts) == pytest.approx(prior_f1, abs=0.005)
    assert chance_level("val_macro_f1", counts) == pytest.approx(0.2)
    assert chance_level("test_accuracy", counts) == accuracy_score(y, majority) == 0.4
    assert chance_level("val_balanced_accuracy", counts) == balanced_accuracy_score(y, majority)
    assert chance_level("val_loss", counts) is None


def test_multilabel_chance_level():
    from sklearn.metrics import average_precision_score, f1_score

    from trainables.metrics import chance_level

    rng = np.random.default_rng(0)
    y = (rng.random((400, 3)) < [0.5, 0.2, 0.1]).astype(int)
    counts = y.sum(axis=0)
    constant = np.full(y.shape, 0.5)
    expected_map = average_precision_score(y, constant, average="macro")
    got = chance_level("val_map", counts, samples=len(y), multilabel=True)
    assert got == pytest.approx(expected_map)
    all_on = f1_score(y, np.ones_like(y), average="macro")
    got = chance_level("val_macro_f1", counts, samples=len(y), multilabel=True)
    assert got == pytest.approx(all_on)
