"""The project's train/test rows against scikit-learn's ``train_test_split`` itself."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from trainables.stratified import train_test_rows


def _cases(count: int):
    rng = np.random.default_rng(0)
    for case in range(count):
        k = int(rng.integers(2, 12))
        counts = rng.integers(2, 40, size=k)
        if case % 3 == 0:  # ties in the class sizes and in the remainders
            counts[:] = counts[0]
        labels = rng.permutation(np.repeat(np.arange(k), counts))
        if case % 4 == 1:  # strata that are not 0..k-1
            labels = labels * 7 + 3
        n = len(labels)
        size = int(rng.integers(k, n - k + 1))
        yield labels, size, int(rng.integers(0, 2**31 - 1))


@pytest.mark.parametrize("stratified", [True, False])
def test_the_rows_are_scikit_learns_for_the_same_seed(stratified):
    for labels, size, seed in _cases(300):
        n = len(labels)
        stratify = labels if stratified else None
        train, test = train_test_rows(n, size, seed, stratify)
        expected_train, expected_test = train_test_split(
            np.arange(n), test_size=size, stratify=stratify, random_state=seed
        )
        assert np.array_equal(train, expected_train), (n, size, seed)
        assert np.array_equal(test, expected_test), (n, size, seed)


def test_every_row_lands_on_exactly_one_side():
    labels = np.repeat(np.arange(3), [5, 9, 20])
    train, test = train_test_rows(len(labels), 10, 4, labels)
    assert len(test) == 10 and sorted(np.concatenate([train, test])) == list(range(34))
    assert set(labels[test]) == {0, 1, 2}


def test_strata_that_are_not_one_per_row_are_refused():
    with pytest.raises(ValueError, match=r"one value per row \(6\), got shape \(3, 2\)"):
        train_test_rows(6, 2, 0, np.zeros((3, 2)))
