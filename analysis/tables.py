"""Pure functions from a runs table to the tables a user reads: top-k configs, seed summaries.

A runs table has one row per child run and the columns ``run_id``, ``run_name``, ``status``,
``start_time``, ``params.*``, ``metrics.*`` and ``tags.*`` (see ``store.runs_table``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from trainables import contract
from trainables.contract import BOOKKEEPING_PARAMS, best_metric

HEADLINE_METRICS = ("val_macro_f1", "val_balanced_accuracy", "val_accuracy")
ARM_COLUMN = f"tags.{contract.ARM_TAG}"
BEST_EPOCH_COLUMN = f"metrics.{contract.BEST_EPOCH_METRIC}"
# The held-out split: confirmation runs log ``test_<name>`` once, at the best epoch chosen on val.
TEST = "test"
EMPTY_VALUES = frozenset({"", "None", "nan"})


def column(runs: pd.DataFrame, name: str) -> pd.Series:
    """A column, or an all-missing one when no run has it (a tag or param never logged)."""
    if name in runs.columns:
        return runs[name]
    return pd.Series(np.nan, index=runs.index, dtype=object)


def finished(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[column(runs, "status") == "FINISHED"]


def diverged_seeds(runs: pd.DataFrame) -> list[str]:
    """One sentence per arm whose confirmation seeds diverged ("k of n seeds diverged"): a
    finding about the arm's config, which the paired comparison, pairing finished runs,
    would otherwise leave out without a word."""
    confirm = runs[role(runs) == contract.CONFIRMATION_ROLE]
    outcome = column(confirm, f"tags.{contract.OUTCOME_TAG}")
    notes = []
    for level, group in confirm.groupby(column(confirm, ARM_COLUMN).fillna("?"), sort=True):
        k = int((outcome[group.index] == contract.DIVERGED).sum())
        if k:
            notes.append(
                f"{level}: {k} of {len(group)} confirmation seeds diverged "
                "(training loss not finite); they are not among the pairs"
            )
    return notes


def role(runs: pd.DataFrame) -> pd.Series:
    # A run without the tag was not made by the confirmation phase, so it counts as search.
    return column(runs, f"tags.{contract.ROLE_TAG}").fillna(contract.SEARCH_ROLE)


def arm(runs: pd.DataFrame, factor: str | None) -> pd.Series:
    """The arm of each run: its ``arm`` tag, else the value of the factor param."""
    values = column(runs, ARM_COLUMN)
    if factor:
        values = values.fillna(column(runs, f"params.{factor}"))
    return values.fillna("?")


def param_values(runs: pd.DataFrame, name: str) -> pd.Series:
    """A param as strings, with absent and ``None`` values as ``""`` so they compare equal."""
    values = column(runs, f"params.{name}").astype(object)
    values = values.where(values.notna(), "").astype(str)
    return values.where(~values.isin(EMPTY_VALUES), "")


def typed(values: pd.Series) -> pd.Series:
    """Param strings as numbers when every present value is one (so they print rounded)."""
    numbers = pd.to_numeric(values.replace("", np.nan), errors="coerce")
    return numbers if numbers.notna().sum() == (values != "").sum() else values


def param_names(runs: pd.DataFrame) -> list[str]:
    return [c.removeprefix("params.") for c in runs.columns if c.startswith("params.")]


def varying_params(runs: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """Params with more than one value among the runs: the hyperparameters that were searched."""
    skip = BOOKKEEPING_PARAMS | set(exclude)
    return [
        name
        for name in param_names(runs)
        if name not in skip and param_values(runs, name).nunique() > 1
    ]


def group_columns(runs: pd.DataFrame) -> list[str]:
    """Arm, plus backbone when several were searched (each deserves its own ranking)."""
    groups = ["arm"]
    if param_values(runs, "backbone").replace("", np.nan).nunique() > 1:
        groups.append("backbone")
    return groups


def best_metric_column(metric: str) -> str:
    return f"metrics.{best_metric(metric)}"


def require_finished(runs: pd.DataFrame, sweep_name: str) -> pd.DataFrame:
    done = finished(runs)
    if done.empty:
        counts = column(runs, "status").value_counts()
        states = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no child runs"
        raise AnalysisError(f"sweep '{sweep_name}' has no finished runs ({states})")
    return done


def pick_best_run(runs: pd.DataFrame, *, metric: str, mode: str) -> pd.Series:
    """The finished run with the best ``best_<metric>``; of tied runs, the earliest."""
    done = finished(runs)
    scores = pd.to_numeric(column(done, best_metric_column(metric)), errors="coerce").dropna()
    if scores.empty:
        raise AnalysisError(f"no finished run has the metric '{best_metric(metric)}'")
    best = scores.idxmax() if mode == "max" else scores.idxmin()
    return done.loc[best]


def find_run(runs: pd.DataFrame, wanted: str, *, metric: str, mode: str) -> pd.Series:
    """``best``, a run id or a run name, among the sweep's child runs."""
    if wanted == "best":
        return pick_best_run(runs, metric=metric, mode=mode)
    matches = runs[(runs["run_id"] == wanted) | (runs["run_name"] == wanted)]
    if len(matches) == 1:
        return matches.iloc[0]
    if matches.empty:
        raise AnalysisError(f"no run '{wanted}' in this sweep (use 'best', a run id or a name)")
    raise AnalysisError(f"several runs are named '{wanted}'; pass a run id")


def top_k(
    runs: pd.DataFrame, *, metric: str, mode: str, factor: str | None, k: int
) -> pd.DataFrame:
    """The k best finished search runs per arm (and backbone), best first, with the
    hyperparameters that were searched."""
    search = finished(runs)
    search = search[role(search) == contract.SEARCH_ROLE].copy()
    score = best_metric_column(metric)
    search["score"] = pd.to_numeric(column(search, score), errors="coerce")
    search = search.dropna(subset=["score"])
    search["arm"] = arm(search, factor)
    search["backbone"] = param_values(search, "backbone")
    groups = group_columns(search)
    ranked = search.sort_values("score", ascending=mode != "max", kind="stable")
    ranked = ranked.groupby(groups, sort=True, group_keys=False).head(k)
    ranked["rank"] = ranked.groupby(groups).cumcount() + 1
    ranked = ranked.sort_values([*groups, "rank"], kind="stable")
    hyper = [p for p in varying_params(search, exclude=[factor or "", "seed"]) if p not in groups]
    table = pd.DataFrame(
        {
            **{g: ranked[g] for g in groups},
            "rank": ranked["rank"],
            "run": ranked["run_name"],
            best_metric(metric): ranked["score"],
            contract.BEST_EPOCH_METRIC: pd.to_numeric(
                column(ranked, BEST_EPOCH_COLUMN), errors="coerce"
            ),
            "outcome": column(ranked, f"tags.{contract.OUTCOME_TAG}"),
            **{p: typed(param_values(ranked, p)) for p in hyper},
            "run_id": ranked["run_id"],
        }
    )
    return table.reset_index(drop=True)


def values_at_epoch(history: pd.DataFrame, epoch: float | None) -> pd.Series:
    """One run's metrics at its best epoch (the model the run keeps), else at its last."""
    if history.empty:
        return pd.Series(dtype=float)
    if epoch is not None and not pd.isna(epoch) and int(epoch) in history.index:
        return history.loc[int(epoch)]
    return history.iloc[-1]


def best_epoch_values(runs: pd.DataFrame, histories: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Run id -> metric values at that run's best epoch, one row per run with a history."""
    best = pd.to_numeric(column(runs, BEST_EPOCH_COLUMN), errors="coerce")
    rows = {
        run_id: values_at_epoch(histories[run_id], epoch)
        for run_id, epoch in zip(runs["run_id"], best, strict=True)
        if run_id in histories
    }
    return pd.DataFrame.from_dict(rows, orient="index").apply(pd.to_numeric, errors="coerce")


def test_values(runs: pd.DataFrame) -> pd.DataFrame:
    """Run id -> the run's ``test_*`` metrics. Each is logged once, at the best epoch, so the
    run's latest value is the one; runs never scored on test get an all-missing row."""
    prefix = f"metrics.{contract.split_metric(TEST, '')}"
    names = [c for c in runs.columns if c.startswith(prefix)]
    values = runs.set_index("run_id")[names].apply(pd.to_numeric, errors="coerce")
    return values.rename(columns=lambda c: c.removeprefix("metrics."))


def headline_metrics(split: str) -> list[str]:
    """The headline metrics on a split: ``test_macro_f1``, ``test_balanced_accuracy``, ..."""
    return [f"{split}_{m.removeprefix('val_')}" for m in HEADLINE_METRICS]


def add_values(table: pd.DataFrame, values: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Append the given metric columns of ``values`` (indexed by run id) to a table."""
    out = table.copy()
    for name in metrics:
        source = values[name] if name in values.columns else pd.Series(dtype=float)
        out[name] = out["run_id"].map(source)
    return out


def confirmation_summary(
    runs: pd.DataFrame,
    values: pd.DataFrame,
    *,
    metric: str,
    factor: str | None,
    metrics: Sequence[str] = HEADLINE_METRICS,
) -> pd.DataFrame:
    """Per arm (and backbone), the confirmation runs' metrics as mean and std over seeds.

    ``values`` holds each run's metrics at its best epoch (``best_epoch_values``). Columns
    come in ``<metric>_mean`` / ``<metric>_std`` pairs; std is the sample std (n - 1).
    """
    confirm = finished(runs)
    confirm = confirm[role(confirm) == contract.CONFIRMATION_ROLE].copy()
    if confirm.empty:
        return pd.DataFrame()
    confirm["arm"] = arm(confirm, factor)
    confirm["backbone"] = param_values(confirm, "backbone")
    confirm[best_metric(metric)] = pd.to_numeric(
        column(confirm, best_metric_column(metric)), errors="coerce"
    )
    confirm = add_values(confirm, values, [m for m in metrics if m != best_metric(metric)])
    names = list(dict.fromkeys([best_metric(metric), *metrics]))
    groups = group_columns(confirm)
    rows = []
    for key, group in confirm.groupby(groups, sort=True):
        row = dict(zip(groups, key if isinstance(key, tuple) else (key,), strict=True))
        row["n_seeds"] = len(group)
        row["seeds"] = ",".join(sorted(param_values(group, "seed"), key=_natural))
        for name in names:
            values_ = pd.to_numeric(group[name], errors="coerce")
            row[f"{name}_mean"] = values_.mean()
            row[f"{name}_std"] = values_.std(ddof=1)
        rows.append(row)
    return pd.DataFrame(rows)


def _natural(text: str) -> tuple[int, str]:
    return (int(text), "") if text.lstrip("-").isdigit() else (0, text)
