"""Would more search have helped: each arm's anytime curve on planted arrays and runs tables,
checked against a brute-force computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import anytime, plots

NAN = np.nan


def _brute_force(values, epochs, mode):
    """The best so far by ``np.maximum.accumulate`` over the values turned to maximise,
    epochs spent by summing prefixes, and the first trial reaching the final best by a loop."""
    values = np.asarray(values, dtype=float)
    sign = 1.0 if mode == "max" else -1.0
    gains = np.where(np.isfinite(values), sign * values, -np.inf)
    running = np.maximum.accumulate(gains) if len(gains) else gains
    best = np.where(np.isfinite(running), sign * running, np.nan)
    spent = np.array([sum(epochs[: i + 1]) for i in range(len(epochs))], dtype=int)
    k = None
    if len(running) and np.isfinite(running[-1]):
        k = next(i + 1 for i, g in enumerate(gains) if g == running[-1])
    return best, spent, k


# values, epochs, mode, the trial the best came at (planted), and whether that was late.
PLANTED = {
    "max, early-stopped trials": ([0.5, 0.7, 0.6, 0.65], [10, 10, 3, 3], "max", 2, False),
    "min: a loss": ([0.9, 0.4, 0.5, 0.3], [5, 5, 2, 5], "min", 4, True),
    "a diverged and a failed trial": ([0.5, NAN, 0.8, NAN], [5, 2, 5, 0], "max", 3, False),
    "a diverged trial reporting inf": ([0.5, np.inf, 0.6, 0.55], [5, 1, 5, 5], "max", 3, False),
    "min: -inf is no value either": ([0.5, -np.inf, 0.6, 0.55], [5, 1, 5, 5], "min", 1, False),
    "ties: the first to reach it": ([0.7, 0.7, 0.6, 0.7], [4, 4, 4, 4], "max", 1, False),
    "min ties": ([0.3, 0.2, 0.2, 0.4, 0.2], [1, 2, 3, 4, 5], "min", 2, False),
    "best at the last trial": ([0.1, 0.2, 0.3, 0.4], [2, 2, 2, 2], "max", 4, True),
    "the first trial found nothing": ([NAN, 0.4, 0.3], [3, 3, 3], "max", 2, False),
    "one trial": ([0.4], [3], "max", 1, True),
    "24 of 32 has settled": (np.arange(32.0) * (np.arange(32) < 24), [1] * 32, "max", 24, False),
    "25 of 32 came late": (np.arange(32.0) * (np.arange(32) < 25), [1] * 32, "max", 25, True),
}


@pytest.mark.parametrize(("values", "epochs", "mode", "k", "late"), PLANTED.values(), ids=PLANTED)
def test_the_curve_and_the_best_trial_match_the_brute_force(values, epochs, mode, k, late):
    curve = anytime.anytime_curve(np.array(values), np.array(epochs), mode=mode)
    best, spent, brute_k = _brute_force(values, epochs, mode)
    assert curve.best_trial == k == brute_k
    np.testing.assert_array_equal(curve.best_so_far, best)  # NaN where none had a value
    np.testing.assert_array_equal(curve.spent, spent)
    assert curve.n == len(values) and list(curve.trials) == list(range(1, len(values) + 1))
    assert curve.total_epochs == sum(epochs)
    assert curve.epochs_at_best == sum(epochs[:k])
    assert curve.best_value == best[-1]
    assert anytime.came_late(k, curve.n) is late


def test_a_trial_without_a_value_costs_its_epochs_and_keeps_the_best():
    curve = anytime.anytime_curve(np.array([0.5, NAN, 0.4]), np.array([4, 2, 1]), mode="max")
    assert list(curve.best_so_far) == [0.5, 0.5, 0.5]
    assert list(curve.spent) == [4, 6, 7]
    assert (curve.best_trial, curve.epochs_at_best, curve.total_epochs) == (1, 4, 7)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_random_searches_match_the_brute_force(mode):
    rng = np.random.default_rng(3)
    for _ in range(300):
        n = int(rng.integers(0, 12))
        values = rng.integers(0, 5, n) / 4  # coarse, so ties are common
        values[rng.random(n) < 0.2] = NAN
        values[rng.random(n) < 0.05] = np.inf
        epochs = rng.integers(0, 6, n)
        curve = anytime.anytime_curve(values, epochs, mode=mode)
        best, spent, k = _brute_force(values, epochs, mode)
        np.testing.assert_array_equal(curve.best_so_far, best)
        np.testing.assert_array_equal(curve.spent, spent)
        assert curve.best_trial == k


@pytest.mark.parametrize("values", [[], [NAN, NAN]])
def test_an_arm_whose_trials_found_nothing_has_no_best_trial(values):
    curve = anytime.anytime_curve(np.array(values), np.zeros(len(values), int), mode="max")
    assert curve.best_trial is None and curve.epochs_at_best is None
    assert np.isnan(curve.best_value)
    assert anytime.sentence(curve, "val_macro_f1") == (
        f"no trial of its {len(values)} reported val_macro_f1"
    )


@pytest.mark.parametrize(
    ("values", "epochs", "mode"),
    [([0.1], [1], "maximum"), ([0.1, 0.2], [1], "max"), ([0.1], [-1], "max")],
)
def test_bad_arrays_and_modes_are_refused(values, epochs, mode):
    with pytest.raises(ValueError):
        anytime.anytime_curve(np.array(values), np.array(epochs), mode=mode)


def test_the_sentence_names_the_trial_the_epochs_and_the_outlook():
    settled = anytime.anytime_curve(
        np.array([0.5, 0.8, 0.6, 0.7]), np.array([3, 3, 1, 3]), mode="max"
    )
    assert anytime.sentence(settled, "val_macro_f1") == (
        "best val_macro_f1 0.8 came at trial 2 of 4 (6 of 10 epochs): the search had settled"
    )
    late = anytime.anytime_curve(np.array([0.5, 0.4]), np.array([2, 2]), mode="min")
    assert anytime.sentence(late, "val_loss") == (
        "best val_loss 0.4 came at trial 2 of 2 (4 of 4 epochs): more trials might still help"
    )


def test_anytime_curve_takes_the_mode_by_keyword_only():
    with pytest.raises(TypeError):
        anytime.anytime_curve(np.array([0.1]), np.array([1]), "max")  # type: ignore[misc]


@pytest.mark.parametrize(("k", "n"), [(7, 32), (1, 1), (32, 32)])
def test_the_tag_text_round_trips(k, n):
    assert anytime.parse_trial_text(anytime.trial_text(k, n)) == (k, n)


@pytest.mark.parametrize("text", [None, "", "7 of", "seven of 32", "7 of 32 trials"])
def test_other_tag_texts_are_not_read(text):
    assert anytime.parse_trial_text(text) is None


def test_epochs_run_are_the_history_or_the_diverged_epoch():
    history = pd.DataFrame({"val_loss": [1.0, 0.9, NAN]}, index=pd.Index([1, 2, 3], name="epoch"))
    assert anytime.epochs_run(history) == 2  # an epoch with no metric did not run
    assert anytime.epochs_run(history, "5") == 5
    assert anytime.epochs_run(history, NAN) == 2
    assert anytime.epochs_run(pd.DataFrame(), None) == 0


def _numbered(arm: str, number: int | None) -> str:
    return f"loss={arm} search" + (f" #{number}" if number is not None else "") + " · smallcnn"


def test_search_trials_are_ordered_by_trial_number_and_failed_ones_have_no_value(make_runs):
    # Started (start_time) in another order than Optuna numbered them.
    records = [
        ("focal", 2, "FINISHED", 0.9),
        ("focal", 0, "FINISHED", 0.5),
        ("ce", 1, "FINISHED", 0.6),
        ("focal", 1, "FAILED", 0.99),  # diverged: its value must not count
        ("ce", 0, "FINISHED", 0.7),
    ]
    runs = make_runs(
        [
            {
                "run_name": _numbered(arm, number),
                "status": status,
                "tags.role": "search",
                "tags.arm": arm,
                "metrics.best_val_macro_f1": value,
            }
            for arm, number, status, value in records
        ]
        + [{"tags.role": "confirmation", "tags.arm": "ce", "metrics.best_val_macro_f1": 1.0}]
    )
    epochs = {run_id: 3 + i for i, run_id in enumerate(runs["run_id"])}
    table = anytime.search_trials(runs, metric="val_macro_f1", factor="loss", epochs=epochs)
    focal = table[table["arm"] == "focal"]
    assert list(focal["run_id"]) == ["run001", "run003", "run000"]
    assert list(focal["trial"]) == [1, 2, 3]
    np.testing.assert_array_equal(focal["value"], [0.5, NAN, 0.9])
    assert list(focal["epochs"]) == [4, 6, 3]
    curves = anytime.arm_curves(table, mode="max")
    assert list(curves) == ["ce", "focal"]
    assert (curves["focal"].best_trial, curves["focal"].n) == (3, 3)
    assert (curves["ce"].best_trial, curves["ce"].n) == (1, 2)  # the confirmation run is no trial
    assert curves["ce"].epochs_at_best == 7 and curves["ce"].total_epochs == 12


def test_runs_named_before_numbering_are_ordered_by_start_time(make_runs):
    runs = make_runs(
        [
            {"run_name": _numbered("ce", None), "tags.role": "search", "tags.arm": "ce", **m}
            for m in ({"metrics.best_val_loss": 0.5}, {"metrics.best_val_loss": 0.4}, {})
        ]
    )
    table = anytime.search_trials(runs, metric="val_loss", factor="loss", epochs={})
    assert list(table["run_id"]) == ["run000", "run001", "run002"]
    assert list(table["epochs"]) == [0, 0, 0]
    curve = anytime.arm_curves(table, mode="min")["ce"]
    assert (curve.best_trial, curve.n, curve.best_value) == (2, 3, 0.4)


def test_the_progress_table_has_one_row_per_arm():
    curves = {
        "focal": anytime.anytime_curve(np.array([0.5, 0.8, 0.6]), np.array([2, 2, 1]), mode="max"),
        "ce": anytime.anytime_curve(np.array([NAN]), np.array([1]), mode="max"),
    }
    table = anytime.progress_table(curves, "val_macro_f1")
    assert table.to_dict("records") == [
        {
            "arm": "focal",
            "best_val_macro_f1": 0.8,
            "best at trial": "2 of 3",
            "epochs": "4 of 5",
            "outlook": anytime.SETTLED,
        },
        {
            "arm": "ce",
            "best_val_macro_f1": pytest.approx(NAN, nan_ok=True),
            "best at trial": "none of 1",
            "epochs": "",
            "outlook": "",
        },
    ]


def test_the_figure_draws_each_arms_steps_and_a_star_at_its_best():
    curves = {
        "focal": anytime.anytime_curve(np.array([0.5, 0.8, 0.6]), np.array([2, 2, 1]), mode="max"),
        "ce": anytime.anytime_curve(np.array([0.4, 0.7]), np.array([3, 3]), mode="max"),
    }
    ax = plots.anytime_figure(curves, "val_macro_f1").axes[0]
    stars = {
        (float(line.get_xdata()[0]), float(line.get_ydata()[0]))
        for line in ax.lines
        if line.get_marker() == "*"
    }
    assert stars == {(4.0, 0.8), (6.0, 0.7)}
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["focal: best at trial 2 of 3", "ce: best at trial 2 of 2"]
    assert plots.to_png(ax.figure).startswith(b"\x89PNG")
