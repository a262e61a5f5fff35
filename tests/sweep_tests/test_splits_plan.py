"""The test split and the confirmation runs in the plan: --test-fraction, --confirm-splits,
confirmation seeds apart from the search's, and the class counts the parent run logs."""

import numpy as np
import optuna
import pytest
from PIL import Image

import tune
from search_spaces import ArmDefineByRun, SpaceContext, SpaceError, list_spaces
from search_spaces._registry import SearchSpace
from sweep.arms import confirmation_variants
from sweep.options import parse_args
from sweep.parent_run import class_summary as _class_summary
from sweep.plan import build_plan
from sweep.runner import confirmation_pairs
from sweep.tally import ArmResult
from trainables.data import _digits_arrays, long_tail_counts

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _exit_2(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        tune.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tune.py: error: ")
    return err


@pytest.mark.parametrize("value", ["0", "0.5", "0.7", "-0.1", "a fifth"])
def test_a_test_fraction_outside_zero_to_a_half_is_refused(value, in_tmp, capsys):
    err = _exit_2(["--space", "focal", "--test-fraction", value], capsys)
    assert f"--test-fraction: {value!r}" in err or f"{value!r} is not a number" in err
    assert list(in_tmp.iterdir()) == []


def test_zero_confirmation_splits_are_refused(in_tmp, capsys):
    assert ">= 1" in _exit_2(["--space", "focal", "--confirm-splits", "0"], capsys)
    assert list(in_tmp.iterdir()) == []


def test_a_folder_too_small_for_three_splits_names_the_class(in_tmp, capsys):
    for name, count in [("covid", 8), ("normal", 8), ("rare", 2)]:
        (in_tmp / "xray" / name).mkdir(parents=True)
        for i in range(count):
            image = np.full((12, 12, 3), 20 * i, np.uint8)
            Image.fromarray(image).save(in_tmp / "xray" / name / f"{i}.png")
    err = _exit_2(["--space", "focal", "--dataset", "imagefolder:xray"], capsys)
    assert "too small for stratified train, val and test splits" in err
    assert "class 'rare' has 2" in err and "'covid'" not in err
    assert sorted(p.name for p in in_tmp.iterdir()) == ["xray"]  # nothing written


def test_the_test_fraction_reaches_the_data_and_every_trial(in_tmp):
    plan = build_plan(parse_args(["--space", "focal", "--test-fraction", "0.3"]))
    assert len(plan.data.test_y) == 219  # ceil(0.3 * 730) images of digits-lt
    assert plan.fixed["test_fraction"] == 0.3 and plan.options["test_fraction"] == 0.3


def _search_seeds(plan, trials: int = 8) -> set[int]:
    """The seeds of search trials as the runner's searchers build their configs."""
    seeds = set()
    for arm in plan.arms:
        define = ArmDefineByRun(plan.space, arm, plan.context, plan.fixed)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        seeds |= {define(study.ask())["seed"] for _ in range(trials)}
    return seeds


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("space", [s.name for s in list_spaces()])
def test_confirmation_seeds_never_include_a_search_seed(space, seed, in_tmp):
    argv = ["--space", space, "--seed", str(seed), "--confirm-seeds", "4"]
    plan = build_plan(parse_args(argv))
    assert len(plan.confirm_seeds) == len(set(plan.confirm_seeds)) == 4
    assert _search_seeds(plan) == {seed}
    assert not set(plan.confirm_seeds) & _search_seeds(plan)


def test_a_space_that_sets_the_seed_is_refused():
    def define(trial, arm, context):
        trial.suggest_float("lr", 1e-3, 0.1)
        return {"seed": 7}

    def searches(trial, arm, context):
        trial.suggest_int("seed", 0, 9)

    for bad in (define, searches):
        space = SearchSpace("bad", "", "loss", ("ce",), ("ce",), bad)
        run = ArmDefineByRun(space, "ce", SpaceContext(), {"seed": 0})
        with pytest.raises(SpaceError, match="sets seed; the sweep fixes it"):
            run(optuna.create_study().ask())


def test_confirmation_variants_pair_arms_by_split_seed_and_seed(in_tmp):
    argv = ["--space", "focal", "--seed", "2", "--confirm-seeds", "3", "--confirm-splits", "2"]
    plan = build_plan(parse_args(argv))
    assert plan.split_seeds == (2, 3) and plan.confirm_seeds == (3, 4, 5)
    best = {  # weighted-ce had no trial to confirm
        "focal": {"arm": "focal", "seed": 2, "split_seed": 2, "lr": 0.1},
        "ce": {"arm": "ce", "seed": 2, "split_seed": 2, "lr": 0.2},
    }
    variants = confirmation_variants(best, confirmation_pairs(plan))
    pairs = {
        arm: [(v["split_seed"], v["seed"]) for v in variants if v["arm"] == arm]
        for arm in ("focal", "ce")
    }
    expected = [(s, seed) for s in (2, 3) for seed in (3, 4, 5)]
    assert pairs["focal"] == pairs["ce"] == expected
    assert {v["role"] for v in variants} == {"confirmation"}
    assert {v["lr"] for v in variants if v["arm"] == "ce"} == {0.2}


def test_without_confirm_splits_the_confirmation_runs_use_the_sweeps_split(in_tmp):
    plan = build_plan(parse_args(["--space", "focal", "--seed", "4", "--confirm-seeds", "2"]))
    best = {"focal": {"arm": "focal", "split_seed": 4, "seed": 4}}
    assert [v["split_seed"] for v in confirmation_variants(best, confirmation_pairs(plan))] == [
        4,
        4,
    ]


def test_the_parent_runs_class_summary_counts_the_test_split(in_tmp):
    plan = build_plan(parse_args(["--space", "focal"]))
    summary = _class_summary(plan)
    assert summary["test_counts"] == plan.data.class_counts("test").tolist()
    counts = [summary[f"{split}_counts"] for split in ("train", "val", "test")]
    _, labels = _digits_arrays()
    assert np.sum(counts, axis=0).tolist() == long_tail_counts(np.bincount(labels)).tolist()
    assert min(summary["test_counts"]) >= 4


def test_the_summary_counts_split_and_seed_pairs(in_tmp):
    from sweep.summary import format_summary

    argv = ["--space", "focal", "--confirm-seeds", "2", "--confirm-splits", "2"]
    plan = build_plan(parse_args(argv))
    arm = ArmResult("focal", best_config={"lr": 0.1}, best_value=0.5)
    arm.confirmation_values = [0.5, 0.6, 0.7, 0.8]
    text = format_summary(plan, [arm], "1", "abc")
    assert "confirmation over 4 (split, seed) pairs: 0.6500" in text


def _manifest(folder, rows: list[tuple[str, str]]):
    lines = ["path,label,split"]
    for i, (label, split) in enumerate(rows):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f"{i}.png")
        lines.append(f"{i}.png,{label},{split}")
    (folder / "m.csv").write_text("\n".join(lines) + "\n")
    return folder / "m.csv"


def test_a_resplit_that_cannot_keep_a_class_in_val_is_refused_before_anything_starts(
    in_tmp, capsys
):
    # b and c: one image in each split; pooled, 2 of 49 images go to val 1 in 7: never b or c.
    rows = [("a", "train")] * 40 + [("a", "val")] * 5 + [("a", "test")] * 2
    rows += [(c, s) for c in ("b", "c") for s in ("train", "val", "test")]
    manifest = _manifest(in_tmp, rows)
    argv = ["--space", "focal", "--dataset", f"csv:{manifest}", "--image-size", "32"]
    build_plan(parse_args(argv))  # the manifest's own split is fine
    err = _exit_2([*argv, "--confirm-splits", "2"], capsys)
    assert "train/val split seed 1" in err and "class 'b'" in err and "no val image" in err
    assert not (in_tmp / "mlflow.db").exists()


def test_image_files_are_decoded_at_the_size_the_models_take(tmp_path, monkeypatch):
    from tests.bad_images import write_image

    for c in range(2):
        for i in range(6):
            write_image(tmp_path / "folder" / f"class{c}" / f"{i}.png", 10 * c + i, size=20)
    asked = []

    def decode_size(backbones, weights, default):
        asked.append((backbones, weights, default))
        return 24

    monkeypatch.setattr("sweep.plan.decode_size", decode_size)
    argv = ["--space", "focal", "--dataset", f"imagefolder:{tmp_path / 'folder'}"]
    assert build_plan(parse_args(argv)).data.image_size == 24
    assert asked == [(("smallcnn",), "none", 224)]
    given = build_plan(parse_args([*argv, "--image-size", "16"]))
    assert given.data.image_size == 16 and len(asked) == 1  # --image-size wins
    assert build_plan(parse_args(["--space", "focal"])).data.image_size == 8  # digits' own
    assert len(asked) == 1
