"""Would more search have helped? Each arm's anytime curve: the best value its search had
found after each trial, against the trials run and the epochs spent so far, and the trial at
which its best came ("trial 7 of 32" says the search had settled, "32 of 32" that it had not).

Pure functions of arrays and runs tables; ``results.search_progress`` loads them from a sweep.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import tables
from trainables import contract
from trainables.config import trial_number

# A best that came after this share of an arm's trials came late: more trials might help.
LATE_SHARE = 0.75
SETTLED = "the search had settled"
LATE = "more trials might still help"
MODES = ("max", "min")


@dataclass(frozen=True)
class AnytimeCurve:
    """One arm's search, its trials in the order they started."""

    values: np.ndarray  # each trial's best value of the metric; NaN: none (diverged, failed)
    epochs: np.ndarray  # the epochs each trial ran (ASHA, the scheduler, stops some early)
    best_so_far: np.ndarray  # the best value after each trial; NaN until one has a value
    spent: np.ndarray  # the epochs spent after each trial, summed over the trials so far
    best_trial: int | None  # the first trial (1-based) to reach the arm's best; None: no value

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def trials(self) -> np.ndarray:
        return np.arange(1, self.n + 1)

    @property
    def total_epochs(self) -> int:
        return int(self.spent[-1]) if self.n else 0

    @property
    def best_value(self) -> float:
        return float(self.best_so_far[-1]) if self.n else float("nan")

    @property
    def epochs_at_best(self) -> int | None:
        """The epochs spent once the best trial had ended."""
        return None if self.best_trial is None else int(self.spent[self.best_trial - 1])


def anytime_curve(values: np.ndarray, epochs: np.ndarray, *, mode: str) -> AnytimeCurve:
    """``values``: each trial's best value of the searched metric, trials in the order they
    started, NaN (or any non-finite value) for a trial with none, which costs its epochs but
    improves nothing; ``epochs``: the epochs each ran. Of trials tying for the best, the
    first counts: more search did not find anything better."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    values = np.asarray(values, dtype=float)
    epochs = np.asarray(epochs, dtype=int)
    if values.shape != epochs.shape or values.ndim != 1:
        raise ValueError(f"one value and one epoch count per trial: {values.shape}, {epochs.shape}")
    if (epochs < 0).any():
        raise ValueError("a trial cannot run a negative number of epochs")
    values = np.where(np.isfinite(values), values, np.nan)
    # fmax and fmin skip NaN, so a trial without a value carries the best so far forward.
    best = (np.fmax if mode == "max" else np.fmin).accumulate(values) if values.size else values
    reached = np.flatnonzero(values == best[-1]) if values.size else np.array([], dtype=int)
    best_trial = int(reached[0]) + 1 if reached.size else None
    return AnytimeCurve(values, epochs, best, np.cumsum(epochs), best_trial)


def came_late(k: int, n: int) -> bool:
    """Whether trial ``k`` of ``n`` is in the last quarter of the search."""
    return k > LATE_SHARE * n


def outlook(k: int, n: int) -> str:
    return LATE if came_late(k, n) else SETTLED


def trial_text(k: int, n: int) -> str:
    """``7 of 32``: the value of the parent run's tag ``best_trial.<arm>``."""
    return f"{k} of {n}"


def parse_trial_text(text: str | None) -> tuple[int, int] | None:
    """``trial_text``'s ``(k, n)`` back; None for anything else."""
    found = re.fullmatch(r"(\d+) of (\d+)", text or "")
    return (int(found.group(1)), int(found.group(2))) if found else None


def sentence(curve: AnytimeCurve, metric: str) -> str:
    """``best val_macro_f1 0.8123 came at trial 7 of 32 (40 of 180 epochs): the search had
    settled``."""
    if curve.best_trial is None:
        return f"no trial of its {curve.n} reported {metric}"
    k, n = curve.best_trial, curve.n
    return (
        f"best {metric} {curve.best_value:.4g} came at trial {trial_text(k, n)} "
        f"({curve.epochs_at_best} of {curve.total_epochs} epochs): {outlook(k, n)}"
    )


def epochs_run(history: pd.DataFrame, diverged_epoch: object = None) -> int:
    """The epochs a trial ran: the last epoch of its history (``store.history``), or the
    epoch it diverged at when that is later (a diverged epoch may have left no row)."""
    rows = history.dropna(how="all")
    last = int(rows.index.max()) if not rows.empty else 0
    diverged = pd.to_numeric(pd.Series([diverged_epoch]), errors="coerce").iloc[0]
    return max(last, int(diverged) if pd.notna(diverged) else 0)


def search_trials(
    runs: pd.DataFrame, *, metric: str, factor: str | None, epochs: Mapping[str, int]
) -> pd.DataFrame:
    """The search runs, one row each, each arm's in the order they started: by their trial
    number in the arm's Optuna study (``trainables.config.numbered_run_name``), else, for a
    sweep whose runs were never numbered, by start time. Columns ``arm``, ``trial`` (1-based
    place in that order), ``run_id``, ``run_name``, ``value`` (the run's ``best_<metric>``;
    NaN unless it finished: a diverged or failed trial found nothing) and ``epochs`` (from
    ``epochs``; 0 for a run it lacks)."""
    search = runs[tables.role(runs) == contract.SEARCH_ROLE]
    finished = tables.column(search, "status") == "FINISHED"
    score = pd.to_numeric(tables.column(search, tables.best_metric_column(metric)), errors="coerce")
    frame = pd.DataFrame(
        {
            "arm": tables.arm(search, factor).astype(str),
            "number": [trial_number(str(name)) for name in search["run_name"]],
            "start": pd.to_numeric(tables.column(search, "start_time"), errors="coerce"),
            "run_id": search["run_id"],
            "run_name": search["run_name"],
            "value": score.where(finished).astype(float),
            "epochs": [int(epochs.get(run_id, 0)) for run_id in search["run_id"]],
        }
    )
    ordered = [
        group.sort_values("number" if group["number"].notna().all() else "start", kind="stable")
        for _, group in frame.groupby("arm", sort=True)
    ]
    columns = ["arm", "trial", "run_id", "run_name", "value", "epochs"]
    if not ordered:
        return pd.DataFrame(columns=columns)
    table = pd.concat(ordered, ignore_index=True)
    table["trial"] = table.groupby("arm").cumcount() + 1
    return table[columns]


def arm_curves(trials: pd.DataFrame, *, mode: str) -> dict[str, AnytimeCurve]:
    """Each arm's curve from ``search_trials``' table, arms in its order."""
    return {
        str(arm): anytime_curve(group["value"].to_numpy(), group["epochs"].to_numpy(), mode=mode)
        for arm, group in trials.groupby("arm", sort=False)
    }


def progress_table(curves: Mapping[str, AnytimeCurve], metric: str) -> pd.DataFrame:
    """One row per arm: its best value, the trial and the epochs at which it came."""
    rows = []
    for arm, curve in curves.items():
        k, n = curve.best_trial, curve.n
        rows.append(
            {
                "arm": arm,
                contract.best_metric(metric): curve.best_value,
                "best at trial": trial_text(k, n) if k else f"none of {n}",
                "epochs": f"{curve.epochs_at_best} of {curve.total_epochs}" if k else "",
                "outlook": outlook(k, n) if k else "",
            }
        )
    return pd.DataFrame(rows)
