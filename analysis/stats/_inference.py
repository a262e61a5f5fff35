"""Intervals, tests and power of paired differences: pure functions of arrays
(docs/statistics.md, "Intervals and tests", "Power")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

DEFAULT_RESAMPLES = 10_000
FEW_PAIRS = 10
ALPHA = 0.05  # two-sided level of every interval, test and power statement
POWER = 0.8
ONE_POINT = 0.01  # one percentage point of a metric in [0, 1]; 0.01 in a loss's own units
MOST_PAIRS = 10_000  # beyond this many pairs a difference counts as out of reach
TIE = 1e-12  # differences closer than this to one another count as identical


def bootstrap_ci(
    diffs: np.ndarray,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of paired differences (NaN when n < 2)."""
    diffs = np.asarray(diffs, dtype=float)
    if diffs.size < 2:
        return (np.nan, np.nan)
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(resamples, diffs.size))].mean(axis=1)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def t_interval(diffs: np.ndarray, *, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean difference. With few pairs it is the honest width that
    the percentile bootstrap cannot reach (NaN when n < 2)."""
    # scipy.stats.t.ppf is this function; scipy.special, where it lives, imports in a fraction
    # of scipy.stats's time.
    from scipy.special import stdtrit

    diffs = np.asarray(diffs, dtype=float)
    if diffs.size < 2:
        return (np.nan, np.nan)
    half = stdtrit(diffs.size - 1, (1 + confidence) / 2) * (diffs.std(ddof=1) / np.sqrt(diffs.size))
    return float(diffs.mean() - half), float(diffs.mean() + half)


def paired_t_pvalue(diffs: np.ndarray) -> float:
    """Two-sided p-value of the paired t-test (``scipy.stats.ttest_rel`` on the two columns).

    Where every pair differs by the same amount scipy returns NaN; the answer is plain then:
    no difference at all (p = 1) or the same difference every time (p = 0)."""
    from scipy.special import stdtr  # scipy.stats.t.sf(x, df) is stdtr(df, -x)

    diffs = np.asarray(diffs, dtype=float)
    if diffs.size < 2:
        return np.nan
    mean, sd = diffs.mean(), diffs.std(ddof=1)
    if sd <= TIE * max(1.0, abs(mean)):
        return 1.0 if abs(mean) <= TIE else 0.0
    t = mean / (sd / np.sqrt(diffs.size))
    return float(2 * stdtr(diffs.size - 1, -abs(t)))


def holm_adjust(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted among the tests).

    Sorted ascending, the k-th smallest of m p-values becomes max over j <= k of
    (m - j + 1) * p_(j), capped at 1; rejecting where it is below alpha keeps the
    family-wise error rate at alpha whatever the dependence between the tests."""
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, (tested.size - rank) * p[index])
        adjusted[index] = min(1.0, running)
    return adjusted


# Power.
def paired_t_power(difference: float, sd: float, n: int, *, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test: P(|T| > t_crit) with T noncentral t,
    df = n - 1, noncentrality |difference| / (sd / sqrt(n))."""
    from scipy import stats as scipy_stats

    df = n - 1
    critical = scipy_stats.t.ppf(1 - alpha / 2, df)
    shift = abs(difference) / sd * np.sqrt(n)
    right = scipy_stats.nct.sf(critical, df, shift)
    # The wrong-side tail is below alpha / 2 and far out; scipy returns NaN for it once the
    # shift is large (about 10), where it is smaller than 1e-15.
    wrong = scipy_stats.nct.cdf(-critical, df, shift)
    return float(right + (0.0 if np.isnan(wrong) else wrong))


def detectable_difference(
    sd: float, n: int, *, power: float = POWER, alpha: float = ALPHA
) -> float:
    """The smallest true mean difference that n pairs detect with the given power, for
    differences spread with this SD (NaN when n < 2 or the SD is 0 or unknown)."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0:
        return np.nan

    def shortfall(difference: float) -> float:
        return paired_t_power(difference, sd, n, alpha=alpha) - power

    upper = sd
    while shortfall(upper) < 0:  # power rises with the difference: bracket, then solve
        upper *= 2
    return float(brentq(shortfall, 0.0, upper, xtol=sd * 1e-9))


def pairs_needed(
    difference: float,
    sd: float,
    *,
    power: float = POWER,
    alpha: float = ALPHA,
    most: int = MOST_PAIRS,
) -> int | None:
    """The fewest pairs (at least 2) whose paired t-test detects ``difference`` with the
    given power; None beyond ``most`` pairs or without a positive SD.

    The normal approximation n = ((z_(1-alpha/2) + z_power) * sd / difference)^2 is a lower
    bound (t quantiles are wider than z ones); counting up from it takes a few steps."""
    from scipy import stats as scipy_stats

    if not sd > 0 or difference == 0:
        return None
    z = scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)
    n = max(2, int(np.floor((z * sd / abs(difference)) ** 2)))
    while n <= most:
        if paired_t_power(difference, sd, n, alpha=alpha) >= power:
            return n
        n += 1
    return None


@dataclass(frozen=True)
class PowerSummary:
    """What the pairs of one metric could see: the inputs and the two answers."""

    n: int
    sd: float  # observed SD of the paired differences
    detectable: float  # smallest difference detected with 80% power; NaN when unknown
    reference: float  # the difference asked about: one point (0.01)
    pairs_for_reference: int | None  # pairs that would detect it; None: beyond MOST_PAIRS


def power_summary(diffs: np.ndarray, *, reference: float = ONE_POINT) -> PowerSummary:
    diffs = np.asarray(diffs, dtype=float)
    sd = float(diffs.std(ddof=1)) if diffs.size >= 2 else np.nan
    return PowerSummary(
        n=int(diffs.size),
        sd=sd,
        detectable=detectable_difference(sd, diffs.size),
        reference=reference,
        pairs_for_reference=pairs_needed(reference, sd),
    )


# Two sources of variance: which split, which seed.
@dataclass(frozen=True)
class VarianceSources:
    splits: int
    seeds: int  # pairs per split, at most
    between_splits_sd: float  # SD of the true difference from one train/val split to another
    within_split_sd: float  # SD across seeds on one split


def variance_sources(diffs: np.ndarray, groups: Sequence[str]) -> VarianceSources:
    """One-way random-effects split of the differences' variance (method of moments, as in
    a textbook ANOVA): within = the pooled variance around each split's mean; between =
    (mean square between - mean square within) / n0, floored at 0. NaN without at least two
    splits and a split with two seeds."""
    frame = pd.DataFrame({"d": np.asarray(diffs, dtype=float), "g": list(groups)})
    sizes = frame.groupby("g")["d"].size()
    k, total = len(sizes), len(frame)
    seeds = int(sizes.max()) if k else 0
    if k < 2 or total - k < 1:
        return VarianceSources(k, seeds, np.nan, np.nan)
    means = frame.groupby("g")["d"].transform("mean")
    within = float(((frame["d"] - means) ** 2).sum() / (total - k))
    between_ms = float(((means - frame["d"].mean()) ** 2).sum() / (k - 1))
    n0 = (total - (sizes**2).sum() / total) / (k - 1)
    between = max(0.0, (between_ms - within) / n0)
    return VarianceSources(k, seeds, float(np.sqrt(between)), float(np.sqrt(within)))


def few_pairs_note(n: int) -> str:
    """A warning for small n: the percentile bootstrap never reaches beyond the observed
    differences, so with few pairs its interval is narrower than a 95% interval should be."""
    if n >= FEW_PAIRS:
        return ""
    return (
        f"Only {n} pairs: a bootstrap interval cannot extend beyond the observed differences, "
        "so with this few it is too narrow. The primary metric is called clear only when the "
        "Student-t interval excludes zero too; add seeds (--confirm-seeds) for a firmer answer."
    )
