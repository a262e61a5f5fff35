"""Verdicts and the comparison table: per metric, the paired differences' intervals, the
paired t-test (Holm-adjusted across secondary rows) and who is better, if either
(docs/statistics.md, "Multiplicity")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.stats._inference import (
    ALPHA,
    DEFAULT_RESAMPLES,
    bootstrap_ci,
    holm_adjust,
    paired_t_pvalue,
    t_interval,
)
from analysis.stats._pairing import Pairing
from analysis.tables import TEST
from trainables import contract

NO_CLEAR_DIFFERENCE = "no clear difference (CI includes 0)"
NOT_CLEAR_AFTER_HOLM = "no clear difference after Holm (p_holm >= 0.05)"
PRIMARY, SECONDARY = "primary", "secondary"


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
