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
