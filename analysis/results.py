"""The results each command shows, computed from a Store and a Sweep.

This is the glue between the MLflow reader (``store``) and the pure modules (``tables``,
``stats``, ``confusion``, ...): it decides which runs' histories and artifacts to load. The
command line and the HTML report both call it, so they always show the same numbers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis import anytime, confusion, stats, tables
from analysis.classes import ClassInfo, class_metric_keys
from analysis.errors import AnalysisError
from analysis.store import Store, Sweep
from trainables import contract
from trainables.contract import MODEL_URI_TAG, SPLITS, WINNER_RUN_TAG

# What compare, best and report can show (--split): the held-out split, else val.
EVALUATED_SPLITS = (tables.TEST, contract.VAL)
MODEL_COLUMN = f"tags.{MODEL_URI_TAG}"


def open_sweep(tracking_uri: str, experiment: str, parent_run: str | None) -> tuple[Store, Sweep]:
    """The store and the sweep, refusing a sweep with no finished child run."""
    store = Store(tracking_uri)
    sweep = store.load_sweep(experiment, parent_run)
    tables.require_finished(sweep.runs, sweep.parent_run_name)
    return store, sweep


def histories(store: Store, run_ids: Iterable[str]) -> dict[str, pd.DataFrame]:
    return {run_id: store.history(run_id) for run_id in dict.fromkeys(run_ids)}


def values_for(
    store: Store, sweep: Sweep, run_ids: Iterable[str], split: str = contract.VAL
) -> pd.DataFrame:
    """Metrics at each run's best epoch, indexed by run id. Test metrics are logged once, at
    the best epoch chosen on val, so a run's latest value of each is the one; val and train
    metrics come from the run's history at its best epoch."""
    ids = list(dict.fromkeys(run_ids))
    runs = sweep.runs[sweep.runs["run_id"].isin(ids)]
    if split == tables.TEST:
        return tables.test_values(runs)
    return tables.best_epoch_values(runs, histories(store, ids))


def has_test_metrics(runs: pd.DataFrame) -> bool:
    """Whether any finished confirmation run was scored on the held-out test split."""
    done = tables.finished(runs)
    confirm = done[tables.role(done) == contract.CONFIRMATION_ROLE]
    return not tables.test_values(confirm).dropna(how="all").empty


def resolve_split(sweep: Sweep, requested: str | None) -> str:
    """``--split``: as asked, or by default test when the sweep's confirmation runs were
    scored on it, else val. Asking for test where there is none is bad input."""
    available = has_test_metrics(sweep.runs)
    if requested is None:
        return tables.TEST if available else contract.VAL
    if requested == tables.TEST and not available:
        raise AnalysisError(
            f"sweep '{sweep.parent_run_name}' has no test metrics (its confirmation runs "
            "logged no test_* metric: a sweep from before the test split, or one without "
            "confirmation runs); use --split val"
        )
    return requested


def class_info(store: Store, sweep: Sweep) -> ClassInfo | None:
    try:
        return store.classes(sweep)
    except AnalysisError:
        return None


# best
@dataclass(frozen=True)
class BestTables:
    top: pd.DataFrame
    confirmation: pd.DataFrame
    metric: str


def best_tables(store: Store, sweep: Sweep, *, top_k: int, split: str = contract.VAL) -> BestTables:
    """Search runs ranked on val (they were chosen on it and have nothing else); the
    confirmation runs summarised on ``split``."""
    top = tables.top_k(
        sweep.runs, metric=sweep.metric, mode=sweep.mode, factor=sweep.factor, k=top_k
    )
    done = tables.finished(sweep.runs)
    confirm_ids = done.loc[tables.role(done) == contract.CONFIRMATION_ROLE, "run_id"]
    values = values_for(store, sweep, [*top["run_id"], *confirm_ids])
    metrics = [m for m in tables.HEADLINE_METRICS if m in values.columns]
    top = tables.add_values(top, values, metrics)
    top = top[[c for c in top.columns if c != "run_id"] + ["run_id"]]
    if split != contract.VAL:
        values = values_for(store, sweep, confirm_ids, split)
        metrics = [m for m in tables.headline_metrics(split) if m in values.columns]
    summary = tables.confirmation_summary(
        sweep.runs, values, metric=sweep.metric, factor=sweep.factor, metrics=metrics
    )
    return BestTables(top, summary, sweep.metric)


# search progress: would more trials have helped?
def search_progress(store: Store, sweep: Sweep) -> dict[str, anytime.AnytimeCurve]:
    """Each arm's anytime curve over its search runs, trials in the order they started, the
    epochs each ran read from its history (diverged and failed runs too: they cost epochs)."""
    search = sweep.runs[tables.role(sweep.runs) == contract.SEARCH_ROLE]
    if search.empty:
        raise AnalysisError(f"sweep '{sweep.parent_run_name}' has no search runs")
    diverged = tables.column(search, f"tags.{contract.DIVERGED_EPOCH_TAG}")
    epochs = {
        run_id: anytime.epochs_run(store.history(run_id), at)
        for run_id, at in zip(search["run_id"], diverged, strict=True)
    }
    trials = anytime.search_trials(search, metric=sweep.metric, factor=sweep.factor, epochs=epochs)
    return anytime.arm_curves(trials, mode=sweep.mode)


# compare
@dataclass(frozen=True)
class Comparison:
    pairing: stats.Pairing
    table: pd.DataFrame  # one row per metric, as stats.paired_comparison plus class columns
    split: str  # the split whose metrics are compared: test or val
    diffs: np.ndarray  # the primary metric's paired differences, other - baseline
    split_of_pair: np.ndarray  # the split seed of each of them
    notes: tuple[str, ...] = ()  # e.g. why the default split fell back to val

    @property
    def primary(self) -> pd.Series:
        return self.table[self.table["role"] == stats.PRIMARY].iloc[0]

    # Computed when asked (a report, the sweep's description): the power needs scipy.stats
    # and scipy.optimize, slow to import, which a comparison's intervals do without.
    @functools.cached_property
    def power(self) -> stats.PowerSummary:
        """Of the primary metric."""
        return stats.power_summary(self.diffs)

    @functools.cached_property
    def sources(self) -> stats.VarianceSources:
        """Of the primary metric, over splits and seeds."""
        return stats.variance_sources(self.diffs, self.split_of_pair)


def compare(
    store: Store,
    sweep: Sweep,
    *,
    factor: str | None,
    levels: Sequence[str] | None = None,
    resamples: int = stats.DEFAULT_RESAMPLES,
    seed: int = 0,
    split: str | None = None,
) -> Comparison:
    """The paired comparison on ``split`` (None: test when the sweep has test metrics)."""
    factor = factor or sweep.factor
    if not factor:
        raise AnalysisError("the sweep has no 'factor' tag; name one with --factor")
    pairing = stats.pair_runs(sweep.runs, factor=factor, levels=levels, sweep_factor=sweep.factor)
    ids = [*pairing.pairs["baseline_run_id"], *pairing.pairs["other_run_id"]]
    chosen, notes = _split_of_pairs(sweep, split, ids, factor)
    values = values_for(store, sweep, ids, chosen)
    info = class_info(store, sweep)
    order, keys = _class_order(info, values.columns, chosen)
    primary = stats.on_split(sweep.metric, chosen)
    metrics = stats.comparison_metrics([keys[n] for n in order], split=chosen, primary=primary)
    table = stats.paired_comparison(
        values, pairing, metrics, primary=primary, resamples=resamples, seed=seed
    )
    owner = {
        contract.class_metric(chosen, kind, keys[n]): n for n in order for kind in ("recall", "f1")
    }
    table.insert(1, "class", table["metric"].map(owner).fillna(""))
    for position, counts_of in enumerate(("train", chosen), start=2):
        counts = info.counts(counts_of) if info else {}
        table.insert(position, f"{counts_of}_n", table["class"].map(counts).astype("Int64"))
    base, oth, keep = stats.paired_values(values, pairing, primary)
    diffs = oth[keep] - base[keep]
    split_of_pair = pairing.pairs["split_seed"].to_numpy()[keep]
    return Comparison(pairing, table, chosen, np.asarray(diffs), split_of_pair, notes)


def _split_of_pairs(
    sweep: Sweep, requested: str | None, ids: Sequence[str], factor: str
) -> tuple[str, tuple[str, ...]]:
    """The split to compare on, given the paired runs: pairs of search runs (any factor
    other than the sweep's) have no test metrics, so the default falls back to val."""
    split = resolve_split(sweep, requested)
    if split != tables.TEST or has_test_metrics(sweep.runs[sweep.runs["run_id"].isin(ids)]):
        return split, ()
    if requested == tables.TEST:
        raise AnalysisError(
            f"the runs paired for factor '{factor}' have no test metrics (only confirmation "
            "runs are scored on test); use --split val"
        )
    return contract.VAL, (f"the runs paired for factor '{factor}' have no test metrics: val shown",)


def compare_levels(sweep: Sweep, factor: str) -> list[tuple[str, str]]:
    """For the report: each level of the sweep's factor against the first (sorted) level."""
    levels = stats.factor_levels(sweep.runs, stats.level_param(factor, sweep.factor))
    return [(levels[0], level) for level in levels[1:]]


def _class_order(
    info: ClassInfo | None, columns: Iterable[str], split: str = contract.VAL
) -> tuple[list[str], dict]:
    """Classes with per-class metrics, minority first when the class counts are known."""
    recall = contract.class_metric(split, "recall", "")
    suffixes = sorted({contract.class_key(c) for c in columns if c.startswith(recall)})
    names = info.minority_first() if info else suffixes
    keys = class_metric_keys(names, suffixes)
    return [n for n in names if n in keys], keys


# confusion
@dataclass(frozen=True)
class RunConfusion:
    run_id: str
    run_name: str
    classes: list[str]
    counts: dict[str, np.ndarray]  # split -> counts, rows true, columns predicted
    per_class: dict[str, pd.DataFrame]

    def best_and_worst(self, split: str) -> tuple[str, str]:
        return confusion.best_and_worst(self.per_class[split])

    def per_class_table(self) -> pd.DataFrame:
        frames = [frame.assign(split=split) for split, frame in self.per_class.items()]
        table = pd.concat(frames, ignore_index=True)
        return table[["split", "class", "precision", "recall", "f1", "support"]]


def resolve_run(sweep: Sweep, wanted: str) -> pd.Series:
    return tables.find_run(sweep.runs, wanted, metric=sweep.metric, mode=sweep.mode)


def model_run(sweep: Sweep, wanted: str) -> pd.Series:
    """The run whose model ``predict`` uses. ``best``: the sweep's winner (the model tune.py
    names, and registers with --register-model), else the best run that logged a model; a
    run id or name must have logged one."""
    runs = sweep.runs
    logged = tables.column(runs, MODEL_COLUMN).notna()
    if wanted == "best":
        winner = runs[(runs["run_id"] == sweep.tags.get(WINNER_RUN_TAG)) & logged]
        if not winner.empty:
            return winner.iloc[0]
        if not logged.any():
            raise AnalysisError(
                f"no run of sweep '{sweep.parent_run_name}' logged a model (tune.py logs the "
                "confirmation runs' models unless --log-models none)"
            )
        return tables.pick_best_run(runs[logged], metric=sweep.metric, mode=sweep.mode)
    run = resolve_run(sweep, wanted)
    if pd.isna(run.get(MODEL_COLUMN)):
        raise AnalysisError(
            f"run {run['run_name']} ({run['run_id'][:8]}) logged no model; search trials log "
            "none unless tune.py --log-models search (use 'best', or a confirmation run)"
        )
    return run


def run_confusion(store: Store, run: pd.Series) -> RunConfusion:
    """The run's train and val confusion matrices at its best epoch, and per-class numbers;
    the test matrix too when the run was scored on test (a confirmation run)."""
    counts, classes = {}, []
    for split in (*SPLITS, tables.TEST):
        try:
            # As strings: class names such as "007" must not turn into the number 7.
            frame = store.read_csv(
                run["run_id"], contract.confusion_csv(split), index_col=0, dtype=str
            )
        except AnalysisError:
            if split in SPLITS:
                raise
            continue  # search runs and older sweeps have no test matrix
        classes = [str(c) for c in frame.index]
        counts[split] = frame.to_numpy(dtype=int)
    per_class = {s: confusion.per_class_metrics(m, classes) for s, m in counts.items()}
    return RunConfusion(run["run_id"], run["run_name"], classes, counts, per_class)


def run_predictions(store: Store, run: pd.Series, split: str) -> tuple[dict, str]:
    """The run's predictions at its best epoch on ``split``, else on val (a search run has
    none on test); returns the arrays and the split they are from."""
    if split != contract.VAL:
        try:
            return store.read_npz(run["run_id"], _predictions_artifact(split)), split
        except AnalysisError:
            pass  # search runs and older sweeps were never scored on test
    return store.read_npz(run["run_id"], contract.VAL_PREDICTIONS_ARTIFACT), contract.VAL


def _predictions_artifact(split: str) -> str:
    # The contract names val's file; the test split's is named alike (docs/tracking.md).
    val = contract.VAL_PREDICTIONS_ARTIFACT
    return val.replace(f"/{contract.VAL}_", f"/{split}_", 1)
