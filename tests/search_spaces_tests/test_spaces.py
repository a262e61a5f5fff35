"""Every registered space runs end to end on the embedded data and logs like the focal space."""

import pytest
import ray
from mlflow.tracking import MlflowClient

import tune
from analysis.cli import main as analysis_main
from search_spaces import ArmDefineByRun, SpaceContext, get_space, list_spaces

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def _run_space(name: str, folder, arms: tuple[str, ...]) -> list:
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = tune.main(
        [
            "--space",
            name,
            "--arms",
            ",".join(arms),
            "--backbone",
            "smallcnn",
            "--num-samples",
            "1",
            "--max-epochs",
            "1",
            "--grace-period",
            "1",
            "--confirm-seeds",
            "1",
            "--train-limit",
            "300",
            "--quiet",
            "--storage-path",
            str(folder / "ray"),
            "--tracking-uri",
            uri,
        ]
    )
    assert code == 0
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(name).experiment_id])


# focal, the main job's space, has its own fuller end-to-end test in tests/sweep_tests.
@pytest.mark.parametrize("space", [s.name for s in list_spaces() if s.name != "focal"])
def test_space_runs_logs_both_phases_and_its_factor_compares(space, local_ray, tmp_path, capsys):
    spec = get_space(space)
    arms = spec.arms[:2] if space != "backbones" else ("smallcnn", "resnet18-aug")
    runs = _run_space(space, tmp_path, arms)
    parent = [r for r in runs if r.data.tags.get("role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("role") != "sweep"]
    assert len(parent) == 1 and parent[0].data.tags["factor"] == spec.factor
    phases = {(r.data.tags["arm"], r.data.tags["role"]) for r in children}
    assert phases == {(a, role) for a in arms for role in ("search", "confirmation")}
    metric = "val_map" if spec.multilabel else "val_macro_f1"
    for run in children:
        assert run.info.status == "FINISHED"
        assert metric in run.data.metrics and run.data.tags["outcome"] == "completed"
    capsys.readouterr()
    code = analysis_main(
        [
            "compare",
            "--experiment",
            space,
            "--factor",
            spec.factor,
            "--levels",
            ",".join(arms),
            "--tracking-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--format",
            "csv",
        ]
    )
    assert code == 0
    import io

    import pandas as pd

    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    headline = table[table["role"] == "primary"].iloc[0]  # the sweep's metric, val or test
    assert (headline["baseline"], headline["other"], headline["n"]) == (arms[0], arms[1], 1)


def test_conditional_parameters_exist_only_under_their_arm():
    import optuna

    space = get_space("losses")
    seen = {}
    for arm in space.arms:
        trial = optuna.create_study().ask()
        config = ArmDefineByRun(space, arm, SpaceContext(("resnet18", "densenet121")), {})(trial)
        seen[arm] = set(trial.params) | set(config)
    assert "margin" in seen["triplet"] and "margin" in seen["triplet-svm"]
    assert "margin" not in seen["ce"] and "center_lambda" not in seen["triplet"]
    assert "center_lr" in seen["center"] and "backbone" in seen["ce"]
