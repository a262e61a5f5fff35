"""The progress line counts what the trials say, the trial that just ended included."""

from types import SimpleNamespace

from sweep.callbacks import Progress
from trainables.trial import DIVERGED_KEY


def _trial(status, iteration=0, value=None, **extra):
    result = {"training_iteration": iteration, **extra}
    if value is not None:
        result["best_val_macro_f1"] = value
    return SimpleNamespace(status=status, last_result=result)


def test_progress_line_counts_outcomes_and_the_best_finite_value(capsys):
    progress = Progress("search", 6, "best_val_macro_f1", "max", 4, quiet=False)
    trials = [
        _trial("TERMINATED", 4, 0.8),
        _trial("TERMINATED", 2, 0.6),  # stopped early by ASHA
        _trial("TERMINATED", 1, 0.99, **{DIVERGED_KEY: 1}),  # its value must not count
        _trial("ERROR", 1, 0.5),
        _trial("RUNNING", 4, 0.85),  # just ended: Ray updates its status after the callbacks
        _trial("PENDING"),
    ]
    progress.on_trial_complete(0, trials, trials[4])
    assert capsys.readouterr().out.strip() == (
        "[search] 5/6 trials ended, 1 stopped early, 1 diverged, 1 failed; 0 running; "
        "best val_macro_f1 so far 0.8500"
    )


def test_a_crash_closes_open_runs_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import dataclasses

    import pytest
    from mlflow.tracking import MlflowClient

    from sweep import runner
    from sweep.plan import build_plan, parse_args
    from trainables.tracking import TrialRun

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    plan = build_plan(parse_args(["--space", "focal"]))
    plan = dataclasses.replace(plan, argv=("--space", "focal"), stamp="1")
    opened = []

    def crash(plan, trainable, target):  # a trial is running when the driver breaks
        run = TrialRun.open(
            target.uri,
            experiment_id=target.experiment_id,
            parent_run_id=target.parent_run_id,
            run_name="t",
            tags={"role": "search"},
            params={},
        )
        opened.append(run.run_id)
        raise RuntimeError("Ray's actor manager broke")

    monkeypatch.setattr(runner, "start_ray", lambda plan: False)
    monkeypatch.setattr(runner, "_trainable", lambda plan, target: None)
    monkeypatch.setattr(runner, "search_arms", crash)
    with pytest.raises(RuntimeError, match="actor manager"):
        runner.run_sweep(plan)
    client = MlflowClient(plan.tracking_uri)
    child = client.get_run(opened[0])
    assert (child.info.status, child.data.tags["outcome"]) == ("KILLED", "interrupted")
    parent = child.data.tags["mlflow.parentRunId"]
    assert client.get_run(parent).info.status == "FAILED"
    assert capsys.readouterr().err.strip().endswith(f"--space focal --resume {parent}")
