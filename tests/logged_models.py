"""Models in an MLflow store for ``analysis predict``: one as tune.py logs it, and a foreign one
whose code leaves a mark when it runs."""

from __future__ import annotations

from pathlib import Path

import torch

from trainables.config import TrialConfig
from trainables.data import DataOptions, limit_train, load_dataset
from trainables.edge import tracking
from trainables.edge.model_export import log_trial_model
from trainables.edge.trial import copy_trained_state
from trainables.engine import build_training_state, fit


def log_classifier(uri: str, experiment: str = "predict") -> str:
    """The small CNN after one epoch on 150 of the long-tailed digits (8 x 8 grey), logged as
    a trial logs its model; returns the model's URI."""
    torch.manual_seed(0)
    cfg = TrialConfig(dataset="digits-lt", max_epochs=1, batch_size=32)
    data = limit_train(load_dataset("digits-lt", DataOptions()), 150)
    state = build_training_state(cfg, data, torch.device("cpu"))
    list(fit(cfg, data, torch.device("cpu"), state))
    experiment_id = tracking.ensure_experiment(uri, experiment)
    run = tracking.TrialRun.open(
        uri, experiment_id=experiment_id, parent_run_id=None, run_name="model", tags={}, params={}
    )
    model_uri = log_trial_model(uri, run.run_id, cfg, data, state, copy_trained_state(state))
    run.end()
    return model_uri


def log_marker_model(uri: str, marker: Path) -> str:
    """A python_function model of someone else's: a pickled ``PythonModel`` whose
    ``load_context`` writes ``marker``, so a test sees whether its code ran."""
    import mlflow
    import mlflow.pyfunc

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run():
            model = _marker_model(marker)
            model_uri = mlflow.pyfunc.log_model(name="model", python_model=model).model_uri
    finally:
        mlflow.set_tracking_uri(previous)
    marker.unlink(missing_ok=True)  # MLflow 3.17 runs load_context while logging the model
    return model_uri


def _marker_model(marker: Path):
    import mlflow.pyfunc

    class Marker(mlflow.pyfunc.PythonModel):  # local: cloudpickle stores it by value
        def load_context(self, context) -> None:
            Path(marker).write_text("the model's code ran")

        # Type hints: without them MLflow warns as the class is made.
        def predict(self, context, model_input: list[str], params=None) -> list[str]:
            return model_input

    return Marker()
