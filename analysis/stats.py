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
interval (pairs resampled with replacement, fixed seed) and a Student-t interval. A level is
called better only when both intervals exclude zero: with few pairs the bootstrap interval is
too narrow (it cannot reach past the observed differences), the t interval is not. All metrics
compared are "higher is better", so an interval above zero means the second level is better.

The sweep's own factor is read from the ``arm`` param, since one arm may set several params.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.tables import column, finished, param_names, param_values, role

PAIRING_IGNORED_PARAMS = ("role", "arm")
CONFIRMATION_KEYS = ("seed", "split_seed", "dataset")
DEFAULT_RESAMPLES = 10_000
FEW_PAIRS = 10
NO_CLEAR_DIFFERENCE = "no clear difference (CI includes 0)"


@dataclass(frozen=True)
class Pairing:
    factor: str
    baseline: str
    other: str
    rule: str
    keys: tuple[str, ...]  # the params a pair agrees on
    pairs: pd.DataFrame  # baseline_run_id, other_run_id, baseline_run, other_run, key

    @property
    def n(self) -> int:
        return len(self.pairs)


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
    return Pairing(factor, baseline, other, rule, tuple(keys), pairs)


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
    from scipy import stats as scipy_stats

    diffs = np.asarray(diffs, dtype=float)
    if diffs.size < 2:
        return (np.nan, np.nan)
    half = scipy_stats.t.ppf((1 + confidence) / 2, diffs.size - 1) * (
        diffs.std(ddof=1) / np.sqrt(diffs.size)
    )
    return float(diffs.mean() - half), float(diffs.mean() + half)


def few_pairs_note(n: int) -> str:
    """A warning for small n: the percentile bootstrap never reaches beyond the observed
    differences, so with few pairs its interval is narrower than a 95% interval should be."""
    if n >= FEW_PAIRS:
        return ""
    return (
        f"Only {n} pairs: a bootstrap interval cannot extend beyond the observed differences, "
        "so with this few it is too narrow. A difference is called clear only when the "
        "Student-t interval excludes zero too; add seeds (--confirm-seeds) for a firmer answer."
    )


def verdict(
    low: float,
    high: float,
    baseline: str,
    other: str,
    n: int,
    t_low: float | None = None,
    t_high: float | None = None,
) -> str:
    """A side wins only when every interval given excludes zero on that side."""
    if n < 2 or np.isnan(low):
        return f"too few pairs (n={n})"
    lows = [low] if t_low is None or np.isnan(t_low) else [low, t_low]
    highs = [high] if t_high is None or np.isnan(t_high) else [high, t_high]
    if min(lows) > 0:
        return f"{other} better"
    if max(highs) < 0:
        return f"{baseline} better"
    return NO_CLEAR_DIFFERENCE


def paired_comparison(
    values: pd.DataFrame,
    pairing: Pairing,
    metrics: Sequence[str],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """Per metric: n pairs, both levels' means, mean difference, its CI and a verdict.

    ``values`` is indexed by run id with one column per metric (e.g. values at each run's
    best epoch). A pair missing a metric is left out of that metric only.
    """
    base_ids = pairing.pairs["baseline_run_id"]
    other_ids = pairing.pairs["other_run_id"]
    rows = []
    for name in metrics:
        source = column(values, name)
        base = pd.to_numeric(base_ids.map(source), errors="coerce").to_numpy(dtype=float)
        oth = pd.to_numeric(other_ids.map(source), errors="coerce").to_numpy(dtype=float)
        keep = ~(np.isnan(base) | np.isnan(oth))
        diffs = oth[keep] - base[keep]
        low, high = bootstrap_ci(diffs, resamples=resamples, seed=seed)
        t_low, t_high = t_interval(diffs)
        n = int(keep.sum())
        rows.append(
            {
                "metric": name,
                "n": n,
                "baseline_mean": base[keep].mean() if n else np.nan,
                "other_mean": oth[keep].mean() if n else np.nan,
                "difference": diffs.mean() if n else np.nan,
                "ci_low": low,
                "ci_high": high,
                "t_low": t_low,
                "t_high": t_high,
                "verdict": verdict(low, high, pairing.baseline, pairing.other, n, t_low, t_high),
            }
        )
    return pd.DataFrame(rows)


def comparison_metrics(class_keys: Sequence[str]) -> list[str]:
    """The metrics a comparison reports: headline ones, then recall and F1 per class in the
    order given (minority first)."""
    per_class = [f"val_{kind}.{key}" for key in class_keys for kind in ("recall", "f1")]
    return ["val_macro_f1", "val_balanced_accuracy", "val_accuracy", *per_class]
