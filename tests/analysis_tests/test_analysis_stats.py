"""Pairing and bootstrap statistics on synthetic runs tables where the answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import stats
from analysis.errors import AnalysisError


def _confirmation_sweep(make_runs, diffs, *, base=0.6, seeds=None):
    """ce and focal confirmation runs per seed; focal = ce + diffs[seed]. The arms' tuned
    configs differ (lr, gamma), as they do in a real sweep."""
    seeds = seeds if seeds is not None else range(len(diffs))
    records = []
    for seed, diff in zip(seeds, diffs, strict=True):
        ce = base + 0.01 * seed
        for arm, lr, value in (("ce", "0.01", ce), ("focal", "0.03", ce + diff)):
            records.append(
                {
                    "tags.role": "confirmation",
                    "tags.arm": arm,
                    "params.loss": arm,
                    "params.lr": lr,
                    "params.gamma": "2.0" if arm == "focal" else np.nan,
                    "params.seed": str(seed),
                    "params.split_seed": "0",
                    "params.dataset": "digits",
                    "metrics.val_macro_f1": value,
                }
            )
    # Search runs with other configs: never paired by the confirmation rule.
    records += [
        {
            "tags.role": "search",
            "tags.arm": a,
            "params.loss": a,
            "params.lr": lr,
            "params.seed": "0",
            "params.split_seed": "0",
            "params.dataset": "digits",
            "metrics.val_macro_f1": 0.9,
        }
        for a, lr in (("ce", "0.1"), ("focal", "0.2"))
    ]
    return make_runs(records)


def _values(runs: pd.DataFrame) -> pd.DataFrame:
    return runs.set_index("run_id")[["metrics.val_macro_f1"]].rename(
        columns={"metrics.val_macro_f1": "val_macro_f1"}
    )


def _compare(runs, levels=("ce", "focal")):
    pairing = stats.pair_runs(runs, factor="loss", levels=levels, sweep_factor="loss")
    table = stats.paired_comparison(_values(runs), pairing, ["val_macro_f1"])
    return pairing, table.iloc[0]


def test_no_effect_gives_an_interval_covering_zero(make_runs):
    noise = np.random.default_rng(0).normal(0, 0.02, 20)
    runs = _confirmation_sweep(make_runs, noise - noise.mean())  # true mean difference 0
    pairing, row = _compare(runs)
    assert pairing.n == 20
    assert row["difference"] == pytest.approx(0.0, abs=1e-12)
    assert row["ci_low"] < 0 < row["ci_high"]
    assert row["verdict"] == stats.NO_CLEAR_DIFFERENCE


def test_planted_effect_is_found_with_the_right_sign(make_runs):
    diffs = 0.1 + np.random.default_rng(1).normal(0, 0.01, 5)
    runs = _confirmation_sweep(make_runs, diffs)
    _, row = _compare(runs)
    assert row["difference"] == pytest.approx(diffs.mean())
    assert 0 < row["ci_low"] < row["difference"] < row["ci_high"]
    assert row["verdict"] == "focal better"
    _, flipped = _compare(runs, levels=("focal", "ce"))
    assert flipped["difference"] == pytest.approx(-diffs.mean())
    assert flipped["ci_high"] < 0
    assert flipped["verdict"] == "focal better"  # still focal: now it is the baseline


def test_confirmation_runs_pair_by_seed_only(make_runs):
    runs = _confirmation_sweep(make_runs, [0.1, 0.2, 0.3])
    pairing = stats.pair_runs(runs, factor="loss", sweep_factor="loss")
    assert (pairing.baseline, pairing.other) == ("ce", "focal")  # default: sorted levels
    assert pairing.rule.startswith("confirmation runs paired by seed")
    by_id = runs.set_index("run_id")
    for pair in pairing.pairs.itertuples():
        base, other = by_id.loc[pair.baseline_run_id], by_id.loc[pair.other_run_id]
        assert base["tags.role"] == other["tags.role"] == "confirmation"
        assert base["params.seed"] == other["params.seed"]
        assert (base["params.loss"], other["params.loss"]) == ("ce", "focal")


def test_bootstrap_is_seeded_and_degenerate_cases_are_honest():
    diffs = np.array([0.1, -0.05, 0.02, 0.07])
    assert stats.bootstrap_ci(diffs, seed=3) == stats.bootstrap_ci(diffs, seed=3)
    low, high = stats.bootstrap_ci(diffs)
    assert diffs.min() <= low <= diffs.mean() <= high <= diffs.max()
    assert np.isnan(stats.bootstrap_ci(np.array([0.2]))[0])
    assert stats.verdict(np.nan, np.nan, "ce", "focal", 1) == "too few pairs (n=1)"
    assert stats.bootstrap_ci(np.full(3, 0.1)) == pytest.approx((0.1, 0.1))


def _optimizer_runs(make_runs):
    """sgd/adam runs; momentum exists only for sgd (conditional); role and arm differ."""

    def run(opt, lr, seed, role="search", status="FINISHED"):
        return {
            "status": status,
            "tags.role": role,
            "params.optimizer": opt,
            "params.arm": opt,  # bookkeeping: differs in every pair, ignored
            "params.role": role,
            "params.lr": lr,
            "params.seed": str(seed),
            "params.momentum": "0.9" if opt == "sgd" else "None",
            "metrics.val_macro_f1": 0.5,
        }

    return make_runs(
        [
            run("sgd", "0.01", 0),  # run000 pairs with run001
            run("adam", "0.01", 0, role="confirmation"),  # run001
            run("sgd", "0.1", 1),  # run002 pairs with run003
            run("adam", "0.1", 1),  # run003
            run("adam", "0.3", 0),  # run004: no sgd run with lr 0.3
            run("sgd", "0.01", 5),  # run005: no adam run with seed 5
            run("adam", "0.01", 5, status="FAILED"),  # run006: failed, never paired
        ]
    )


def test_generic_rule_pairs_only_runs_that_differ_in_the_factor(make_runs):
    runs = _optimizer_runs(make_runs)
    pairing = stats.pair_runs(runs, factor="optimizer", levels=["sgd", "adam"], sweep_factor="loss")
    pairs = set(zip(pairing.pairs["baseline_run_id"], pairing.pairs["other_run_id"], strict=True))
    assert pairs == {("run000", "run001"), ("run002", "run003")}
    assert "momentum" not in pairing.keys  # conditional: absent for every adam run
    assert "role" not in pairing.keys and "arm" not in pairing.keys
    assert {"lr", "seed"} <= set(pairing.keys)


def test_repeated_runs_of_one_key_pair_in_start_order(make_runs):
    row = {"params.optimizer": "sgd", "params.lr": "0.1"}
    runs = make_runs(
        [row, {**row, "params.optimizer": "adam"}, row, {**row, "params.optimizer": "adam"}, row]
    )
    pairing = stats.pair_runs(runs, factor="optimizer", levels=["sgd", "adam"])
    assert list(pairing.pairs["baseline_run_id"]) == ["run000", "run002"]
    assert list(pairing.pairs["other_run_id"]) == ["run001", "run003"]


def test_refuses_when_no_runs_differ_only_in_the_factor(make_runs):
    runs = make_runs(
        [
            {"params.optimizer": "sgd", "params.lr": "0.01"},
            {"params.optimizer": "adam", "params.lr": "0.02"},
        ]
    )
    with pytest.raises(AnalysisError, match=r"no paired runs for factor 'optimizer' .*lr"):
        stats.pair_runs(runs, factor="optimizer")


def test_falls_back_to_the_generic_rule_without_confirmation_runs_of_both_levels(make_runs):
    runs = _confirmation_sweep(make_runs, [0.1, 0.2])
    runs = runs[~((runs["tags.role"] == "confirmation") & (runs["params.loss"] == "ce"))]
    with pytest.raises(AnalysisError, match="runs differ in more than the factor"):
        stats.pair_runs(runs, factor="loss", sweep_factor="loss")


@pytest.mark.parametrize(
    ("factor", "levels", "message"),
    [
        ("colour", None, "unknown factor 'colour'"),
        ("optimizer", ["sgd", "rmsprop"], "no finished run has optimizer=rmsprop"),
        ("optimizer", ["sgd", "sgd"], "give exactly two levels"),
        ("lr", None, "has 3 levels"),
    ],
)
def test_bad_factor_or_levels_are_one_line_errors(make_runs, factor, levels, message):
    runs = _optimizer_runs(make_runs)
    with pytest.raises(AnalysisError, match=message) as caught:
        stats.pair_runs(runs, factor=factor, levels=levels)
    assert "\n" not in str(caught.value)


def test_a_pair_missing_a_metric_is_left_out_of_that_metric_only(make_runs):
    runs = _confirmation_sweep(make_runs, [0.1, 0.1, 0.1])
    values = _values(runs).assign(val_recall=0.5)
    values.loc[values.index[0], "val_recall"] = np.nan
    pairing = stats.pair_runs(runs, factor="loss", sweep_factor="loss")
    table = stats.paired_comparison(values, pairing, ["val_macro_f1", "val_recall"])
    assert list(table["n"]) == [3, 2]


def test_comparison_metrics_put_headline_metrics_first_then_classes_in_order():
    assert stats.comparison_metrics(["rare", "common"]) == [
        "val_macro_f1",
        "val_balanced_accuracy",
        "val_accuracy",
        "val_recall.rare",
        "val_f1.rare",
        "val_recall.common",
        "val_f1.common",
    ]


def test_t_interval_matches_scipy_and_is_wider_than_the_bootstrap_with_few_pairs():
    from scipy import stats as scipy_stats

    diffs = np.array([0.05, 0.01, 0.03])
    low, high = stats.t_interval(diffs)
    ref = scipy_stats.ttest_1samp(diffs, 0).confidence_interval(0.95)
    assert (low, high) == pytest.approx((ref.low, ref.high))
    boot_low, boot_high = stats.bootstrap_ci(diffs)
    assert low < boot_low and high > boot_high


def test_few_pairs_need_both_intervals_to_call_a_winner(make_runs):
    # Three pairs that all favour focal: the bootstrap interval excludes 0, the t one not.
    runs = _confirmation_sweep(make_runs, [0.002, 0.001, 0.06])
    _, row = _compare(runs)
    assert row["ci_low"] > 0 and row["t_low"] < 0
    assert row["verdict"] == stats.NO_CLEAR_DIFFERENCE


def test_the_sweeps_factor_is_read_from_the_arm_when_arms_set_several_params(make_runs):
    records = []
    for seed in range(3):
        for arm, optimizer, batch, value in (
            ("sgd-b1", "sgd", "1", 0.5),
            ("adam", "adam", "32", 0.7 + 0.01 * seed),
        ):
            records.append(
                {
                    "tags.role": "confirmation",
                    "tags.arm": arm,
                    "params.arm": arm,
                    "params.optimizer": optimizer,
                    "params.batch_size": batch,
                    "params.seed": str(seed),
                    "params.split_seed": "0",
                    "params.dataset": "digits",
                    "metrics.val_macro_f1": value,
                }
            )
    runs = make_runs(records)
    pairing = stats.pair_runs(
        runs, factor="optimizer", levels=("sgd-b1", "adam"), sweep_factor="optimizer"
    )
    assert pairing.n == 3
    table = stats.paired_comparison(_values(runs), pairing, ["val_macro_f1"])
    assert table.iloc[0]["difference"] == pytest.approx(0.21)
