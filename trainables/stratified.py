"""The rows scikit-learn's ``train_test_split`` draws (its ``ShuffleSplit`` and
``StratifiedShuffleSplit``), drawn here with numpy alone: importing scikit-learn took 0.9 s,
paid by a sweep's driver before anything else could start and by every trial that splits its
data again. For the same seed the rows are scikit-learn's own, so splits made before stay
the same; a test compares the two over many sizes, strata and seeds."""

from __future__ import annotations

import numpy as np


def train_test_rows(
    n: int, test_size: int, seed: int, stratify: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (train, test) of ``n`` rows, ``test_size`` of them in test: as
    ``train_test_split(range(n), test_size=test_size, stratify=stratify, random_state=seed)``.
    The caller has checked the sizes (every stratum 2+ rows, both sides hold every one)."""
    rng = np.random.RandomState(int(seed))
    if stratify is None:
        permutation = rng.permutation(n)
        return permutation[test_size:], permutation[:test_size]
    strata = np.asarray(stratify)
    if strata.shape != (n,):  # scikit-learn reads 2-D strata otherwise: not reproduced here
        raise ValueError(f"stratify needs one value per row ({n}), got shape {strata.shape}")
    return _stratified_rows(strata, n - test_size, test_size, rng)


def _stratified_rows(
    strata: np.ndarray, n_train: int, n_test: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    _, inverse, counts = np.unique(strata, return_inverse=True, return_counts=True)
    rows_of = np.split(np.argsort(inverse.ravel(), kind="stable"), np.cumsum(counts)[:-1])
    train_counts = _approximate_mode(counts, n_train, rng)
    test_counts = _approximate_mode(counts - train_counts, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for rows, count, n_in_train, n_in_test in zip(
        rows_of, counts, train_counts, test_counts, strict=True
    ):
        shuffled = rows.take(rng.permutation(count), mode="clip")
        train.extend(shuffled[:n_in_train])
        test.extend(shuffled[n_in_train : n_in_train + n_in_test])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Rows per stratum for ``n_draws`` draws: the proportional share rounded down, the rest
    given to the largest remainders, ties broken at random (scikit-learn's rule)."""
    continuous = counts / counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
