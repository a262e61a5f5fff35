"""``tune.py --set KEY=VALUE``: accepted pins reach every trial config of the plan, with a
one-line warning where they leave the space's range or miss an arm. Refused ones are in
test_bad_input.py with the rest of the bad input."""

import optuna
import pytest

import tune
from search_spaces import ArmDefineByRun
from sweep.options import parse_args
from sweep.plan import build_plan

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _trial_configs(plan, arm: str, n: int = 6) -> list[dict]:
    """Configs as the runner's searcher builds them (ArmDefineByRun on the plan)."""
    define = ArmDefineByRun(plan.space, arm, plan.context, plan.fixed)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=plan.seed))
    return [define(study.ask()) for _ in range(n)]


def test_a_pin_outside_the_range_warns_and_reaches_every_trial(in_tmp):
    plan = build_plan(parse_args(["--space", "focal", "--set", "lr=1e-4"]))
    assert plan.warnings == ("lr=0.0001 is outside the space's range [0.001, 0.3]",)
    assert dict(plan.pins) == {"lr": "1e-4"}
    for arm in plan.arms:
        assert all(config["lr"] == 1e-4 for config in _trial_configs(plan, arm))
    assert list(in_tmp.iterdir()) == []


def test_a_pin_only_one_arm_has_applies_there_with_a_warning(in_tmp):
    argv = ["--space", "focal", "--set", "gamma=1.5", "--set", "momentum=0.9"]
    plan = build_plan(parse_args(argv))
    assert plan.warnings == ("gamma=1.5 applies only to arm focal; ce has no gamma",)
    assert all(c["gamma"] == 1.5 and c["momentum"] == 0.9 for c in _trial_configs(plan, "focal"))
    assert all("gamma" not in c and c["momentum"] == 0.9 for c in _trial_configs(plan, "ce"))


def test_zero_is_a_number_like_any_other(in_tmp):
    # Focal loss with gamma 0 is cross-entropy: outside the space's range, but meaningful.
    plan = build_plan(parse_args(["--space", "focal", "--arms", "focal", "--set", "gamma=0"]))
    assert plan.warnings == ("gamma=0 is outside the space's range [0.5, 3]",)


def test_pins_inside_the_range_and_registered_constants_need_no_warning(in_tmp):
    argv = ["--space", "focal", "--set", "lr=0.01", "--set", "optimizer=adam"]
    plan = build_plan(parse_args(argv))
    assert plan.warnings == ()
    assert all(c["optimizer"] == "adam" for c in _trial_configs(plan, "ce"))


def test_the_parent_run_logs_the_pins_readably(in_tmp):
    from trainables.contract import param_str

    plan = build_plan(parse_args(["--space", "focal", "--set", "lr=1e-4", "--set", "gamma=2"]))
    assert param_str(plan.options["set"]) == "lr=1e-4, gamma=2"
    assert "set" not in build_plan(parse_args(["--space", "focal"])).options


def test_the_command_prints_each_warning_as_one_line_before_the_sweep(in_tmp, monkeypatch, capsys):
    import sweep.runner

    class Started(Exception):
        pass

    def run_sweep(plan, early_ray=None):
        raise Started

    monkeypatch.setattr(sweep.runner, "run_sweep", run_sweep)
    with pytest.raises(Started):
        tune.main(["--space", "focal", "--set", "lr=1e-4", "--set", "gamma=1.5"])
    assert capsys.readouterr().err.splitlines() == [
        "tune.py: warning: lr=0.0001 is outside the space's range [0.001, 0.3]",
        "tune.py: warning: gamma=1.5 applies only to arm focal; ce has no gamma",
    ]


@pytest.mark.slow
def test_a_real_sweep_logs_the_pins_on_every_trial(tmp_path):
    # Also the default grace period under --max-epochs 1, which used to be refused.
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, str(root / "tune.py"), "--space", "focal", "--max-epochs", "1"]
    command += ["--num-samples", "2", "--confirm-seeds", "1", "--train-limit", "120"]
    command += ["--num-cpus", "2", "--quiet", "--set", "lr=1e-4", "--set", "gamma=1.5"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": "", "PYTHONPATH": str(root)}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tune.py: warning: gamma=1.5 applies only to arm focal" in result.stderr
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("focal").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("role") == "sweep"]
    assert parent.data.params["set"] == "lr=1e-4, gamma=1.5"
    children = [r for r in runs if r is not parent]
    assert len(children) == 2 * 2 + 2 * 1
    for run in children:
        assert float(run.data.params["lr"]) == 1e-4
        focal = run.data.params["arm"] == "focal"
        assert run.data.params.get("gamma") == ("1.5" if focal else None)
