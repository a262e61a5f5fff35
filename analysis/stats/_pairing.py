"""Which runs pair up for a comparison of a factor's two levels (docs/statistics.md,
"Pairing rule")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from analysis.errors import AnalysisError
from analysis.tables import finished, param_names, param_values, role

PAIRING_IGNORED_PARAMS = ("role", "arm")
CONFIRMATION_KEYS = ("seed", "split_seed", "dataset")


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
