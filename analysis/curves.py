"""Learning curves: per-epoch metrics of runs, and their mean and spread per arm."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

CURVE_METRICS = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")


def long_histories(
    histories: Mapping[str, pd.DataFrame],
    groups: Mapping[str, str],
    metrics: Sequence[str] = CURVE_METRICS,
) -> pd.DataFrame:
    """Columns run_id, group, metric, epoch, value: one row per logged point."""
    frames = []
    for run_id, history in histories.items():
        present = [m for m in metrics if m in history.columns]
        if not present:
            continue
        frame = history[present].rename_axis("epoch").reset_index()
        frame = frame.melt(id_vars="epoch", var_name="metric", value_name="value").dropna()
        frame["run_id"] = run_id
        frame["group"] = groups.get(run_id, "?")
        frames.append(frame)
    columns = ["run_id", "group", "metric", "epoch", "value"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def band(points: pd.DataFrame) -> pd.DataFrame:
    """Per group, metric and epoch: mean, sample std, min, max and n over runs.

    Runs stopped early contribute only the epochs they reached, so n can fall with epoch.
    """
    if points.empty:
        return pd.DataFrame(columns=["group", "metric", "epoch", "mean", "std", "min", "max", "n"])
    grouped = points.groupby(["group", "metric", "epoch"])["value"]
    stats = grouped.agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"})
    return stats.reset_index()
