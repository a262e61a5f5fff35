"""The task object: what single- and multi-label data do differently, asked in one place."""

import numpy as np
import pytest
import torch

from trainables.task import MULTI_LABEL, SINGLE_LABEL, task_of


def test_single_label_takes_the_softmax_argmax_and_a_confusion_matrix():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, 0.0]])
    prob = SINGLE_LABEL.probabilities(logits).numpy()
    np.testing.assert_allclose(prob.sum(axis=1), 1.0, rtol=1e-6)
    y = np.array([0, 1, 1])
    assert SINGLE_LABEL.predictions(prob).tolist() == [0, 2, 1]
    assert SINGLE_LABEL.wrong(y, prob).tolist() == [1]
    assert SINGLE_LABEL.confusion(y, prob, 3).tolist() == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert SINGLE_LABEL.class_counts(y, 3).tolist() == [1, 2, 0]
    assert SINGLE_LABEL.stratify_by(y) is y
    assert SINGLE_LABEL.metrics(y, prob, ["a", "b", "c"], "val")["val_accuracy"] == 2 / 3


def test_multi_label_thresholds_each_sigmoid_and_has_no_confusion_matrix():
    logits = torch.tensor([[2.0, -2.0], [0.0, 0.1], [-1.0, -3.0]])
    prob = MULTI_LABEL.probabilities(logits).numpy()
    assert MULTI_LABEL.predictions(prob).tolist() == [[1, 0], [1, 1], [0, 0]]
    y = np.array([[1, 0], [0, 1], [0, 0]], dtype=np.float32)
    assert MULTI_LABEL.wrong(y, prob).tolist() == [1]
    assert MULTI_LABEL.confusion(y, prob, 2) is None
    assert MULTI_LABEL.class_counts(y, 2).tolist() == [1, 1]
    assert MULTI_LABEL.stratify_by(y) is None
    assert MULTI_LABEL.metrics(y, prob, ["a", "b"], "val")["val_label_accuracy.a"] == pytest.approx(
        2 / 3
    )


@pytest.mark.parametrize("multilabel", [False, True])
def test_the_data_carries_its_task(multilabel):
    from trainables.data import load_dataset

    data = load_dataset("digits-multilabel" if multilabel else "digits-lt")
    assert data.task is task_of(multilabel) and data.task.multilabel is multilabel
    assert data.class_counts("val").sum() >= len(data.val_y)
    chance = data.task.chance("val_macro_f1", data.val_y.numpy(), data.num_classes)
    assert 0 < chance < 1
