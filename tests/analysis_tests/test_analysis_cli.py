"""The commands end to end on a sweep in a temporary MLflow store (conftest.make_fake_sweep),
checked against numbers read independently from the store or planted by the fixture."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_recall_fscore_support

from analysis.cli import main
from analysis.report import section_titles

REPO = Path(__file__).resolve().parents[2]


def _run(capsys, sweep, *args: str) -> tuple[int, str, str]:
    code = main([*args[:1], "--tracking-uri", sweep.tracking_uri, *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory, so default output paths land (or not) where we look."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _client(sweep):
    from mlflow.tracking import MlflowClient

    return MlflowClient(sweep.tracking_uri)


def _value_at_best_epoch(client, run_id: str, key: str) -> float:
    best = int(client.get_run(run_id).data.metrics["best_epoch"])
    return next(m.value for m in client.get_metric_history(run_id, key) if m.step == best)


def test_best_table_matches_the_store(sweep, workdir, capsys):
    code, out, err = _run(
        capsys,
        sweep,
        "best",
        "--experiment",
        sweep.experiment,
        "--format",
        "csv",
        "--output",
        "best.csv",
        "--split",
        "val",
    )
    assert (code, err) == (0, "")
    table = pd.read_csv(workdir / "best.csv")
    top = table[table["table"].str.startswith("top")]
    client = _client(sweep)
    for arm, rows in top.groupby("arm"):
        assert rows["best_val_macro_f1"].is_monotonic_decreasing
        assert list(rows["rank"]) == list(range(1, len(rows) + 1))
        for row in rows.itertuples():
            run = client.get_run(row.run_id)
            assert run.info.status == "FINISHED" and run.data.tags["arm"] == arm
            assert run.data.tags["role"] == "search"
            assert row.val_accuracy == pytest.approx(
                _value_at_best_epoch(client, row.run_id, "val_accuracy")
            )
    confirm = table[table["table"].str.startswith("confirmation")].set_index("arm")
    parent = sweep.parent_run_id
    for arm in ("ce", "focal"):
        runs = client.search_runs(
            [client.get_experiment_by_name(sweep.experiment).experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent}' and tags.role = 'confirmation' "
            f"and tags.arm = '{arm}'",
        )
        values = [_value_at_best_epoch(client, r.info.run_id, "val_macro_f1") for r in runs]
        assert confirm.loc[arm, "n_seeds"] == len(values)
        assert confirm.loc[arm, "val_macro_f1_mean"] == pytest.approx(np.mean(values))
        assert confirm.loc[arm, "val_macro_f1_std"] == pytest.approx(np.std(values, ddof=1))


def test_best_prints_readable_tables(sweep, workdir, capsys):
    code, out, _ = _run(
        capsys,
        sweep,
        "best",
        "--experiment",
        sweep.experiment,
        "--top-k",
        "1",
        "--parent-run",
        sweep.parent_run_id,
    )
    assert code == 0
    assert "top 1 search runs per arm" in out and "±" in out
    assert sweep.parent_run_id in out
    assert list(workdir.iterdir()) == []  # printing writes nothing
    code, out, _ = _run(
        capsys, sweep, "best", "--experiment", sweep.experiment, "--format", "markdown"
    )
    assert code == 0 and "| arm |" in out and "### confirmation runs" in out


def test_best_says_at_which_trial_each_arms_search_found_its_best(sweep, workdir, capsys):
    code, out, err = _run(
        capsys, sweep, "best", "--experiment", sweep.experiment, "--format", "csv"
    )
    assert (code, err) == (0, "")
    table = pd.read_csv(io.StringIO(out))
    progress = table[table["table"].str.startswith("search progress")].set_index("arm")
    client = _client(sweep)
    experiment_id = client.get_experiment_by_name(sweep.experiment).experiment_id
    for arm in ("ce", "focal"):
        runs = client.search_runs(
            [experiment_id],
            f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}' and tags.role = 'search' "
            f"and tags.arm = '{arm}'",
            order_by=["attributes.start_time ASC"],
        )
        scores = [
            r.data.metrics["best_val_macro_f1"] if r.info.status == "FINISHED" else -np.inf
            for r in runs
        ]
        k = int(np.argmax(scores)) + 1
        assert progress.loc[arm, "best at trial"] == f"{k} of {len(runs)}"
        assert progress.loc[arm, "best_val_macro_f1"] == pytest.approx(max(scores))


def test_confusion_files_and_numbers_match_sklearn(sweep, workdir, capsys):
    code, out, err = _run(
        capsys, sweep, "confusion", "--experiment", sweep.experiment, "--run", "best"
    )
    assert (code, err) == (0, "")
    (out_dir,) = (workdir / "analysis-out").iterdir()
    run_id = re.search(r"\(([0-9a-f]{32})\)", out).group(1)
    chosen = _client(sweep).get_run(run_id)
    assert out_dir.name == chosen.info.run_name
    # "best": no finished run of the sweep scores higher (ties may go either way).
    best = _client(sweep).get_run(sweep.best_run_id).data.metrics["best_val_macro_f1"]
    assert chosen.data.metrics["best_val_macro_f1"] == pytest.approx(best)
    # The best run is a confirmation run: it was scored on test too.
    assert chosen.data.tags["role"] == "confirmation"
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [
            f"{s}_confusion{k}.{e}"
            for s in ("train", "val", "test")
            for k, e in (("", "csv"), ("_normalized", "csv"), ("", "png"))
        ]
        + ["per_class.csv"]
    )
    per_class = pd.read_csv(out_dir / "per_class.csv")
    for split in ("train", "val", "test"):
        counts = pd.read_csv(out_dir / f"{split}_confusion.csv", index_col=0, dtype=str)
        assert list(counts.index) == list(sweep.classes)
        counts = counts.astype(int)
        # Expand the counts back into label arrays and let scikit-learn score them.
        matrix = counts.to_numpy()
        n = len(sweep.classes)
        y_true = np.repeat(np.repeat(np.arange(n), n), matrix.ravel())
        y_pred = np.repeat(np.tile(np.arange(n), n), matrix.ravel())
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=range(n), zero_division=0
        )
        ours = per_class[per_class["split"] == split]
        np.testing.assert_allclose(ours["precision"], precision)
        np.testing.assert_allclose(ours["recall"], recall)
        np.testing.assert_allclose(ours["f1"], f1)
        np.testing.assert_array_equal(ours["support"], support)
        normalised = pd.read_csv(out_dir / f"{split}_confusion_normalized.csv", index_col=0)
        np.testing.assert_allclose(normalised.sum(axis=1), 1.0)
        best, worst = sweep.classes[f1.argmax()], sweep.classes[f1.argmin()]
        assert f"{split}: best class {best}, worst class {worst}" in out
    assert (out_dir / "val_confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("split", [None, "test", "val"])
def test_compare_finds_the_planted_effects(sweep, workdir, capsys, split):
    if not sweep.planted:
        pytest.skip("a real sweep has no planted effects")
    code, out, err = _run(
        capsys,
        sweep,
        "compare",
        "--experiment",
        sweep.experiment,
        "--factor",
        "loss",
        "--levels",
        "ce,focal",
        "--format",
        "csv",
        *(["--split", split] if split else []),
    )
    assert (code, err) == (0, "")
    shown = split or "test"  # the sweep's confirmation runs were scored on test
    table = pd.read_csv(io.StringIO(out), keep_default_na=False).set_index("metric")
    assert set(table["n"]) == {3} and set(table["split"]) == {shown}
    planted = {m: v for m, v in sweep.planted.items() if m.startswith(f"{shown}_")}
    assert len(planted) == 5
    for metric, expected in planted.items():
        assert float(table.loc[metric, "difference"]) == pytest.approx(expected, abs=1e-9)
    assert table.loc[f"{shown}_macro_f1", "role"] == "primary"
    assert table.loc[f"{shown}_macro_f1", "verdict"] == "loss=focal better"
    assert float(table.loc[f"{shown}_macro_f1", "ci_low"]) > 0
    rare = f"{shown}_recall.ant _rare_"
    assert table.loc[rare, "verdict"] == "loss=focal better"  # clear after Holm
    assert table.loc[f"{shown}_recall.cat", "verdict"] == "no clear difference (CI includes 0)"
    # Minority classes first: the rarest class right after the headline metrics.
    classes = [c for c in table["class"] if c]
    assert list(dict.fromkeys(classes)) == ["ant (rare)", "fish", "dog", "cat"]
    # Each class row carries its image count on the split shown (classes.json).
    counts = {"val": [8, 16, 30, 60], "test": [4, 12, 20, 40]}[shown]
    per_class = table[table["class"] != ""].drop_duplicates("class")
    assert [int(n) for n in per_class[f"{shown}_n"]] == counts


def test_compare_reads_like_an_answer(sweep, workdir, capsys):
    if not sweep.planted:
        pytest.skip("a real sweep has no planted effects")
    code, out, err = _run(capsys, sweep, "compare", "--experiment", sweep.experiment)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].endswith("showing test metrics")
    gain = sweep.planted["test_macro_f1"] * 100
    headline = next(line for line in lines if line.startswith("loss=focal better on"))
    assert headline.startswith(f"loss=focal better on test macro F1: {gain:+.1f} points [")
    assert "Power: with 3 pairs" in out and "would detect a difference of 1 point" in out
    assert "Multiplicity: test macro F1 (the sweep's metric) is the primary comparison" in out
    assert "loss=focal better on test recall of ant (rare) (4 test images): +50.0 points" in out
    assert "3 seeds on one train/val split" in out
    # One format for differences and intervals: signed, one decimal, in points.
    table = out[out.index("paired differences (test)") :]
    numbers = re.findall(r"[+-]\d+\.\d+", table)
    assert numbers and all(re.fullmatch(r"[+-]\d+\.\d", n) for n in numbers)


def test_an_old_sweep_without_test_metrics_shows_val(sweep, fake_sweep, workdir, capsys):
    code, out, err = _run(capsys, fake_sweep, "compare", "--experiment", fake_sweep.old_experiment)
    assert (code, err) == (0, "")
    assert out.splitlines()[0].endswith("showing val metrics")
    assert "on val macro F1" in out and "test" not in out.split("paired differences")[1]


def test_the_report_names_a_frozen_random_backbone_in_its_answer(fake_sweep, workdir, capsys):
    code, _, err = _run(capsys, fake_sweep, "report", "--experiment", fake_sweep.old_experiment)
    assert (code, err) == (0, "")
    html = next((workdir / "analysis-out").glob("report-*.html")).read_text()
    answer = html[html.index('<section id="answer">') : html.index('<section id="sweep">')]
    # The parent run's warning tag (conftest's old sweep), said before the evidence.
    assert "freezes a randomly initialised backbone: it measures little" in answer
    # A sweep where nothing beat chance says so, and that this is why no model won.
    assert "no trial learned: best val_macro_f1 0.069 (loss=ce), chance 0.1" in answer
    assert "No winning model: no trial learned" in answer


def test_best_shows_the_confirmation_runs_on_test(sweep, workdir, capsys):
    code, out, err = _run(
        capsys, sweep, "best", "--experiment", sweep.experiment, "--format", "csv"
    )
    assert (code, err) == (0, "")
    table = pd.read_csv(io.StringIO(out))
    confirm = table[table["table"].str.startswith("confirmation")].set_index("arm")
    client = _client(sweep)
    experiment_id = client.get_experiment_by_name(sweep.experiment).experiment_id
    for arm in ("ce", "focal"):
        runs = client.search_runs(
            [experiment_id],
            f"tags.`mlflow.parentRunId` = '{sweep.parent_run_id}' and tags.role = "
            f"'confirmation' and tags.arm = '{arm}'",
        )
        values = [r.data.metrics["test_macro_f1"] for r in runs]
        assert confirm.loc[arm, "test_macro_f1_mean"] == pytest.approx(np.mean(values))
        assert confirm.loc[arm, "test_macro_f1_std"] == pytest.approx(np.std(values, ddof=1))
    top = table[table["table"].str.startswith("top")]
    assert top["val_macro_f1"].notna().all()  # search runs: ranked and shown on val


def test_compare_reversed_levels_flip_the_sign(sweep, workdir, capsys):
    if not sweep.planted:
        pytest.skip("a real sweep has no planted effects")
    code, out, _ = _run(
        capsys,
        sweep,
        "compare",
        "--experiment",
        sweep.experiment,
        "--levels",
        "focal,ce",
        "--format",
        "csv",
    )
    table = pd.read_csv(io.StringIO(out)).set_index("metric")
    assert code == 0
    expected = -sweep.planted["test_macro_f1"]
    assert table.loc["test_macro_f1", "difference"] == pytest.approx(expected)
    assert table.loc["test_macro_f1", "verdict"] == "loss=focal better"  # now the baseline


def test_compare_says_n_and_the_rule_in_the_terminal(sweep, workdir, capsys):
    code, out, _ = _run(capsys, sweep, "compare", "--experiment", sweep.experiment)
    assert code == 0
    assert "n = 3 pairs (confirmation runs paired by seed" in out
    assert "95% CI" in out and "focal − ce" in out


def test_report_has_every_section_with_real_content(sweep, workdir, capsys):
    code, out, err = _run(
        capsys, sweep, "report", "--experiment", sweep.experiment, "--resamples", "2000"
    )
    assert (code, err) == (0, "")
    path = workdir / "analysis-out" / f"report-{sweep.parent_run_id[:8]}.html"
    html = path.read_text()
    for title in section_titles().values():
        assert f"<h2>{title}</h2>" in html
    assert "Not available" not in html and "Refused" not in html
    assert html.count("data:image/png;base64,") >= len(section_titles()) - 1
    # Self-contained: no script, stylesheet, image or font fetched from anywhere.
    assert not re.search(r'(src|href)="(?!data:|#)', html)
    assert "<script" not in html
    # The answer first, then the evidence.
    assert html.index('<section id="answer">') < html.index('<section id="sweep">')
    answer = html[html.index('<section id="answer">') : html.index('<section id="sweep">')]
    assert "held-out test split" in answer
    assert "held-out test set" in html  # ROC of the best run, a confirmation run
    if sweep.planted:
        assert "n = 3 pairs" in html
        gain = sweep.planted["test_macro_f1"] * 100
        assert (
            f'<p class="answer">loss=focal better on test macro F1: {gain:+.1f} points [' in answer
        )
        assert "Power: with 3 pairs" in answer and "ant (rare) (4 test images)" in answer
        assert f"Winning model: {sweep.model_uri} (run " in answer
        assert "randomly initialised" not in html
        # Each arm's search: three trials, 4 epochs each, focal's best the third; focal's
        # failed trial (1 epoch, started last) counts but found nothing.
        search = html[html.index('<section id="search">') :]
        search = search[: search.index("</section>")]
        assert (
            "loss=focal: best val_macro_f1 0.67 came at trial 3 of 4 (12 of 13 epochs): the "
            "search had settled." in search
        )
        assert (
            "loss=ce: best val_macro_f1 0.65 came at trial 3 of 3 (12 of 12 epochs): more "
            "trials might still help." in search
        )
    artifacts = [a.path for a in _client(sweep).list_artifacts(sweep.parent_run_id, "report")]
    assert artifacts == ["report/report.html"]
    assert "logged to parent run" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["best", "--experiment", "nope"], "no experiment 'nope'"),
        (["best", "--experiment", "focal", "--parent-run", "nope"], "no sweep run 'nope'"),
        (["compare", "--experiment", "focal", "--factor", "colour"], "unknown factor 'colour'"),
        (
            ["compare", "--experiment", "focal", "--levels", "ce,bce"],
            "no finished run has loss=bce",
        ),
        (["compare", "--experiment", "focal", "--factor", "freeze"], "no paired runs for factor"),
        (["report", "--experiment", "unfinished"], "has no finished runs"),
        (["compare", "--experiment", "focal-old", "--split", "test"], "has no test metrics"),
        (["best", "--experiment", "focal-old", "--split", "test"], "has no test metrics"),
        (["report", "--experiment", "focal-old", "--split", "test"], "has no test metrics"),
        (["compare", "--experiment", "focal", "--split", "train"], "invalid choice: 'train'"),
        (["confusion", "--experiment", "unfinished"], "has no finished runs"),
        (["confusion", "--experiment", "focal", "--run", "nope"], "no run 'nope'"),
        (["compare", "--experiment", "focal", "--levels", "ce"], "expected two levels"),
        (["best"], "--experiment"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    fake_sweep, workdir, capsys, args, message
):
    code = _exit_code([*args, "--tracking-uri", fake_sweep.tracking_uri, "--output", "out.txt"])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("analysis: error: ") and err.count("\n") == 1
    assert message in err
    assert list(workdir.iterdir()) == []


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's own errors
        return int(exit_.code or 0)


def test_missing_store_is_refused_without_creating_one(workdir, capsys):
    code = main(
        ["best", "--experiment", "focal", "--tracking-uri", f"sqlite:///{workdir / 'missing.db'}"]
    )
    _, err = capsys.readouterr()
    assert code == 2 and "no MLflow store" in err
    assert list(workdir.iterdir()) == []


def test_report_bad_run_logs_nothing(sweep, workdir, capsys):
    code, _, err = _run(
        capsys,
        sweep,
        "report",
        "--experiment",
        sweep.experiment,
        "--run",
        "nope",
        "--output",
        "r.html",
    )
    assert code == 2 and "no run 'nope'" in err
    assert not (workdir / "r.html").exists()


def test_module_entry_point_prints_one_line_on_a_real_stderr(fake_sweep, tmp_path):
    """Through ``python -m analysis``, so MLflow's own logging would show if it leaked."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis",
            "best",
            "--experiment",
            "nope",
            "--tracking-uri",
            fake_sweep.tracking_uri,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    expected = f"analysis: error: no experiment 'nope' in {fake_sweep.tracking_uri}\n"
    assert result.stderr == expected
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["best", "confusion", "compare", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    assert "--experiment" in out and "--tracking-uri" in out
    if command == "compare":
        assert "pairing rule" in out and "confirmation" in out
        assert "Holm" in out and "80% power" in out
    if command != "confusion":
        assert "--split {test,val}" in out
