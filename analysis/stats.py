"""Paired comparisons of a factor's two levels, with bootstrap confidence intervals.

Pairing rule (the only honest basis for "does focal loss help"):

1. Candidates are the FINISHED child runs whose value of the factor's param is one of the two
   levels compared. The first level is the baseline; differences are second minus first.
2. If the factor is the sweep's own factor (parent tag ``factor``) and both levels have
   confirmation runs (``role=confirmation``), confirmation runs are paired by ``seed`` (and
   ``split_seed``, ``dataset``; and ``backbone`` when several backbones were confirmed). The
   sweep re-runs each arm's tuned best config per seed with the same split and initial
   weights, so a pair differs in the arm and nothing the seed controls.
3. Otherwise runs are paired when their params are equal on every param except the factor,
   the bookkeeping params ``role`` and ``arm``, and params absent or ``None`` in every run of
   one level (conditional params such as ``gamma``, which only focal loss has).
4. Several runs with the same pairing key are matched in start order. No pairs is an error:
   comparing the best run of each arm instead would mix the factor with everything else.

Each metric's paired differences d_i are summarised by their mean, a percentile bootstrap
interval (pairs resampled with replacement, fixed seed), a Student-t interval and the paired
t-test's p-value. Losses are "lower is better", every other metric "higher is better".

Multiplicity: the sweep's own metric is the primary comparison, and a level is called better
on it only when both intervals exclude zero (with few pairs the bootstrap interval is too
narrow: it cannot reach past the observed differences; the t interval is not). Every other row
of one comparison (other headline metrics, each class's recall and F1) is secondary: its
verdict comes from the Holm-adjusted p-values of the paired t-tests across those rows, so the
chance of any false "better" among them stays at 5%.

Power: from the observed SD of the primary metric's differences, the smallest difference the
n pairs would detect 80% of the time (two-sided 5% t-test, noncentral t), and the number of
pairs that would detect one point.

The sweep's own factor is read from the ``arm`` param, since one arm may set several params.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.tables import TEST, finished, param_names, param_values, role
from trainables import contract

PAIRING_IGNORED_PARAMS = ("role", "arm")
CONFIRMATION_KEYS = ("seed", "split_seed", "dataset")
DEFAULT_RESAMPLES = 10_000
FEW_PAIRS = 10
ALPHA = 0.05  # two-sided level of every interval, test and power statement
POWER = 0.8
ONE_POINT = 0.01  # one percentage point of a metric in [0, 1]; 0.01 in a loss's own units
MOST_PAIRS = 10_000  # beyond this many pairs a difference counts as out of reach
TIE = 1e-12  # differences closer than this to one another count as identical
NO_CLEAR_DIFFERENCE = "no clear difference (CI includes 0)"
NOT_CLEAR_AFTER_HOLM = "no clear difference after Holm (p_holm >= 0.05)"
PRIMARY, SECONDARY = "primary", "secondary"


@dataclass(frozen=True)
class Pairing:
    factor: str
    baseline: str
    other: str
    rule: str
    keys: tuple[str, ...]  # the params a pair agrees on
    # key, baseline_run, other_run, baseline_run_id, other_run_id, split_seed, seed
    pairs: pd.DataFrame

    @property
    def n(self) -> int:
        return len(self.pairs)

    def label(self, level: str) -> str:
        """A level as the user reads it in a verdict: ``freeze=none``, not a bare ``none``."""
        return f"{self.factor}={level}"

    @property
    def splits(self) -> int:
        """How many train/val splits the pairs span (``--confirm-splits``); 1 without it."""
        return max(self.pairs["split_seed"].nunique(), 1)

    @property
    def seeds(self) -> int:
        return max(self.pairs["seed"].nunique(), 1)


def factor_levels(runs: pd.DataFrame, factor: str) -> list[str]:
    """The levels of a factor among the finished runs, sorted; an unknown factor is an error."""
    if f"params.{factor}" not in runs.columns:
        done = finished(runs)
        varied = [p for p in param_names(runs) if param_values(done, p).nunique() > 1]
        known = ", ".join(sorted(varied)) or "none"
        raise AnalysisError(
            f"unknown factor '{factor}': no run has that param (params with several values: "
            f"{known})"
        )
    values = param_values(finished(runs), factor)
    return sorted(v for v in values.unique() if v)


def resolve_levels(runs: pd.DataFrame, factor: str, levels: Sequence[str] | None) -> list[str]:
    """The two levels to compare: the given ones, checked, or the only two present."""
    present = factor_levels(runs, factor)
    if levels:
        levels = list(dict.fromkeys(levels))
        if len(levels) != 2:
            raise AnalysisError(f"give exactly two levels to compare, got {','.join(levels)}")
        missing = [level for level in levels if level not in present]
        if missing:
            raise AnalysisError(
                f"no finished run has {factor}={missing[0]} (levels present: "
                f"{', '.join(present) or 'none'})"
            )
        return levels
    if len(present) < 2:
        raise AnalysisError(
            f"factor '{factor}' has a single level among finished runs "
            f"({', '.join(present) or 'none'}): nothing to compare"
        )
    if len(present) > 2:
        raise AnalysisError(
            f"factor '{factor}' has {len(present)} levels among finished runs "
            f"({', '.join(present) or 'none'}); choose two with --levels"
        )
    return present


def level_param(factor: str, sweep_factor: str | None) -> str:
    """The param holding a run's level. The sweep's own factor is read from ``arm``: an arm
    can set several params at once (``sgd-b1`` is SGD, no momentum, batch size 1)."""
    return "arm" if factor == sweep_factor else factor


def pair_runs(
    runs: pd.DataFrame,
    *,
    factor: str,
    levels: Sequence[str] | None = None,
    sweep_factor: str | None = None,
) -> Pairing:
    """Pair runs that differ only in ``factor`` (module docstring); raises when none do."""
    if factor == sweep_factor and "params.arm" in runs.columns:
        # Params the arms set (the factor's own param among them) differ by design.
        runs = runs.drop(columns=[f"params.{factor}"], errors="ignore")
        runs = runs.rename(columns={"params.arm": f"params.{factor}"})
    runs = _split_seed_from_tags(runs)
    baseline, other = resolve_levels(runs, factor, levels)
    candidates = finished(runs)
    candidates = candidates[param_values(candidates, factor).isin([baseline, other])]
    level = param_values(candidates, factor)
    confirm = candidates[role(candidates) == "confirmation"]
    confirm_levels = set(param_values(confirm, factor))
    if factor == sweep_factor and {baseline, other} <= confirm_levels:
        keys = _confirmation_keys(confirm, factor)
        rule = "confirmation runs paired by " + ", ".join(keys)
        pairs = _match(confirm, param_values(confirm, factor), keys, baseline, other)
        shared = "/".join(keys) or "key"
        hint = f"confirmation runs of {baseline} and {other} share no {shared}"
    else:
        keys = _shared_params(candidates, level, factor, baseline, other)
        rule = "runs equal in every param except the factor and role/arm/conditional params"
        pairs = _match(candidates, level, keys, baseline, other)
        differing = [k for k in keys if param_values(candidates, k).nunique() > 1][:5]
        hint = "runs differ in more than the factor" + (
            f" (also in {', '.join(differing)})" if differing else ""
        )
    if pairs.empty:
        raise AnalysisError(
            f"no paired runs for factor '{factor}' (levels {baseline}, {other}): {hint}; run the "
            f"space's confirmation phase or a sweep that varies only '{factor}'"
        )
    for name in ("split_seed", "seed"):
        pairs[name] = pairs["baseline_run_id"].map(
            pd.Series(param_values(candidates, name).to_numpy(), index=candidates["run_id"])
        )
    return Pairing(factor, baseline, other, rule, tuple(keys), pairs)


def _split_seed_from_tags(runs: pd.DataFrame) -> pd.DataFrame:
    """A run that names its train/val resplit only in the ``split_seed`` tag pairs by it too."""
    if "tags.split_seed" not in runs.columns:
        return runs
    params = param_values(runs, "split_seed")
    return runs.assign(**{"params.split_seed": params.where(params != "", runs["tags.split_seed"])})


def _confirmation_keys(confirm: pd.DataFrame, factor: str) -> list[str]:
    keys = [k for k in CONFIRMATION_KEYS if f"params.{k}" in confirm.columns and k != factor]
    if factor != "backbone" and param_values(confirm, "backbone").nunique() > 1:
        keys.append("backbone")  # each backbone's arms were confirmed on their own
    return keys


def _shared_params(
    runs: pd.DataFrame, level: pd.Series, factor: str, baseline: str, other: str
) -> list[str]:
    keys = []
    for name in param_names(runs):
        if name == factor or name in PAIRING_IGNORED_PARAMS:
            continue
        values = param_values(runs, name)
        # A conditional param (gamma for focal) is absent from every run of the other level.
        if any((values[level == lv] == "").all() for lv in (baseline, other)):
            continue
        keys.append(name)
    return keys


def _match(
    runs: pd.DataFrame, level: pd.Series, keys: Sequence[str], baseline: str, other: str
) -> pd.DataFrame:
    key = _key_strings(runs, keys)
    rows = []
    for value in sorted(key.unique()):
        same = key == value
        # Runs are in start order, so repeated runs of one key pair up first with first.
        base = runs[same & (level == baseline)]
        oth = runs[same & (level == other)]
        for b, o in zip(base.itertuples(), oth.itertuples(), strict=False):
            rows.append(
                {
                    "key": value,
                    "baseline_run": b.run_name,
                    "other_run": o.run_name,
                    "baseline_run_id": b.run_id,
                    "other_run_id": o.run_id,
                }
            )
    columns = ["key", "baseline_run", "other_run", "baseline_run_id", "other_run_id"]
    return pd.DataFrame(rows, columns=columns)


def _key_strings(runs: pd.DataFrame, keys: Sequence[str]) -> pd.Series:
    if not keys:
        return pd.Series("", index=runs.index)
    parts = [k + "=" + param_values(runs, k) for k in keys]
    key = parts[0]
    for part in parts[1:]:
        key = key + " " + part
    return key


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
    # scipy.stats.t.ppf is this function; importing scipy.stats cost the sweep 0.64 s at its
    # end (measured), scipy.special (where it lives) 0.15 s.
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


# Verdicts.
def lower_is_better(metric: str) -> bool:
    return metric.split(".", 1)[0].endswith("_loss")


def verdict(
    low: float,
    high: float,
    baseline: str,
    other: str,
    n: int,
    t_low: float | None = None,
    t_high: float | None = None,
    *,
    lower_better: bool = False,
) -> str:
    """The primary metric's verdict: a side wins only when every interval given excludes
    zero on that side (for a loss, the side with the lower value)."""
    if n < 2 or np.isnan(low):
        return f"too few pairs (n={n})"
    lows = [low] if t_low is None or np.isnan(t_low) else [low, t_low]
    highs = [high] if t_high is None or np.isnan(t_high) else [high, t_high]
    if min(lows) > 0:
        return f"{baseline if lower_better else other} better"
    if max(highs) < 0:
        return f"{other if lower_better else baseline} better"
    return NO_CLEAR_DIFFERENCE


def holm_verdict(
    row: Mapping[str, Any],
    baseline: str,
    other: str,
    *,
    alpha: float = ALPHA,
    lower_better: bool = False,
) -> str:
    """A secondary row's verdict: a side wins only when its Holm-adjusted p is below alpha."""
    if row["n"] < 2 or np.isnan(row["p_holm"]):
        return f"too few pairs (n={row['n']})"
    if row["p_holm"] < alpha:
        higher = other if row["difference"] > 0 else baseline
        lower = baseline if row["difference"] > 0 else other
        return f"{lower if lower_better else higher} better"
    intervals = [row[k] for k in ("ci_low", "ci_high")]
    unadjusted = verdict(*intervals, baseline, other, row["n"], row["t_low"], row["t_high"])
    return NO_CLEAR_DIFFERENCE if unadjusted == NO_CLEAR_DIFFERENCE else NOT_CLEAR_AFTER_HOLM


def is_clear(verdicts: pd.Series) -> pd.Series:
    return verdicts.str.endswith(" better")


# The comparison table.
def paired_values(
    values: pd.DataFrame, pairing: Pairing, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One metric's baseline and other values per pair, and which pairs have both."""
    base, oth = _paired_frames(values, pairing, [name])
    base, oth = base[:, 0], oth[:, 0]
    return base, oth, ~(np.isnan(base) | np.isnan(oth))


def _paired_frames(
    values: pd.DataFrame, pairing: Pairing, metrics: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs x metrics arrays of both levels' values (NaN where a run lacks a metric)."""
    numbers = values.reindex(columns=list(metrics))
    numbers = numbers[~numbers.index.duplicated()]
    text = numbers.select_dtypes(exclude="number").columns
    if len(text):  # values read as strings: numbers where they parse, else missing
        numbers[text] = numbers[text].apply(pd.to_numeric, errors="coerce")
    base = numbers.reindex(pairing.pairs["baseline_run_id"]).to_numpy(dtype=float)
    oth = numbers.reindex(pairing.pairs["other_run_id"]).to_numpy(dtype=float)
    return base, oth


def paired_comparison(
    values: pd.DataFrame,
    pairing: Pairing,
    metrics: Sequence[str],
    *,
    primary: str | None = None,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Per metric: n pairs, both levels' means, mean difference, its intervals, the paired
    t-test's p-value (Holm-adjusted across the secondary rows) and a verdict.

    ``values`` is indexed by run id with one column per metric (e.g. values at each run's
    best epoch). A pair missing a metric is left out of that metric only. ``primary``
    (default: the first metric) is judged on its own; every other row is secondary.
    """
    primary = primary or metrics[0]
    base_all, other_all = _paired_frames(values, pairing, metrics)
    rows = []
    for i, name in enumerate(metrics):
        base, oth = base_all[:, i], other_all[:, i]
        keep = ~(np.isnan(base) | np.isnan(oth))
        diffs = oth[keep] - base[keep]
        n = int(keep.sum())
        low, high = bootstrap_ci(diffs, resamples=resamples, seed=seed)
        t_low, t_high = t_interval(diffs)
        rows.append(
            {
                "metric": name,
                "role": PRIMARY if name == primary else SECONDARY,
                "n": n,
                "baseline_mean": base[keep].mean() if n else np.nan,
                "other_mean": oth[keep].mean() if n else np.nan,
                "difference": diffs.mean() if n else np.nan,
                "ci_low": low,
                "ci_high": high,
                "t_low": t_low,
                "t_high": t_high,
                "p_value": paired_t_pvalue(diffs),
            }
        )
    table = pd.DataFrame(rows)
    return _with_verdicts(table, pairing)


def _with_verdicts(table: pd.DataFrame, pairing: Pairing) -> pd.DataFrame:
    baseline, other = pairing.label(pairing.baseline), pairing.label(pairing.other)
    secondary = table["role"] == SECONDARY
    table["p_holm"] = np.nan
    table.loc[secondary, "p_holm"] = holm_adjust(table.loc[secondary, "p_value"])
    verdicts = []
    for row in table.to_dict("records"):
        lower = lower_is_better(row["metric"])
        if row["role"] == PRIMARY:
            intervals = (row["ci_low"], row["ci_high"])
            found = verdict(
                *intervals,
                baseline,
                other,
                row["n"],
                row["t_low"],
                row["t_high"],
                lower_better=lower,
            )
        else:
            found = holm_verdict(row, baseline, other, lower_better=lower)
        verdicts.append(found)
    table["verdict"] = verdicts
    return table


HEADLINE_KINDS = ("macro_f1", "balanced_accuracy", "accuracy")


def on_split(metric: str, split: str) -> str:
    """The same metric on another split: ``val_macro_f1`` -> ``test_macro_f1``."""
    prefix, _, rest = metric.partition("_")
    splits = (*contract.SPLITS, TEST)
    return contract.split_metric(split, rest) if prefix in splits else metric


def comparison_metrics(
    class_keys: Sequence[str], *, split: str = contract.VAL, primary: str | None = None
) -> list[str]:
    """The metrics a comparison reports: the primary one (the sweep's metric), the other
    headline ones, then recall and F1 per class in the order given (minority first)."""
    primary = on_split(primary or contract.DEFAULT_METRIC, split)
    headline = [contract.split_metric(split, kind) for kind in HEADLINE_KINDS]
    per_class = [
        contract.class_metric(split, kind, key) for key in class_keys for kind in ("recall", "f1")
    ]
    return list(dict.fromkeys([primary, *headline, *per_class]))
