"""Bad input: one line on stderr, exit status 2, and no MLflow store or run left behind."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tune

ROOT = Path(__file__).resolve().parents[2]


def _write_images(folder: Path, classes: list[str], per_class: int = 3) -> Path:
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(np.full((12, 12, 3), 40 * i, np.uint8)).save(folder / name / f"{i}.png")
    return folder


CASES = {
    "unknown space": (["--space", "nope"], "unknown space 'nope'; accepted: "),
    "unknown backbone": (["--space", "focal", "--backbone", "resnet19"], "accepted: "),
    "unknown dataset": (["--space", "focal", "--dataset", "cifar11"], "unknown dataset"),
    "unknown arm": (["--space", "focal", "--arms", "focal,hinge"], "bad arms focal,hinge"),
    "unknown metric": (["--space", "focal", "--metric", "val_auc"], "unknown metric"),
    "non-numeric samples": (["--space", "focal", "--num-samples", "many"], "'many' is not a whole"),
    "zero samples": (["--space", "focal", "--num-samples", "0"], ">= 1"),
    "negative gpus": (["--space", "focal", "--gpus-per-trial", "-1"], "not a valid amount"),
    "fractional gpus above one": (["--space", "focal", "--gpus-per-trial", "1.5"], "fraction"),
    # Ray refused these only after the MLflow experiment and parent run existed.
    "no cpus and no gpus": (["--space", "focal", "--cpus-per-trial", "0"], "some CPU or some GPU"),
    "no cpus, gpus given as zero": (
        ["--space", "focal", "--cpus-per-trial", "0", "--gpus-per-trial", "0.0"],
        "accepted: --cpus-per-trial above 0, or --gpus-per-trial above 0",
    ),
    "cpus below Ray's unit": (["--space", "focal", "--cpus-per-trial", "0.00001"], "0.0001 to 1"),
    "gpus below Ray's unit": (["--space", "focal", "--gpus-per-trial", "1e-5"], "0.0001 to 1"),
    "val fraction": (["--space", "focal", "--val-fraction", "1.5"], "strictly between 0 and 1"),
    "bad head": (["--space", "focal", "--head", "wide"], "bad --head 'wide'"),
    "missing folder": (["--space", "focal", "--dataset", "imagefolder:nowhere"], "does not exist"),
    "missing weights": (["--space", "focal", "--weights", "w.pth"], "weights file 'w.pth'"),
    "multi-label space, single-label data": (
        ["--space", "multilabel", "--dataset", "digits"],
        "space 'multilabel' needs multi-label data",
    ),
    "single-label space, multi-label data": (
        ["--space", "focal", "--dataset", "digits-multilabel"],
        "needs single-label data",
    ),
    "embedding loss without an embedding layer": (
        ["--space", "losses", "--backbone", "smallcnn", "--head", "none"],
        "needs an embedding layer",
    ),
    "no imagenet weights for the small CNN": (
        ["--space", "focal", "--backbone", "smallcnn", "--weights", "imagenet"],
        "has no ImageNet weights",
    ),
    "a model name with a slash": (
        ["--space", "focal", "--register-model", "team/xray"],
        "bad --register-model 'team/xray'; accepted: a name without '/'",
    ),
    "a model to register, but none logged": (
        ["--space", "focal", "--register-model", "xray", "--log-models", "none"],
        "--register-model with --log-models none",
    ),
    "unknown --log-models": (["--space", "focal", "--log-models", "all"], "invalid choice: 'all'"),
    "grace above epochs": (
        ["--space", "focal", "--max-epochs", "2", "--grace-period", "3"],
        "exceeds",
    ),
    "--set without =": (["--space", "focal", "--set", "lr"], "bad --set 'lr'; accepted: KEY="),
    "--set of an unknown key": (
        ["--space", "focal", "--set", "learning_rate=0.1"],
        "accepted: batch_size, freeze, gamma, lr, momentum, optimizer",
    ),
    "--set of a word for a number": (["--space", "focal", "--set", "lr=fast"], "lr takes a number"),
    "--set of the space's factor": (
        ["--space", "focal", "--set", "loss=ce"],
        "--set loss: loss is what the arms of space 'focal' differ in",
    ),
    "--set of an unregistered loss": (
        ["--space", "svm", "--set", "loss=hinge"],
        "--set loss=hinge: unknown loss 'hinge'; accepted: ",
    ),
    "--set of an unregistered optimizer": (
        ["--space", "focal", "--set", "optimizer=nadam"],
        "--set optimizer=nadam: unknown optimizer 'nadam'; did you mean adam, adamw? accepted: "
        "adam, adamw, sgd",
    ),
    "--set of a freeze the backbone lacks": (
        ["--space", "focal", "--set", "freeze=partial:9"],
        "--set freeze=partial:9: bad freeze 'partial:9' for smallcnn",
    ),
    "--set of a choice no registry knows": (
        ["--space", "losses", "--set", "mining=hardest"],
        "--set mining=hardest: accepted: batch_hard, batch_all",
    ),
    "--set of an option of its own": (
        ["--space", "focal", "--set", "dropout=0.2"],
        "dropout is fixed for the whole sweep",
    ),
    "--set of a key twice": (
        ["--space", "focal", "--set", "lr=0.1", "--set", "lr=0.2"],
        "--set lr is given twice",
    ),
    "--set of a batch size of 0": (
        ["--space", "focal", "--set", "batch_size=0"],
        "batch_size must be 1 or more (the space searches the choices 32, 64, 128)",
    ),
    "--set of a negative learning rate": (
        ["--space", "focal", "--set", "lr=-0.1"],
        "lr must be 0 or more",
    ),
    "--set of a loss whose settings the arm does not search": (
        ["--space", "svm", "--set", "loss=focal"],
        "--set loss=focal: focal loss needs gamma >= 0, got None",
    ),
    "--set of a key only an unsearched arm has": (
        ["--space", "focal", "--arms", "ce", "--set", "gamma=2"],
        "no arm searched (ce) of space 'focal' has gamma",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_option_is_one_line_exit_2_and_nothing_written(name, in_tmp, capsys):
    argv, expected = CASES[name]
    with pytest.raises(SystemExit) as exit_info:
        tune.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tune.py: error: ")
    assert expected in err
    assert list(in_tmp.iterdir()) == []


def test_empty_and_single_class_folders(in_tmp, capsys):
    (in_tmp / "empty").mkdir()
    single = _write_images(in_tmp / "single", ["covid"])
    for folder, expected in [("empty", "no images in"), (single, "only one class folder 'covid'")]:
        with pytest.raises(SystemExit) as exit_info:
            tune.main(["--space", "focal", "--dataset", f"imagefolder:{folder}"])
        assert exit_info.value.code == 2
        assert expected in capsys.readouterr().err
    assert not (in_tmp / "mlflow.db").exists() and not (in_tmp / "mlartifacts").exists()


def test_incompatible_weights_file(in_tmp, capsys):
    import torch

    torch.save({"conv1.weight": torch.zeros(1)}, in_tmp / "bad.pth")
    with pytest.raises(SystemExit):
        tune.main(["--space", "focal", "--backbone", "resnet18", "--weights", "bad.pth"])
    assert "does not fit backbone 'resnet18'" in capsys.readouterr().err


def test_the_real_command_exits_2_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), "--space", "focal", "--loss-of-focus"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "tune.py: error: unrecognized arguments: --loss-of-focus"
    ]


def test_help_and_list_spaces(capsys):
    with pytest.raises(SystemExit) as exit_info:
        tune.main(["--help"])
    assert exit_info.value.code == 0
    assert "--gpus-per-trial" in capsys.readouterr().out
    assert tune.main(["--list-spaces"]) == 0
    assert any(line.startswith("focal ") for line in capsys.readouterr().out.splitlines())


def test_storage_uris_are_kept_and_local_paths_made_absolute(tmp_path, monkeypatch):
    from sweep.options import parse_args
    from sweep.plan import build_plan

    monkeypatch.chdir(tmp_path)
    plan = build_plan(parse_args(["--space", "focal", "--storage-path", "s3://bucket/sweeps"]))
    assert plan.storage_path == "s3://bucket/sweeps"
    plan = build_plan(parse_args(["--space", "focal", "--storage-path", "results"]))
    assert plan.storage_path == str(tmp_path / "results")


def test_a_relative_weights_path_reaches_trials_as_an_absolute_one(tmp_path, monkeypatch):
    # Trials run in folders of their own: a relative path there named nothing (a fixed bug).
    import torch

    from sweep.options import parse_args
    from sweep.plan import build_plan
    from trainables.models import SmallCNN

    monkeypatch.chdir(tmp_path)
    torch.save(SmallCNN(in_channels=1).state_dict(), tmp_path / "cnn.pth")
    plan = build_plan(parse_args(["--space", "focal", "--weights", "cnn.pth"]))
    assert plan.fixed["weights"] == str(tmp_path / "cnn.pth")
    assert plan.context.weights == str(tmp_path / "cnn.pth")


def test_the_summary_names_failed_trials_and_their_error(tmp_path, monkeypatch):
    from sweep.options import parse_args
    from sweep.plan import build_plan
    from sweep.summary import format_summary
    from sweep.tally import ArmResult

    monkeypatch.chdir(tmp_path)
    plan = build_plan(parse_args(["--space", "focal"]))
    failed = ArmResult("focal", search_trials=2, failed=2, first_error="ModelError: boom")
    text = format_summary(plan, [failed, ArmResult("ce")], "1", "abc")
    assert "2 trials failed; first error: ModelError: boom" in text
    assert text.count("no trial finished an epoch") == 2
    diverging = ArmResult(
        "focal", search_trials=4, diverged=1, nonfinite=1, confirmation_values=[0.9, 0.8]
    )
    diverging.best_config, diverging.best_value, diverging.confirmation_diverged = {}, 0.9, 3
    text = format_summary(plan, [diverging], "1", "abc")
    assert "4 search trials, 0 stopped early by ASHA, 1 diverged" in text
    assert "1 trial ended with a metric that is NaN or infinite (tag nonfinite_metrics)" in text
    assert "3 of 5 confirmation seeds diverged" in text


@pytest.mark.parametrize(
    ("argv", "grace_period"),
    [
        ([], 2),
        (["--max-epochs", "1"], 1),  # the default follows the epochs (refused before the fix)
        (["--max-epochs", "1", "--grace-period", "1"], 1),
        (["--max-epochs", "9", "--grace-period", "4"], 4),
    ],
)
def test_the_grace_periods_default_follows_max_epochs(argv, grace_period, in_tmp):
    from sweep.options import parse_args
    from sweep.plan import build_plan

    plan = build_plan(parse_args(["--space", "focal", *argv]))
    assert plan.grace_period == grace_period
    assert list(in_tmp.iterdir()) == []


@pytest.mark.parametrize(
    ("cpus", "gpus"), [("0.5", "0"), ("0", "1"), ("0.0001", "0"), ("0.33333", "0.25"), ("2", "0")]
)
def test_resources_ray_can_place_are_accepted(cpus, gpus, in_tmp):
    # Checked against Ray 2.60: a fractional CPU (0.5) or a GPU alone is scheduled.
    from sweep.options import parse_args
    from sweep.plan import build_plan

    argv = ["--space", "focal", "--cpus-per-trial", cpus, "--gpus-per-trial", gpus]
    plan = build_plan(parse_args(argv))
    assert (plan.cpus_per_trial, plan.gpus_per_trial) == (float(cpus), float(gpus))
    assert plan.fixed["num_threads"] == max(1, int(float(cpus)))


def test_the_summary_counts_the_trials_that_trained_uncached_and_says_why(tmp_path, monkeypatch):
    from sweep.options import parse_args
    from sweep.plan import build_plan
    from sweep.summary import format_summary
    from sweep.tally import ArmResult, _count_uncached

    monkeypatch.chdir(tmp_path)
    plan = build_plan(parse_args(["--space", "freeze"]))
    arm = ArmResult("backbone", search_trials=3)
    reasons = [
        "uncached: over the budget",
        "used",
        "used; test uncached: over the budget",  # trained on cached features
        "uncached: another reason",
    ]
    for note in [*reasons, None]:
        _count_uncached(arm, {"feature_cache": note} if note else {})
    assert (arm.uncached, arm.uncached_reason) == (2, "over the budget")
    text = format_summary(plan, [arm, ArmResult("none", search_trials=3)], "1", "abc")
    line = "2 trials trained uncached, though frozen; first reason: over the budget (tag "
    assert text.count(line + "feature_cache)") == 1
    assert "uncached" not in text.replace(line, "")
