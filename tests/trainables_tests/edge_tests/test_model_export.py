"""A model logged from an in-memory classifier into a local MLflow store, loaded back with
``mlflow.pyfunc.load_model`` in a fresh Python process that cannot import this repository;
the best epoch's weights as checkpoints carry them; the Model Registry's versions and tags."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from trainables import contract
from trainables.config import TrialConfig
from trainables.data import DataOptions, limit_train, load_dataset
from trainables.edge import tracking
from trainables.edge.model_export import log_trial_model
from trainables.edge.trial import (
    CHECKPOINT_FILE,
    copy_trained_state,
    load_checkpoint,
    load_trained_model,
)
from trainables.engine import (
    TrainedModel,
    build_model_and_criterion,
    build_training_state,
    evaluate,
    fit,
)

CPU = torch.device("cpu")
OUR_PACKAGES = ("trainables", "sweep", "analysis", "search_spaces", "tune")

# Run in a fresh interpreter, outside the repository, with this repository's packages made
# unimportable (the virtual environment may hold an editable install of them).
LOAD_AND_PREDICT = """
import importlib.abc, json, sys

class NoRepository(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {packages!r}:
            raise ImportError("this repository is not available: " + name)

sys.meta_path.insert(0, NoRepository())
import mlflow, numpy as np

mlflow.set_tracking_uri({uri!r})
images = np.load("images.npy")
report = {{}}
for uri in {model_uris!r}:
    model = mlflow.pyfunc.load_model(uri)
    out = model.predict(images)
    np.save(uri.replace(":", "_").replace("/", "_") + ".npy", out.filter(like="prob_").to_numpy())
    report[uri] = {{
        "predicted": list(out["predicted"]),
        "columns": list(out.columns),
        "classes": model.metadata.metadata["image_classifier"]["classes"],
        "signature_outputs": model.metadata.signature.outputs.input_names(),
        "params": [p.name for p in model.metadata.signature.params.params],
        "trainables_loaded": any(m.split(".")[0] in {packages!r} for m in sys.modules),
    }}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def trained():
    """A small CNN after one epoch on 150 long-tailed digits."""
    torch.manual_seed(0)
    cfg = TrialConfig(dataset="digits-lt", max_epochs=1, batch_size=32)
    data = limit_train(load_dataset("digits-lt", DataOptions()), 150)
    state = build_training_state(cfg, data, CPU)
    list(fit(cfg, data, CPU, state))
    return cfg, data, state


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "export")
    parent = tracking.start_parent_run(uri, experiment_id, "sweep", {}, {})
    run = tracking.TrialRun.open(
        uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        run_name="trial",
        tags={"seed": "0"},
        params={},
    )
    return uri, run.run_id


def test_a_logged_model_round_trips_in_a_fresh_process_without_this_repository(
    trained, store, tmp_path
):
    cfg, data, state = trained
    uri, run_id = store
    model_uri = log_trial_model(uri, run_id, cfg, data, state, copy_trained_state(state))
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.tags[contract.MODEL_URI_TAG] == model_uri
    assert run.data.params == {}  # the model's spec is not logged as params of the trial
    expected = evaluate(state.model, state.criterion, data.val_x, data.val_y, CPU).y_prob
    work = tmp_path / "elsewhere"
    work.mkdir()
    np.save(work / "images.npy", data.val_x.numpy())
    uris = [model_uri, f"runs:/{run_id}/{contract.MODEL_NAME}"]
    script = LOAD_AND_PREDICT.format(packages=OUR_PACKAGES, uri=uri, model_uris=uris)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    classes = list(data.classes)
    for loaded_uri, seen in report.items():
        probs = np.load(work / (loaded_uri.replace(":", "_").replace("/", "_") + ".npy"))
        np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-6)
        assert seen["predicted"] == [classes[i] for i in expected.argmax(axis=1)]
        assert seen["classes"] == classes
        assert seen["columns"] == ["predicted", *(f"prob_{c}" for c in classes)]
        assert seen["signature_outputs"] == [*seen["columns"], "error"]
        assert seen["params"] == ["batch_size", "threshold", "on_unreadable"]
        assert not seen["trainables_loaded"]


def test_the_model_has_an_input_example_and_its_requirements(trained, store, tmp_path):
    cfg, data, state = trained
    uri, run_id = store
    model_uri = log_trial_model(uri, run_id, cfg, data, state, copy_trained_state(state))
    import mlflow

    with tracking._models._fluent_uri(uri):
        folder = mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "m"))
    files = set(os.listdir(folder))
    assert {"MLmodel", "input_example.json", "requirements.txt", "artifacts"} <= files
    example = json.loads((Path(folder) / "input_example.json").read_text())
    assert np.asarray(example).shape == (1, 1, 8, 8)
    requirements = (Path(folder) / "requirements.txt").read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    assert "+" not in requirements


def test_the_logged_model_is_the_best_epochs_not_the_last(trained, store):
    cfg, data, state = trained
    uri, run_id = store
    best = copy_trained_state(state)
    best_probs = evaluate(state.model, state.criterion, data.val_x, data.val_y, CPU).y_prob
    state.best_epoch = state.epoch
    list(fit(cfg.replace(max_epochs=2), data, CPU, state))  # the model moves on
    last = evaluate(state.model, state.criterion, data.val_x, data.val_y, CPU).y_prob
    assert not np.allclose(last, best_probs)
    model_uri = log_trial_model(uri, run_id, cfg, data, state, best)
    import mlflow

    with tracking._models._fluent_uri(uri):
        probs = mlflow.pyfunc.load_model(model_uri).predict(data.val_x.numpy())
    np.testing.assert_allclose(probs.filter(like="prob_").to_numpy(), best_probs, atol=1e-6)
    logged = MlflowClient(uri).get_logged_model(model_uri.removeprefix("models:/"))
    run = MlflowClient(uri).get_run(run_id)
    assert (logged.source_run_id, logged.experiment_id) == (run_id, run.info.experiment_id)
    assert logged.status.to_proto() == logged.status.READY.to_proto()


def test_a_checkpoint_carries_the_best_epochs_weights_when_they_are_not_its_own(tmp_path):
    cfg = TrialConfig(dataset="digits-lt", max_epochs=2, batch_size=32)
    data = limit_train(load_dataset("digits-lt", DataOptions()), 150)
    torch.manual_seed(0)
    state = build_training_state(cfg, data, CPU)
    epochs = iter(fit(cfg, data, CPU, state))
    next(epochs)
    at_one = copy_trained_state(state)
    next(epochs)
    state.best_epoch = 1  # as if epoch 2 was worse
    torch.save(
        {"state": state.state_dict(), "history": [], "best": at_one}, tmp_path / CHECKPOINT_FILE
    )
    again = build_training_state(cfg, data, CPU)
    _, best = load_checkpoint(tmp_path, again, CPU)
    assert again.epoch == 2 and again.best_epoch == 1
    assert all(torch.equal(best[k], at_one[k]) for k in at_one)
    # A checkpoint of the best epoch itself carries no copy: its own weights are the best.
    state.best_epoch = 2
    torch.save({"state": state.state_dict(), "history": []}, tmp_path / CHECKPOINT_FILE)
    _, best = load_checkpoint(tmp_path, again, CPU)
    own = state.model.trained_state_dict()
    assert all(torch.equal(best[k], own[k].cpu()) for k in own)
    assert not all(torch.equal(best[k], at_one[k]) for k in at_one)
    # The driver's loader, without an optimizer, reads the same best weights and epoch.
    trained = TrainedModel(*build_model_and_criterion(cfg, data, CPU))
    assert all(torch.equal(load_trained_model(tmp_path, trained)[k], own[k]) for k in own)
    assert trained.best_epoch == 2
    state.best_epoch = 1
    torch.save(
        {"state": state.state_dict(), "history": [], "best": at_one}, tmp_path / CHECKPOINT_FILE
    )
    assert all(torch.equal(load_trained_model(tmp_path, trained)[k], at_one[k]) for k in at_one)
    assert trained.best_epoch == 1


def test_the_drivers_model_from_a_checkpoint_builds_no_optimizer(tmp_path):
    """An optimizer's construction imports ``torch._dynamo`` (near two seconds); the driver
    loads a checkpoint's model for ``--confirm-seeds 0`` without one."""
    cfg = TrialConfig(dataset="digits-lt", max_epochs=1, batch_size=32)
    data = limit_train(load_dataset("digits-lt", DataOptions()), 60)
    state = build_training_state(cfg, data, CPU)
    torch.save({"state": state.state_dict(), "history": []}, tmp_path / CHECKPOINT_FILE)
    probe = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        import torch
        from trainables.config import TrialConfig
        from trainables.data import DataOptions, limit_train, load_dataset
        from trainables.engine import TrainedModel, build_model_and_criterion
        from trainables.edge.trial import load_trained_model
        cfg = TrialConfig(dataset="digits-lt", max_epochs=1, batch_size=32)
        data = limit_train(load_dataset("digits-lt", DataOptions()), 60)
        trained = TrainedModel(*build_model_and_criterion(cfg, data, torch.device("cpu")))
        load_trained_model(Path({str(tmp_path)!r}), trained)
        print("torch._dynamo" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registering_makes_versions_with_the_sweeps_tags(trained, store):
    cfg, data, state = trained
    uri, run_id = store
    model_uri = log_trial_model(uri, run_id, cfg, data, state, copy_trained_state(state))
    tags = {"sweep": "focal-sweep-1", "arm": "focal", "metric": "val_macro_f1"}
    assert tracking.register_model(uri, "digits", model_uri, run_id, tags) == "models:/digits/1"
    # The same model of the same run again (a resumed sweep): the version it already has.
    assert tracking.register_model(uri, "digits", model_uri, run_id, tags) == "models:/digits/1"
    other = log_trial_model(uri, run_id, cfg, data, state, copy_trained_state(state))
    assert tracking.register_model(uri, "digits", other, run_id, tags) == "models:/digits/2"
    version = MlflowClient(uri, registry_uri=uri).get_model_version("digits", "2")
    assert version.tags == tags and version.run_id == run_id
    with pytest.raises(ValueError, match="unknown model version tags"):
        tracking.register_model(uri, "digits", model_uri, run_id, {"colour": "blue"})
