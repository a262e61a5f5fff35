"""Hyperparameter importance of a sweep's search runs, and the numbers behind a
parallel-coordinates view. The study is rebuilt from MLflow in memory, so no Ray or Optuna
storage of the sweep is needed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.tables import best_metric_column, column, finished, param_values, role, varying_params

MIN_TRIALS = 4
MIN_PARAMS = 2
LOG_SCALE_DECADES = 2.0  # a positive range wider than this is drawn and modelled on log scale


@dataclass(frozen=True)
class Importance:
    """Importances in [0, 1] summing to 1, or the reason there are none."""

    values: pd.Series  # param -> importance, largest first
    reason: str = ""
    dropped: tuple[str, ...] = ()  # conditional params left out (absent from some trials)


@dataclass(frozen=True)
class ParallelCoordinates:
    """Each search trial as one line: coordinates in [0, 1] per axis, NaN where a trial has
    no value for that param, and the metric that colours it."""

    axes: list[str]
    coords: np.ndarray  # (n_trials, n_axes)
    ticks: list[list[tuple[float, str]]]  # per axis: (position, label)
    score: np.ndarray
    metric: str


def search_runs(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    search = finished(runs)
    search = search[role(search) == "search"]
    score = pd.to_numeric(column(search, best_metric_column(metric)), errors="coerce")
    return search[score.notna()]


def hyperparameters(runs: pd.DataFrame) -> list[str]:
    # seed is not a hyperparameter the search could choose; ids and bookkeeping neither.
    return varying_params(runs, exclude=["seed", "split_seed"])


def infer_distribution(values: Sequence[str]):
    """An Optuna distribution covering the observed values of one param (strings as logged)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    numbers = _numbers(values)
    if numbers is None:
        return CategoricalDistribution(sorted(set(values)))
    low, high = float(numbers.min()), float(numbers.max())
    log = _is_log(low, high)
    if all(_is_int_text(v) for v in values):
        return IntDistribution(int(low), int(high), log=log)
    return FloatDistribution(low, high, log=log)


def _numbers(values: Sequence[str]) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in values])
    except ValueError:
        return None


def _is_int_text(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _is_log(low: float, high: float) -> bool:
    return low > 0 and math.log10(high / low) > LOG_SCALE_DECADES


def _parse(text: str, distribution) -> object:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return text
    return int(text) if isinstance(distribution, IntDistribution) else float(text)


def build_study(runs: pd.DataFrame, *, metric: str, mode: str):
    """An in-memory Optuna study with one completed trial per finished search run."""
    import optuna

    search = search_runs(runs, metric)
    names = hyperparameters(search)
    distributions = {}
    for name in names:
        values = param_values(search, name)
        distributions[name] = infer_distribution(sorted(set(values[values != ""])))
    direction = "maximize" if mode == "max" else "minimize"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line on stderr
    try:
        study = optuna.create_study(direction=direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    scores = pd.to_numeric(column(search, best_metric_column(metric)), errors="coerce")
    for (_, run), score in zip(search.iterrows(), scores, strict=True):
        params, dists = {}, {}
        for name, dist in distributions.items():
            text = _param_text(run, name)
            if text:  # a conditional param is simply absent from this trial
                params[name] = _parse(text, dist)
                dists[name] = dist
        study.add_trial(
            optuna.trial.create_trial(value=float(score), params=params, distributions=dists)
        )
    return study


def _param_text(run: pd.Series, name: str) -> str:
    value = run.get(f"params.{name}")
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    return "" if str(value) in ("", "None") else str(value)


def param_importance(runs: pd.DataFrame, *, metric: str, mode: str, seed: int = 0) -> Importance:
    """Optuna's fANOVA importances over the params present in every search trial."""
    import optuna

    search = search_runs(runs, metric)
    if len(search) < MIN_TRIALS:
        return Importance(pd.Series(dtype=float), f"only {len(search)} finished search runs")
    study = build_study(search, metric=metric, mode=mode)
    everywhere = set.intersection(*(set(t.params) for t in study.trials))
    names = sorted(everywhere)
    dropped = tuple(sorted(set(hyperparameters(search)) - everywhere))
    if len(names) < MIN_PARAMS:
        reason = f"{len(names)} hyperparameter(s) varied in every search run (need {MIN_PARAMS})"
        return Importance(pd.Series(dtype=float), reason, dropped)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    with warnings.catch_warnings():  # experimental-API warnings are noise here
        warnings.simplefilter("ignore")
        values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=names)
    return Importance(pd.Series(values, dtype=float), "", dropped)


def parallel_coordinates(runs: pd.DataFrame, *, metric: str) -> ParallelCoordinates:
    """Every search trial's hyperparameters scaled to [0, 1] per axis (log where wide)."""
    search = search_runs(runs, metric)
    axes = hyperparameters(search)
    columns, ticks = [], []
    for name in axes:
        coords, axis_ticks = _axis(param_values(search, name))
        columns.append(coords)
        ticks.append(axis_ticks)
    matrix = np.column_stack(columns) if columns else np.empty((len(search), 0))
    score = pd.to_numeric(column(search, best_metric_column(metric)), errors="coerce")
    return ParallelCoordinates(axes, matrix, ticks, score.to_numpy(dtype=float), metric)


def _axis(values: pd.Series) -> tuple[np.ndarray, list[tuple[float, str]]]:
    present = values[values != ""]
    numbers = _numbers(list(present))
    if numbers is None:
        levels = sorted(set(present))
        position = {v: i / max(len(levels) - 1, 1) for i, v in enumerate(levels)}
        coords = values.map(position).to_numpy(dtype=float)
        return coords, [(position[v], v) for v in levels]
    low, high = float(numbers.min()), float(numbers.max())
    scale = np.log10 if _is_log(low, high) else (lambda x: x)
    span = (scale(high) - scale(low)) or 1.0
    raw = pd.to_numeric(values.replace("", np.nan), errors="coerce").to_numpy(dtype=float)
    coords = (scale(raw) - scale(low)) / span
    return coords, [(0.0, f"{low:.3g}"), (1.0, f"{high:.3g}")]
