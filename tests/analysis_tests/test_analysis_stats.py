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
    assert row["verdict"] == "loss=focal better"
    _, flipped = _compare(runs, levels=("focal", "ce"))
    assert flipped["difference"] == pytest.approx(-diffs.mean())
    assert flipped["ci_high"] < 0
    assert flipped["verdict"] == "loss=focal better"  # still focal: now it is the baseline


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
    # On test, with the sweep's own metric (a loss) first: the primary comparison.
    assert stats.comparison_metrics(["rare"], split="test", primary="val_loss") == [
        "test_loss",
        "test_macro_f1",
        "test_balanced_accuracy",
        "test_accuracy",
        "test_recall.rare",
        "test_f1.rare",
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


# Paired t-test, Holm, power: against scipy and hand-checked references.
@pytest.mark.parametrize("n", [2, 3, 7, 30])
def test_paired_t_pvalue_matches_scipy_ttest_rel(n):
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(n)
    before = rng.uniform(0.5, 0.8, n)
    after = before + rng.normal(0.02, 0.03, n)
    expected = scipy_stats.ttest_rel(after, before).pvalue
    assert stats.paired_t_pvalue(after - before) == pytest.approx(expected, rel=1e-10)


def test_paired_t_pvalue_of_identical_differences_is_plain():
    # scipy answers NaN where every pair differs by the same amount.
    assert stats.paired_t_pvalue(np.zeros(4)) == 1.0
    assert stats.paired_t_pvalue(np.full(4, 0.25)) == 0.0
    assert np.isnan(stats.paired_t_pvalue(np.array([0.1])))


def test_holm_matches_hand_computed_references():
    # Sorted: 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06).
    adjusted = stats.holm_adjust([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    # Capped at 1; NaN (a row with too few pairs) is not counted among the m tests.
    adjusted = stats.holm_adjust([0.2, np.nan, 0.6, 0.01])
    np.testing.assert_allclose(adjusted, [0.4, np.nan, 0.6, 0.03])
    # Holm (1979)'s rule as a textbook states it: reject H_(1..k-1) while p_(k) < a/(m-k+1).
    p = np.array([0.001, 0.011, 0.012, 0.03, 0.2])
    rejected = stats.holm_adjust(p) < 0.05
    assert list(rejected) == [True, True, True, False, False]  # 0.012 < .05/3, 0.03 > .05/2
    assert stats.holm_adjust([]).size == 0


def _power_by_scipy(difference, sd, n):
    """Power of the two-sided paired t-test, written out from scipy's distributions."""
    from scipy import stats as scipy_stats

    critical = scipy_stats.t.ppf(0.975, n - 1)
    shift = difference / (sd / np.sqrt(n))
    return (
        1
        - scipy_stats.nct.cdf(critical, n - 1, shift)
        + scipy_stats.nct.cdf(-critical, n - 1, shift)
    )


@pytest.mark.parametrize(("n", "sd"), [(3, 0.02), (5, 0.01), (12, 0.05), (40, 0.03)])
def test_detectable_difference_has_80_percent_power_by_scipy(n, sd):
    from scipy import stats as scipy_stats

    smallest = stats.detectable_difference(sd, n)
    assert _power_by_scipy(smallest, sd, n) == pytest.approx(0.8, abs=1e-6)
    # Normal approximation with t quantiles: close, and exact enough for large n.
    t_quantiles = scipy_stats.t.ppf(0.975, n - 1) + scipy_stats.t.ppf(0.8, n - 1)
    assert smallest == pytest.approx(t_quantiles * sd / np.sqrt(n), rel=0.08)


@pytest.mark.parametrize(("effect_size", "expected"), [(0.5, 34), (0.8, 15), (0.2, 199)])
def test_pairs_needed_matches_published_sample_sizes(effect_size, expected):
    """Paired t-test, two-sided 5%, 80% power: the sample sizes G*Power and Cohen's tables
    give for d = 0.2, 0.5 and 0.8."""
    n = stats.pairs_needed(effect_size * 0.04, 0.04)
    assert n == expected
    assert _power_by_scipy(effect_size * 0.04, 0.04, n) >= 0.8
    assert _power_by_scipy(effect_size * 0.04, 0.04, n - 1) < 0.8


def test_power_summary_says_what_is_unknown():
    assert np.isnan(stats.power_summary(np.array([0.1])).detectable)
    assert stats.power_summary(np.full(4, 0.02)).pairs_for_reference is None  # SD 0
    huge = stats.power_summary(np.array([0.5, -0.5, 0.45, -0.4]))
    assert huge.sd == pytest.approx(np.std([0.5, -0.5, 0.45, -0.4], ddof=1))
    # 1 point under an SD of 54 points: about (2.8 * 54)^2 = 23,000 pairs, out of reach.
    assert huge.pairs_for_reference is None
    assert huge.detectable > 1.0


def test_variance_sources_match_a_hand_computed_anova():
    rng = np.random.default_rng(4)
    split_effect = {"a": 0.04, "b": -0.03, "c": 0.01}
    groups = [g for g in split_effect for _ in range(4)]
    diffs = np.array([split_effect[g] for g in groups]) + rng.normal(0, 0.005, 12)
    found = stats.variance_sources(diffs, groups)
    by_split = pd.Series(diffs).groupby(groups)
    within = by_split.var(ddof=1).mean()  # balanced: the pooled variance
    between = by_split.mean().var(ddof=1) - within / 4
    assert (found.splits, found.seeds) == (3, 4)
    assert found.within_split_sd == pytest.approx(np.sqrt(within))
    assert found.between_splits_sd == pytest.approx(np.sqrt(between))
    assert found.between_splits_sd > 5 * found.within_split_sd
    assert np.isnan(stats.variance_sources(diffs, ["a"] * 12).between_splits_sd)


def test_confirmation_runs_pair_by_split_and_seed(make_runs):
    """--confirm-splits: the same seed on two splits gives two pairs, never crossed."""
    records = []
    for split in ("11", "12"):
        for seed in ("100", "101"):
            for arm, gain in (("ce", 0.0), ("focal", 0.1 if split == "11" else 0.3)):
                records.append(
                    {
                        "tags.role": "confirmation",
                        "tags.arm": arm,
                        "params.loss": arm,
                        "params.seed": seed,
                        "tags.split_seed": split,  # as a tag only: still paired by it
                        "params.dataset": "digits",
                        "metrics.val_macro_f1": 0.5 + gain + 0.01 * int(seed),
                    }
                )
    runs = make_runs(records)
    pairing = stats.pair_runs(runs, factor="loss", sweep_factor="loss")
    assert (pairing.n, pairing.splits, pairing.seeds) == (4, 2, 2)
    assert set(pairing.pairs["split_seed"]) == {"11", "12"}
    table = stats.paired_comparison(_values(runs), pairing, ["val_macro_f1"])
    assert table.iloc[0]["difference"] == pytest.approx(0.2)  # (0.1 + 0.1 + 0.3 + 0.3) / 4
    by_id = runs.set_index("run_id")
    for pair in pairing.pairs.itertuples():
        base, other = by_id.loc[pair.baseline_run_id], by_id.loc[pair.other_run_id]
        assert base["tags.split_seed"] == other["tags.split_seed"] == pair.split_seed
        assert base["params.seed"] == other["params.seed"] == pair.seed


# Simulated comparisons where the truth is known.
CLASS_ROWS = 10  # as the digits: 3 headline rows + 2 per class = 23 rows per comparison


def _simulation_pairing(make_runs, n_pairs):
    """n pairs of confirmation runs; their metric values come from each simulation."""
    records = [
        {
            "tags.role": "confirmation",
            "tags.arm": arm,
            "params.loss": arm,
            "params.seed": str(seed),
            "params.split_seed": "0",
        }
        for seed in range(n_pairs)
        for arm in ("ce", "focal")
    ]
    runs = make_runs(records)
    return runs, stats.pair_runs(runs, factor="loss", sweep_factor="loss")


def _simulated_values(rng, runs, pairing, effects):
    """Per metric, ce values around 0.7 and focal = ce + effect + noise. The rarer a class
    (higher index), the noisier its recall and F1, as with few test images."""
    metrics = stats.comparison_metrics([f"c{i}" for i in range(CLASS_ROWS)], split="test")
    noise_sd = np.array([0.01 if "." not in m else 0.01 + 0.005 * int(m[-1]) for m in metrics])
    shift = np.array([effects.get(m, 0.0) for m in metrics])
    base = rng.normal(0.7, 0.05, (pairing.n, len(metrics)))
    other = base + shift + rng.normal(0, 1, base.shape) * noise_sd
    ids = [*pairing.pairs["baseline_run_id"], *pairing.pairs["other_run_id"]]
    return pd.DataFrame(np.vstack([base, other]), index=ids, columns=metrics), metrics


def test_no_effect_says_no_clear_difference_in_at_least_90_percent_of_200_comparisons(
    make_runs,
):
    runs, pairing = _simulation_pairing(make_runs, 5)
    rng = np.random.default_rng(2024)
    headline_quiet, secondary_quiet, uncorrected_quiet = 0, 0, 0
    for _ in range(200):
        values, metrics = _simulated_values(rng, runs, pairing, {})
        table = stats.paired_comparison(values, pairing, metrics, resamples=500)
        secondary = table[table["role"] == stats.SECONDARY]
        headline_quiet += table.iloc[0]["verdict"] == stats.NO_CLEAR_DIFFERENCE
        secondary_quiet += not stats.is_clear(secondary["verdict"]).any()
        uncorrected_quiet += not (secondary["p_value"] < 0.05).any()
    fractions = {
        "primary: no clear difference": headline_quiet / 200,
        "secondary (Holm): no row called": secondary_quiet / 200,
        "secondary (uncorrected p < .05): no row called": uncorrected_quiet / 200,
    }
    print(f"\nno effect, 200 simulated comparisons of 5 pairs x 23 rows: {fractions}")
    assert fractions["primary: no clear difference"] >= 0.9, fractions
    assert fractions["secondary (Holm): no row called"] >= 0.9, fractions
    # What the correction is for: without it, 22 rows at 5% call some winner most times.
    assert fractions["secondary (uncorrected p < .05): no row called"] < 0.6, fractions


@pytest.mark.parametrize(("effect", "winner"), [(0.2, "loss=focal"), (-0.2, "loss=ce")])
def test_a_planted_effect_on_one_rare_class_is_found_after_holm(make_runs, effect, winner):
    """In 40 seeded comparisons of 10 pairs, the noisiest class's recall shifted by 20
    points (power even at alpha / 22: above 0.9999 by the noncentral t): found with the
    right sign after Holm every time, while the 21 other secondary
    rows (no effect) seldom call a winner (Holm: at most 5% expected; the 200-comparison
    test above measures that rate more closely)."""
    runs, pairing = _simulation_pairing(make_runs, 10)
    rare = f"test_recall.c{CLASS_ROWS - 1}"  # the noisiest class: SD 0.055 around the effect
    assert stats.paired_t_power(effect, 0.055, 10, alpha=0.05 / 22) > 0.9999
    found, false_alarms = 0, 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        values, metrics = _simulated_values(rng, runs, pairing, {rare: effect})
        table = stats.paired_comparison(values, pairing, metrics, resamples=500)
        table = table.set_index("metric")
        row = table.loc[rare]
        found += row["verdict"] == f"{winner} better" and np.sign(row["difference"]) == np.sign(
            effect
        )
        false_alarms += stats.is_clear(table.drop(index=rare)["verdict"]).any()
        secondary = table[table["role"] == stats.SECONDARY]
        if row["p_value"] == secondary["p_value"].min():
            # Holm's adjustment of the smallest of 22 p-values is 22 times it.
            assert row["p_holm"] == pytest.approx(min(1.0, len(secondary) * row["p_value"]))
    print(f"\nrare-class effect {effect:+}: found {found}/40, false alarms {false_alarms}/40")
    assert found == 40
    assert false_alarms <= 6


def test_a_secondary_row_clear_alone_is_not_clear_after_holm(make_runs):
    runs, pairing = _simulation_pairing(make_runs, 6)
    values, metrics = _simulated_values(np.random.default_rng(3), runs, pairing, {})
    row = "test_f1.c0"
    # Differences with p about 0.01: clear at 5% alone, not after 22 tests.
    diffs = np.array([0.011, 0.004, 0.009, 0.002, 0.012, 0.006])
    other_ids = pairing.pairs["other_run_id"]
    values.loc[other_ids, row] = (
        values.loc[pairing.pairs["baseline_run_id"], row].to_numpy() + diffs
    )
    table = stats.paired_comparison(values, pairing, metrics).set_index("metric")
    assert 0.001 < table.loc[row, "p_value"] < 0.05 and table.loc[row, "t_low"] > 0
    assert table.loc[row, "p_holm"] >= 0.05
    assert table.loc[row, "verdict"] == stats.NOT_CLEAR_AFTER_HOLM


def test_a_loss_is_better_lower(make_runs):
    runs = _confirmation_sweep(make_runs, [-0.1, -0.12, -0.11])
    runs = runs.rename(columns={"metrics.val_macro_f1": "metrics.val_loss"})
    pairing = stats.pair_runs(runs, factor="loss", sweep_factor="loss")
    values = runs.set_index("run_id")[["metrics.val_loss"]].rename(columns=lambda c: c[8:])
    table = stats.paired_comparison(values, pairing, ["val_loss"])
    assert table.iloc[0]["verdict"] == "loss=focal better"  # focal's loss is lower


def test_the_paired_intervals_and_p_value_leave_scipy_stats_unimported():
    """The sweep's answer runs them at its end: importing scipy.stats would add 0.6 s."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np; from analysis import stats; d = np.array([0.1, 0.3, 0.2]); "
        "stats.t_interval(d); stats.paired_t_pvalue(d); print('scipy.stats' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
