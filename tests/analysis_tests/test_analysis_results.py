"""``results.compare`` on runs tables in memory (a stub in place of the MLflow store): which
split it shows, and pairs over several train/val splits."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import results, stats, textout
from analysis.classes import ClassInfo
from analysis.errors import AnalysisError
from analysis.store import Sweep

SPLIT_GAIN = {"101": 0.02, "102": 0.05, "103": 0.08}  # test macro F1 gain of focal per split
SEED_NOISE = (0.004, -0.002, 0.001, -0.003)


class StubStore:
    """What ``results.compare`` reads from a store: histories and the class counts."""

    def __init__(self, histories: dict[str, pd.DataFrame]) -> None:
        self.histories = histories

    def history(self, run_id: str) -> pd.DataFrame:
        return self.histories[run_id]

    def classes(self, sweep: Sweep) -> ClassInfo:
        return ClassInfo(names=("a", "b"), train_counts=(90, 10), val_counts=(30, 4))


def _run(
    arm: str,
    split_seed: str,
    seed: int,
    test_f1: float | None,
    *,
    role: str = "confirmation",
    extra: dict | None = None,
) -> dict:
    """One run's record; ``test_f1`` None: a run never scored on test."""
    record = {
        "tags.role": role,
        "tags.arm": arm,
        "params.arm": arm,
        "params.loss": arm,
        "params.seed": str(seed),
        "tags.split_seed": split_seed,
        "params.dataset": "digits",
        "metrics.best_epoch": 2.0,
        **(extra or {}),
    }
    if test_f1 is not None:
        record["metrics.test_macro_f1"] = test_f1
        record["metrics.test_recall.a"] = 0.8
    return record


def _sweep(make_runs, records: list[dict]) -> tuple[StubStore, Sweep]:
    runs = make_runs(records)
    histories = {
        run_id: pd.DataFrame({"val_macro_f1": [0.4, 0.5 + 0.01 * i]}, index=[1, 2])
        for i, run_id in enumerate(runs["run_id"])
    }
    tags = {"factor": "loss", "metric": "val_macro_f1", "mode": "max", "arms": "ce,focal"}
    sweep = Sweep("1", "focal", "p" * 32, "sweep", tags, {}, runs)
    return StubStore(histories), sweep


def _split_sweep(make_runs):
    records = []
    for split_seed, gain in SPLIT_GAIN.items():
        for seed, noise in zip(range(100, 104), SEED_NOISE, strict=True):
            base = 0.6 + 0.01 * (seed - 100)
            records.append(_run("ce", split_seed, seed, base))
            records.append(_run("focal", split_seed, seed, base + gain + noise))
    return _sweep(make_runs, records)


def test_pairs_over_splits_and_seeds_show_both_sources_of_variance(make_runs):
    store, sweep = _split_sweep(make_runs)
    comparison = results.compare(store, sweep, factor=None, resamples=500)
    assert comparison.split == "test"  # the confirmation runs were scored on test
    assert (comparison.pairing.n, comparison.pairing.splits, comparison.pairing.seeds) == (
        12,
        3,
        4,
    )
    diffs = [gain + noise for gain in SPLIT_GAIN.values() for noise in SEED_NOISE]
    assert comparison.primary["metric"] == "test_macro_f1"
    assert comparison.primary["difference"] == pytest.approx(np.mean(diffs))
    sources = comparison.sources
    assert sources.within_split_sd == pytest.approx(np.std(SEED_NOISE, ddof=1))
    split_means = np.array(list(SPLIT_GAIN.values())) + np.mean(SEED_NOISE)
    expected_between = np.var(split_means, ddof=1) - np.var(SEED_NOISE, ddof=1) / 4
    assert sources.between_splits_sd == pytest.approx(np.sqrt(expected_between))
    line = textout.design_sentence(comparison.pairing, sources, "test_macro_f1")
    assert line.startswith("pairs over 3 splits × 4 seeds (12 pairs)")
    assert "from split to split 3.0 points" in line and "from seed to seed on one split 0.3" in line


def test_the_default_split_falls_back_to_val_for_runs_never_scored_on_test(make_runs):
    records = []
    for seed in range(3):  # confirmation runs scored on test
        records += [_run(arm, "0", seed, 0.6 + 0.01 * seed) for arm in ("ce", "focal")]
    for seed in range(3):  # search runs, adam versus sgd: never scored on test
        for optimizer in ("sgd", "adam"):
            extra = {"params.optimizer": optimizer, "params.lr": "0.01"}
            records.append(_run("ce", "0", seed, None, role="search", extra=extra))
    store, sweep = _sweep(make_runs, records)
    assert results.resolve_split(sweep, None) == "test"
    comparison = results.compare(
        store, sweep, factor="optimizer", levels=["sgd", "adam"], resamples=500
    )
    assert comparison.split == "val" and "val shown" in comparison.notes[0]
    assert comparison.primary["metric"] == "val_macro_f1"
    with pytest.raises(AnalysisError, match="have no test metrics"):
        results.compare(store, sweep, factor="optimizer", levels=["sgd", "adam"], split="test")


def test_a_sweep_without_test_metrics_refuses_split_test(make_runs):
    records = [_run(arm, "0", seed, None) for seed in range(2) for arm in ("ce", "focal")]
    store, sweep = _sweep(make_runs, records)
    assert results.resolve_split(sweep, None) == "val"
    with pytest.raises(AnalysisError, match="has no test metrics") as caught:
        results.resolve_split(sweep, "test")
    assert "\n" not in str(caught.value)
    comparison = results.compare(store, sweep, factor=None, resamples=500)
    assert comparison.split == "val"
    table = comparison.table.set_index("metric")
    assert table.loc["val_macro_f1", "role"] == stats.PRIMARY


def test_a_comparison_imports_scipy_stats_only_when_its_power_is_asked_for(sweep):
    """The sweep's answer compares its arms at its very end and needs no power: importing
    scipy.stats and scipy.optimize for it cost about 1 s there."""
    import subprocess
    import sys

    code = (
        "import sys; from analysis import results\n"
        f"store, sweep = results.open_sweep({sweep.tracking_uri!r}, {sweep.experiment!r}, "
        f"{sweep.parent_run_id!r})\n"
        "comparison = results.compare(store, sweep, factor=None, resamples=200)\n"
        "print('scipy.stats' in sys.modules, 'scipy.optimize' in sys.modules)\n"
        "print(comparison.power.n == comparison.pairing.n, 'scipy.stats' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True", "True"]
