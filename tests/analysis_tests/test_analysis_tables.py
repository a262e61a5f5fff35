"""Top-k and seed summaries, class ordering, text output and importance on synthetic tables."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from analysis import importance, stats, tables, textout
from analysis.classes import ClassInfo, class_metric_keys, metric_safe
from analysis.errors import AnalysisError


def _search_runs(make_runs, backbones=("resnet18",)):
    records = []
    for backbone in backbones:
        for arm in ("ce", "focal"):
            for i, score in enumerate([0.5, 0.8, 0.6, 0.7]):
                records.append(
                    {
                        "tags.role": "search",
                        "tags.arm": arm,
                        "params.loss": arm,
                        "params.backbone": backbone,
                        "params.lr": str(10.0 ** -(i + 1)),
                        "params.seed": "0",
                        "params.gamma": "2.0" if arm == "focal" else np.nan,
                        "metrics.best_val_macro_f1": score + (0.05 if arm == "focal" else 0),
                        "metrics.best_epoch": 3.0,
                    }
                )
    records.append(
        {
            "status": "FAILED",
            "tags.role": "search",
            "tags.arm": "ce",
            "metrics.best_val_macro_f1": 0.99,
        }
    )
    return make_runs(records)


def test_top_k_ranks_finished_search_runs_per_arm(make_runs):
    runs = _search_runs(make_runs)
    top = tables.top_k(runs, metric="val_macro_f1", mode="max", factor="loss", k=2)
    assert list(top["arm"]) == ["ce", "ce", "focal", "focal"]
    assert list(top["best_val_macro_f1"]) == pytest.approx([0.8, 0.7, 0.85, 0.75])
    assert list(top["rank"]) == [1, 2, 1, 2]
    assert "lr" in top.columns and "gamma" in top.columns
    assert "backbone" not in top.columns  # one backbone: no column
    assert "seed" not in top.columns and "loss" not in top.columns
    assert top["lr"].dtype.kind == "f"  # numeric params print rounded
    lowest = tables.top_k(runs, metric="val_macro_f1", mode="min", factor="loss", k=1)
    assert list(lowest["best_val_macro_f1"]) == pytest.approx([0.5, 0.55])


def test_top_k_ranks_per_backbone_when_several_were_searched(make_runs):
    runs = _search_runs(make_runs, backbones=("resnet18", "vgg16"))
    top = tables.top_k(runs, metric="val_macro_f1", mode="max", factor="loss", k=1)
    assert list(zip(top["arm"], top["backbone"], strict=True)) == [
        ("ce", "resnet18"),
        ("ce", "vgg16"),
        ("focal", "resnet18"),
        ("focal", "vgg16"),
    ]


def test_find_run_by_best_id_or_name(make_runs):
    runs = _search_runs(make_runs)
    best = tables.find_run(runs, "best", metric="val_macro_f1", mode="max")
    assert best["metrics.best_val_macro_f1"] == pytest.approx(0.85)  # not the failed 0.99
    assert tables.find_run(runs, "run002", metric="m", mode="max")["run_id"] == "run002"
    with pytest.raises(AnalysisError, match="no run 'nope'"):
        tables.find_run(runs, "nope", metric="m", mode="max")


def test_require_finished_names_what_there_is(make_runs):
    runs = make_runs([{"status": "RUNNING"}, {"status": "FAILED"}])
    with pytest.raises(AnalysisError, match="no finished runs .*1 RUNNING, 1 FAILED"):
        tables.require_finished(runs, "s")


def test_values_at_epoch_prefers_the_best_epoch():
    history = pd.DataFrame({"val_macro_f1": [0.1, 0.5, 0.3]}, index=[1, 2, 3])
    assert tables.values_at_epoch(history, 2)["val_macro_f1"] == 0.5
    assert tables.values_at_epoch(history, None)["val_macro_f1"] == 0.3
    assert tables.values_at_epoch(history, 9)["val_macro_f1"] == 0.3


def test_confirmation_summary_is_mean_and_sample_std_over_seeds(make_runs):
    scores = {"ce": [0.6, 0.62, 0.64], "focal": [0.7, 0.71, 0.75]}
    records = [
        {
            "tags.role": "confirmation",
            "tags.arm": arm,
            "params.seed": str(seed),
            "metrics.best_val_macro_f1": value,
        }
        for arm, values in scores.items()
        for seed, value in enumerate(values)
    ]
    runs = make_runs(records)
    values = runs.set_index("run_id")[["metrics.best_val_macro_f1"]].rename(
        columns={"metrics.best_val_macro_f1": "val_macro_f1"}
    )
    summary = tables.confirmation_summary(
        runs, values, metric="val_macro_f1", factor="loss", metrics=["val_macro_f1"]
    ).set_index("arm")
    for arm, values_ in scores.items():
        assert summary.loc[arm, "n_seeds"] == 3
        assert summary.loc[arm, "seeds"] == "0,1,2"
        assert summary.loc[arm, "val_macro_f1_mean"] == pytest.approx(np.mean(values_))
        assert summary.loc[arm, "val_macro_f1_std"] == pytest.approx(np.std(values_, ddof=1))


def test_minority_first_and_metric_keys():
    info = ClassInfo.from_json(
        {"classes": ["cat", "ant (rare)", "dog"], "train_counts": [50, 5, 20]}
    )
    assert info.minority_first() == ["ant (rare)", "dog", "cat"]
    assert metric_safe("ant (rare)") == "ant _rare_"
    keys = class_metric_keys(info.names, ["cat", "ant _rare_"])
    assert keys == {"cat": "cat", "ant (rare)": "ant _rare_"}  # dog: no metrics, left out


def test_markdown_and_csv_output():
    frame = pd.DataFrame(
        {"arm": ["ce", "a|b"], "score_mean": [0.81234, 0.5], "score_std": [0.01, np.nan]}
    )
    markdown = textout.to_markdown(frame)
    lines = markdown.splitlines()
    assert lines[0] == "| arm | score |"
    assert lines[1] == "|---|---|"
    assert lines[2] == "| ce | 0.8123 ± 0.01 |"
    assert "a\\|b" in lines[3]
    blocks = [textout.Titled("one", frame), "a note", textout.Titled("two", frame.head(1))]
    stacked = pd.read_csv(io.StringIO(textout.render(blocks, "csv")))
    assert list(stacked["table"]) == ["one", "one", "two"]
    assert stacked["score_mean"].iloc[0] == pytest.approx(0.81234)  # CSV keeps full numbers
    assert "a note" not in textout.render(blocks, "csv")


def test_write_atomic_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "table.csv"
    textout.write_atomic(target, "x\n")
    assert target.read_text() == "x\n"
    with pytest.raises(TypeError):
        textout.write_atomic(target, 42)  # type: ignore[arg-type]
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_distributions_are_inferred_from_logged_strings():
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    lr = importance.infer_distribution(["0.0001", "0.3", "0.01"])
    assert isinstance(lr, FloatDistribution) and lr.log and lr.low == 0.0001 and lr.high == 0.3
    momentum = importance.infer_distribution(["0.0", "0.9"])
    assert isinstance(momentum, FloatDistribution) and not momentum.log
    batch = importance.infer_distribution(["32", "128"])
    assert isinstance(batch, IntDistribution) and (batch.low, batch.high) == (32, 128)
    freeze = importance.infer_distribution(["none", "partial:2"])
    assert isinstance(freeze, CategoricalDistribution)


def _importance_runs(make_runs, n):
    rng = np.random.default_rng(0)
    records = []
    for _ in range(n):
        lr = 10 ** rng.uniform(-4, -1)
        records.append(
            {
                "tags.role": "search",
                "params.lr": str(lr),
                "params.momentum": str(rng.uniform(0, 0.9)),
                "params.freeze": str(rng.choice(["none", "backbone"])),
                "params.seed": "0",
                # Only lr matters: the score peaks at lr = 1e-2.
                "metrics.best_val_macro_f1": 0.9 - 0.2 * abs(np.log10(lr) + 2),
            }
        )
    return make_runs(records)


def test_importance_finds_the_one_param_that_matters(make_runs):
    runs = _importance_runs(make_runs, 30)
    found = importance.param_importance(runs, metric="val_macro_f1", mode="max")
    assert found.reason == ""
    assert found.values.idxmax() == "lr"
    assert found.values.sum() == pytest.approx(1.0)


def test_importance_says_why_when_there_are_too_few_trials(make_runs):
    found = importance.param_importance(
        _importance_runs(make_runs, 3), metric="val_macro_f1", mode="max"
    )
    assert found.values.empty and "only 3 finished search runs" in found.reason


def test_parallel_coordinates_scale_each_axis_to_unit_range(make_runs):
    view = importance.parallel_coordinates(_importance_runs(make_runs, 10), metric="val_macro_f1")
    assert set(view.axes) == {"lr", "momentum", "freeze"}
    assert view.coords.shape == (10, 3)
    assert np.nanmin(view.coords) == pytest.approx(0.0)
    assert np.nanmax(view.coords) == pytest.approx(1.0)


def test_diverged_confirmation_seeds_are_named_per_arm_not_dropped_silently():
    runs = pd.DataFrame(
        {
            "tags.role": ["confirmation"] * 5 + ["search"],
            "tags.arm": ["triplet-svm", "triplet-svm", "triplet-svm", "ce", "ce", "triplet-svm"],
            "tags.outcome": ["diverged", "completed", "diverged", "completed"] * 1
            + ["completed", "diverged"],
            "status": ["FAILED", "FINISHED", "FAILED", "FINISHED", "FINISHED", "FAILED"],
        }
    )
    assert tables.diverged_seeds(runs) == [
        "triplet-svm: 2 of 3 confirmation seeds diverged (training loss not finite); "
        "they are not among the pairs"
    ]
    assert tables.diverged_seeds(runs[runs["tags.outcome"] != "diverged"]) == []


# How a comparison reads.
def _pairing(n: int = 5) -> stats.Pairing:
    pairs = pd.DataFrame({"split_seed": ["0"] * n, "seed": [str(i) for i in range(n)]})
    return stats.Pairing("freeze", "backbone", "none", "rule", ("seed",), pairs)


def _row(verdict: str, difference: float, low: float, high: float, metric="test_macro_f1"):
    return pd.Series(
        {
            "metric": metric,
            "n": 5,
            "difference": difference,
            "t_low": low,
            "t_high": high,
            "ci_low": low + 0.01,
            "ci_high": high - 0.01,
            "p_value": 0.004,
            "verdict": verdict,
        }
    )


def test_differences_and_intervals_share_one_format():
    assert textout.signed(0.082, "test_macro_f1") == "+8.2"
    assert textout.signed(-0.0039, "val_recall.cat") == "-0.4"
    assert textout.difference_text(0.082, "test_macro_f1") == "+8.2 points"
    assert textout.interval_text(0.05, 0.11, "test_macro_f1") == "[+5.0, +11.0]"
    # Losses stay in their units.
    assert textout.difference_text(-0.0123, "test_loss") == "-0.012"
    assert textout.interval_text(-0.02, 0.001905, "test_loss") == "[-0.020, +0.002]"
    assert textout.pvalue_text(0.0004) == "<0.001" and textout.pvalue_text(0.0312) == "0.031"
    assert textout.metric_words("test_recall.ant _rare_", "ant (rare)") == (
        "test recall of ant (rare)"
    )


def test_the_verdict_names_the_winning_level():
    row = _row("freeze=none better", 0.082, 0.05, 0.11)
    sentence = textout.headline_sentence(row, _pairing())
    assert sentence.startswith("freeze=none better on test macro F1: +8.2 points [+5.0, +11.0]")
    assert "bootstrap [+6.0, +10.0]" in sentence and "n = 5 pairs" in sentence


def test_an_interval_covering_zero_reads_no_clear_difference():
    row = _row(stats.NO_CLEAR_DIFFERENCE, 0.01, -0.02, 0.04)
    assert textout.headline_sentence(row, _pairing()) == (
        "no clear difference between freeze=none and freeze=backbone on test macro F1: "
        "+1.0 points [-2.0, +4.0] (the interval covers 0)"
    )


def test_power_in_plain_words():
    found = stats.power_summary(np.array([0.02, 0.03, 0.025, 0.035, 0.015]))
    text = textout.power_sentence(found, "test_macro_f1")
    smallest = found.detectable * 100
    assert f"a true difference of {smallest:.1f} points or more" in text
    assert f"about {found.pairs_for_reference} pairs would detect a difference of 1 point" in text
    assert "too few" not in text
    one = textout.power_sentence(stats.power_summary(np.array([0.1])), "test_macro_f1")
    assert one == "Power: 1 pair(s) are too few to see anything; add seeds."
    wild = stats.power_summary(np.array([0.6, -0.5, 0.4, -0.6]))
    text = textout.power_sentence(wild, "test_macro_f1")
    assert "4 pairs are too few to see anything on this metric" in text
    assert "no feasible number of pairs" in text
