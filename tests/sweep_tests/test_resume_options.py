"""What ``--resume`` does with the options given again: those Ray Tune keeps with the
experiment must agree; those the callbacks take follow the resuming command, though Ray
restores the callbacks pickled with the first one."""

import json
import pickle
from types import SimpleNamespace

import pytest
from mlflow.tracking import MlflowClient

from sweep.callbacks import CloseRuns, DriverOptions, Progress, resumed_with
from sweep.options import UsageError, get_args_parser
from sweep.resume import locate
from trainables import contract
from trainables.edge.trial import TrackingTarget

FIRST = ["--space", "focal", "--num-samples", "2", "--max-epochs", "3"]


@pytest.fixture
def interrupted(tmp_path):
    """A store with the parent run of an interrupted sweep first run as ``FIRST``."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("focal")
    tags = {
        contract.ROLE_TAG: contract.SWEEP_ROLE,
        contract.ARGV_TAG: json.dumps(FIRST),
        contract.STAMP_TAG: "20261204-000000",
    }
    run = client.create_run(experiment, tags=tags)
    client.set_terminated(run.info.run_id, "KILLED")
    return uri


def _locate(uri: str, *options: str):
    argv = ["--space", "focal", "--resume", "--tracking-uri", uri, *options]
    return locate(get_args_parser().parse_args(argv), argv)


@pytest.mark.parametrize(("option", "shown"), [("--max-failures", "5"), ("--max-concurrent", "1")])
def test_an_option_ray_keeps_with_the_experiment_must_agree(interrupted, option, shown):
    with pytest.raises(UsageError) as refused:
        _locate(interrupted, option, shown)
    first = get_args_parser().parse_args(FIRST)
    before = getattr(first, option[2:].replace("-", "_"))
    assert str(refused.value) == (
        f"{option} {shown} differs from the interrupted sweep's {before}: Ray Tune keeps it "
        "with the experiment; leave it out or give the same value"
    )


def test_where_and_how_it_runs_may_change(interrupted):
    point = _locate(interrupted, "--num-cpus", "3", "--quiet", "--max-failures", "1")
    assert (point.args.num_cpus, point.args.quiet, point.args.max_failures) == (3, True, 1)
    assert point.argv == tuple(FIRST)


def _target(uri: str) -> TrackingTarget:
    return TrackingTarget(uri, "1", "parent")


def _phase(progress: Progress) -> None:
    progress.setup()
    trial = SimpleNamespace(
        trial_id="t", status="TERMINATED", config={"arm": "focal"},
        last_result={"training_iteration": 3, "val_macro_f1": 0.5},
    )  # fmt: skip
    progress.on_trial_complete(0, [trial], trial)
    progress.on_experiment_end([trial])


def test_a_restored_view_follows_the_resuming_command(capsys):
    first = Progress("search", 1, "val_macro_f1", "max", 3, False, slots=2, live=False)
    saved = pickle.dumps(first)  # as Ray saves it with the Tuner
    resuming = DriverOptions(quiet=True, live=False, slots=6, target=_target("sqlite://"))
    with resumed_with(resuming):
        restored = pickle.loads(saved)  # as Tuner.restore loads it
    assert (restored.quiet, restored.live, restored.slots) == (True, False, 6)
    _phase(restored)
    assert capsys.readouterr().out == ""
    copy = pickle.loads(saved)  # outside a resume: as it was pickled
    assert (copy.quiet, copy.slots) == (False, 2)
    _phase(copy)
    assert "[search]" in capsys.readouterr().out


def test_restored_runs_are_closed_in_the_store_the_resuming_command_names(monkeypatch):
    ended = []
    monkeypatch.setattr(
        "trainables.edge.tracking.end_trial_run", lambda uri, run, outcome: ended.append(uri)
    )
    saved = pickle.dumps(CloseRuns(_target("sqlite:///old.db"), max_epochs=3))
    moved = DriverOptions(quiet=False, live=None, slots=2, target=_target("http://moved:5000"))
    with resumed_with(moved):
        restored = pickle.loads(saved)
    restored.on_trial_error(0, [], SimpleNamespace(last_result={"mlflow_run_id": "r"}))
    assert ended == ["http://moved:5000"]
