"""The winning model leaves the sweep: tiny real sweeps on local Ray. With --register-model
against a real ``mlflow server``, the winner is a registered version that a fresh process,
which cannot import this repository, loads and that reproduces its run's val accuracy; and
``analysis predict --run best`` scores it on class folders. Without confirmation runs, each
arm's best search trial gets its model from its checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from tests import mlflow_server
from trainables.data import DataOptions, load_dataset

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

TINY = ["--space", "focal", "--num-samples", "2", "--max-epochs", "2", "--train-limit", "150"]
TINY += ["--num-cpus", "2", "--quiet"]
NAME = "digits-classifier"
OUR_PACKAGES = ("trainables", "sweep", "analysis", "search_spaces", "tune")

LOAD_REGISTERED = """
import importlib.abc, json, sys

class NoRepository(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {packages!r}:
            raise ImportError("this repository is not available: " + name)

sys.meta_path.insert(0, NoRepository())
import mlflow, numpy as np

model = mlflow.pyfunc.load_model({model_uri!r})
print(json.dumps(list(model.predict(np.load("val_x.npy"))["predicted"])))
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (its own process group), stopped by its pid."""
    running = mlflow_server.start(tmp_path_factory.mktemp("mlflow-server"))
    try:
        mlflow_server.wait_until_up(running)
        yield running.url
    finally:
        mlflow_server.stop(running)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": "", **extra}


def _tune(folder: Path, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tune.py"), *TINY, *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
        env=_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _val_images(folder: Path) -> np.ndarray:
    """The sweep's val split (--seed 0), as files in class folders and as one array."""
    data = load_dataset("digits-lt", DataOptions())
    for i, (image, label) in enumerate(zip(data.val_x, data.val_y, strict=True)):
        path = folder / "val" / str(int(label)) / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(path)
    np.save(folder / "val_x.npy", data.val_x.numpy())
    return data.val_y.numpy()


def _at_best_epoch(client: MlflowClient, run_id: str, key: str) -> float:
    best = int(client.get_run(run_id).data.metrics["best_epoch"])
    return next(m.value for m in client.get_metric_history(run_id, key) if m.step == best)


def _logged_predictions(client: MlflowClient, run_id: str, folder: Path) -> np.ndarray:
    path = client.download_artifacts(run_id, "predictions/val_predictions.npz", str(folder))
    with np.load(path) as arrays:
        return arrays["y_pred"]


@pytest.fixture(scope="module")
def registered(server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("registered")
    result = _tune(
        folder,
        "--confirm-seeds",
        "2",
        "--tracking-uri",
        server,
        "--register-model",
        NAME,
        "--storage-path",
        str(folder / "ray_results"),
    )
    return folder, MlflowClient(server, registry_uri=server), result.stdout


def test_the_winner_is_registered_with_the_sweeps_tags(server, registered):
    _, client, stdout = registered
    version = client.get_model_version(NAME, "1")
    runs = {
        r.info.run_id: r
        for r in client.search_runs([client.get_experiment_by_name("focal").experiment_id])
    }
    run = runs[version.run_id]
    parent = runs[run.data.tags["mlflow.parentRunId"]]
    confirmation = [r for r in runs.values() if r.data.tags.get("role") == "confirmation"]
    means = {}
    for r in confirmation:
        means.setdefault(r.data.tags["arm"], []).append(r.data.metrics["best_val_macro_f1"])
    best_arm = max(means, key=lambda arm: np.mean(means[arm]))
    same_arm = [r for r in confirmation if r.data.tags["arm"] == best_arm]
    best_seed = max(same_arm, key=lambda r: r.data.metrics["best_val_macro_f1"])
    assert version.run_id == best_seed.info.run_id
    assert version.tags["arm"] == best_arm and version.tags["metric"] == "val_macro_f1"
    assert float(version.tags["metric_value"]) == pytest.approx(
        best_seed.data.metrics["best_val_macro_f1"], rel=1e-5
    )
    assert float(version.tags["arm_mean"]) == pytest.approx(np.mean(means[best_arm]), rel=1e-5)
    assert version.tags["sweep"] == parent.info.run_name
    # The paired comparison's answer travels with the model.
    assert (
        version.tags["verdict"] == parent.data.tags["answer"]
        and "pairs)" in version.tags["verdict"]
    )
    assert version.description == parent.data.tags["answer"]
    # The parent run's description (MLflow's note) holds the answer, the power and the model.
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith("**Answer** (loss: focal, ce; val_macro_f1): ")
    assert parent.data.tags["answer"] in note and "Power: with " in note
    assert note.rstrip().endswith(run.data.tags["model_uri"])
    assert f"Answer: {parent.data.tags['answer']}" in stdout
    assert parent.data.tags["winner_run_id"] == version.run_id
    assert f"registered: models:/{NAME}/1" in stdout
    assert f"model {run.data.tags['model_uri']}" in stdout
    # Every confirmation run logged its model; no search trial did.
    assert all("model_uri" in r.data.tags for r in confirmation)
    assert not any(
        "model_uri" in r.data.tags for r in runs.values() if r.data.tags.get("role") == "search"
    )


def test_registering_the_same_model_again_adds_no_version(server, registered):
    """A resumed sweep that reaches its registration again must not add a second version."""
    from trainables.edge import tracking

    _, client, _ = registered
    version = client.get_model_version(NAME, "1")
    again = tracking.register_model(server, NAME, version.source, version.run_id, {})
    assert again == f"models:/{NAME}/1"
    assert [v.version for v in client.search_model_versions(f"name = '{NAME}'")] == ["1"]


def test_a_fresh_process_loads_it_and_reproduces_the_runs_val_accuracy(server, registered):
    folder, client, _ = registered
    y_true = _val_images(folder)
    script = LOAD_REGISTERED.format(packages=OUR_PACKAGES, model_uri=f"models:/{NAME}/1")
    env = {k: v for k, v in _env(MLFLOW_TRACKING_URI=server).items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=folder, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    predicted = np.array(json.loads(result.stdout.strip().splitlines()[-1]), dtype=int)
    run_id = client.get_model_version(NAME, "1").run_id
    accuracy = _at_best_epoch(client, run_id, "val_accuracy")
    assert (predicted == y_true).mean() == pytest.approx(accuracy, abs=1e-9)
    np.testing.assert_array_equal(predicted, _logged_predictions(client, run_id, folder))


def test_analysis_predict_scores_the_best_model_on_class_folders(server, registered):
    folder, client, _ = registered
    _val_images(folder)
    result = subprocess.run(
        [sys.executable, "-m", "analysis", "predict", "--experiment", "focal", "--tracking-uri",
         server, str(folder / "val"), "--output", str(folder / "val.csv")],
        cwd=folder, env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    run_id = client.get_model_version(NAME, "1").run_id
    accuracy = _at_best_epoch(client, run_id, "val_accuracy")
    assert f"against the class folders: accuracy {accuracy:.4f}" in result.stdout
    assert len((folder / "val.csv").read_text().splitlines()) == 1 + len(
        list(folder.glob("val/*/*.png"))
    )


def test_without_confirmation_runs_each_arms_best_search_trial_gets_its_model(tmp_path):
    result = _tune(tmp_path, "--confirm-seeds", "0")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("focal").experiment_id])
    search = [r for r in runs if r.data.tags.get("role") == "search"]
    with_model = {r.info.run_id for r in search if "model_uri" in r.data.tags}
    best = {}
    for r in search:
        arm = r.data.tags["arm"]
        if (
            arm not in best
            or r.data.metrics["best_val_macro_f1"] > best[arm].data.metrics["best_val_macro_f1"]
        ):
            best[arm] = r
    assert with_model == {r.info.run_id for r in best.values()}
    assert "not registered (tune.py --register-model NAME registers the winner)" in result.stdout
    y_true = _val_images(tmp_path)
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        for run in best.values():
            model = mlflow.pyfunc.load_model(run.data.tags["model_uri"])
            predicted = model.predict(np.load(tmp_path / "val_x.npy"))["predicted"].to_numpy()
            # The best epoch's model, whichever epoch that was, as its run logged it.
            logged = _logged_predictions(client, run.info.run_id, tmp_path)
            np.testing.assert_array_equal(predicted.astype(int), logged)
            accuracy = _at_best_epoch(client, run.info.run_id, "val_accuracy")
            assert (predicted.astype(int) == y_true).mean() == pytest.approx(accuracy, abs=1e-9)
    finally:
        mlflow.set_tracking_uri(previous)
