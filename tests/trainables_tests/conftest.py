"""Fixtures shared by the tests that run ``train_trial`` without Ray."""

import pytest


@pytest.fixture
def store(tmp_path):
    """Where a trial logs: a fresh SQLite MLflow store and a sweep's parent run in it; no role
    logs a model. (A test module may define its own ``store``.)"""
    from trainables.edge import tracking
    from trainables.edge.trial import TrackingTarget

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.ensure_experiment(uri, "trials")
    parent = tracking.start_parent_run(uri, experiment, "sweep", tags={}, params={})
    return TrackingTarget(uri, experiment, parent, model_roles=())
