"""Hyperparameter importance of a sweep's search runs, and the numbers behind a
parallel-coordinates view.

Both read the arms' own Optuna studies, which the sweep logs with its parent run as an Optuna
journal file (``optuna/journal.log``, one study per arm named by the arm): their exact
objective values and search distributions. For sweeps logged before that file existed, a
study is rebuilt from the search runs' params and metrics in MLflow.
"""

from __future__ import annotations

import math
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError
from analysis.tables import best_metric_column, column, finished, param_values, role, varying_params
from trainables.contract import OPTUNA_JOURNAL_ARTIFACT

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


@dataclass(frozen=True)
class ArmStudies:
    """The finished trials of each arm's Optuna study, read once into memory."""

    factor: str  # what the arms differ in: an extra categorical param when arms are merged
    direction: str  # "maximize" or "minimize"
    trials: Mapping[str, list] = field(repr=False)  # arm -> its FrozenTrials, COMPLETE only

    def table(self, metric: str) -> pd.DataFrame:
        """One row per trial shaped like the search runs' table (``params.*`` as strings,
        ``metrics.best_<metric>``), so the views draw it alike."""
        rows = [
            {
                **{f"params.{k}": str(v) for k, v in trial.params.items()},
                f"params.{self.factor}": arm,
                best_metric_column(metric): trial.value,
            }
            for arm, trials in self.trials.items()
            for trial in trials
        ]
        return pd.DataFrame(rows)


def sweep_studies(store: Any, sweep: Any) -> ArmStudies | None:
    """The arms' studies logged with the sweep's parent run, or None for a sweep without
    them. ``store`` and ``sweep`` are ``analysis.store``'s."""
    try:
        payload = store.read_bytes(sweep.parent_run_id, OPTUNA_JOURNAL_ARTIFACT)
    except AnalysisError:
        return None
    return read_journal(payload, arms=sweep.arms, factor=sweep.factor or "arm")


def read_journal(payload: bytes, *, arms: Sequence[str], factor: str) -> ArmStudies | None:
    """The studies named by the arms in an Optuna journal file's bytes."""
    import optuna

    trials, direction = {}, "maximize"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "journal.log"
        path.write_bytes(payload)
        backend = optuna.storages.journal.JournalFileBackend(str(path))
        storage = optuna.storages.JournalStorage(backend)
        for arm in arms:
            try:
                study = optuna.load_study(study_name=arm, storage=storage)
            except KeyError:  # an arm with no study: its trials are simply absent
                continue
            direction = study.direction.name.lower()
            trials[arm] = [t for t in study.get_trials(states=_complete()) if _finite(t.value)]
    return ArmStudies(factor, direction, trials) if trials else None


def _complete() -> tuple:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE,)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def merged_study(studies: ArmStudies):
    """All arms' trials in one in-memory study, the arm as a categorical param named by the
    factor. A param the arms search over different ranges gets the range covering all;
    one searched as different kinds (a number here, a choice there) is left out."""
    import optuna
    from optuna.distributions import CategoricalDistribution

    by_name: dict[str, list] = {}
    for trials in studies.trials.values():
        for trial in trials:
            for name, distribution in trial.distributions.items():
                by_name.setdefault(name, []).append(distribution)
    union = {name: _union(found) for name, found in by_name.items()}
    arms = CategoricalDistribution(list(studies.trials))
    kept = {k: v for k, v in union.items() if v is not None}
    study = _quiet_study(studies.direction)
    for arm, trials in studies.trials.items():
        for trial in trials:
            params = {k: v for k, v in trial.params.items() if k in kept}
            study.add_trial(
                optuna.trial.create_trial(
                    value=trial.value,
                    params={**params, studies.factor: arm},
                    distributions={**{k: kept[k] for k in params}, studies.factor: arms},
                )
            )
    return study


def _union(distributions: list):
    """One distribution that holds every value of ``distributions``, or None."""
    from optuna.distributions import CategoricalDistribution

    first = distributions[0]
    if all(d == first for d in distributions):
        return first
    kinds = {type(d) for d in distributions}
    if len(kinds) > 1:
        return None
    if isinstance(first, CategoricalDistribution):
        choices = dict.fromkeys(c for d in distributions for c in d.choices)
        return CategoricalDistribution(list(choices))
    low = min(d.low for d in distributions)
    high = max(d.high for d in distributions)
    return type(first)(low, high, log=all(d.log for d in distributions))


def _quiet_study(direction: str):
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" line on stderr
    try:
        return optuna.create_study(direction=direction)
    finally:
        optuna.logging.set_verbosity(verbosity)


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
    study = _quiet_study("maximize" if mode == "max" else "minimize")
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


def param_importance(
    runs: pd.DataFrame,
    *,
    metric: str,
    mode: str,
    seed: int = 0,
    studies: ArmStudies | None = None,
) -> Importance:
    """Optuna's fANOVA importances over the params present in every search trial: of the
    arms' own studies when given, else of a study rebuilt from the search runs."""
    if studies is not None:
        study = merged_study(studies)
        searched = _varying(study)
    else:
        search = search_runs(runs, metric)
        if len(search) < MIN_TRIALS:
            return Importance(pd.Series(dtype=float), f"only {len(search)} finished search runs")
        study = build_study(search, metric=metric, mode=mode)
        searched = hyperparameters(search)
    if len(study.trials) < MIN_TRIALS:
        return Importance(pd.Series(dtype=float), f"only {len(study.trials)} finished trials")
    return _fanova(study, searched, seed)


def _varying(study) -> list[str]:
    values: dict[str, set] = {}
    for trial in study.trials:
        for name, value in trial.params.items():
            values.setdefault(name, set()).add(value)
    return sorted(name for name, seen in values.items() if len(seen) > 1)


def _fanova(study, searched: Sequence[str], seed: int) -> Importance:
    import optuna

    everywhere = set.intersection(*(set(t.params) for t in study.trials))
    names = sorted(everywhere & set(searched))
    dropped = tuple(sorted(set(searched) - everywhere))
    if len(names) < MIN_PARAMS:
        reason = f"{len(names)} hyperparameter(s) varied in every search run (need {MIN_PARAMS})"
        return Importance(pd.Series(dtype=float), reason, dropped)
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    with warnings.catch_warnings():  # experimental-API warnings are noise here
        warnings.simplefilter("ignore")
        values = optuna.importance.get_param_importances(study, evaluator=evaluator, params=names)
    return Importance(pd.Series(values, dtype=float), "", dropped)


def parallel_coordinates(
    runs: pd.DataFrame, *, metric: str, studies: ArmStudies | None = None
) -> ParallelCoordinates:
    """Every search trial's hyperparameters scaled to [0, 1] per axis (log where wide): of
    the arms' own studies when given, else of the search runs."""
    search = studies.table(metric) if studies is not None else search_runs(runs, metric)
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
