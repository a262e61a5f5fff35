"""Models: a trial's pyfunc model logged to its run, and the winner registered."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainables.contract import (
    MODEL_NAME,
    MODEL_URI_TAG,
    VERSION_TAGS,
)

if TYPE_CHECKING:
    pass

from trainables.edge.tracking._runs import set_tags
from trainables.edge.tracking._store import client


@contextlib.contextmanager
def _fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's model logging reads the global tracking URI; point it at ``uri`` meanwhile."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def log_python_model(
    uri: str,
    run_id: str,
    *,
    code_path: Path,
    artifacts: Mapping[str, str],
    metadata: Mapping[str, Any],
    outputs: Mapping[str, str],
    optional_outputs: Mapping[str, str],
    params: Mapping[str, Any],
    input_example: Any,
    requirements: list[str],
    step: int,
) -> str:
    """Log a pyfunc model from code (the file at ``code_path``, which MLflow runs to load it)
    as the run's model at ``step``; tag the run with its URI, and return the URI. The
    signature names the output columns (name -> MLflow type) and ``predict``'s params; its
    input is left open, because the model takes arrays as well as file paths. (No
    ``model_config``: MLflow would log it as params of the run, beside the trial's own.)"""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per file
    import mlflow
    from mlflow.models import Model, ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    columns = [ColSpec(kind, name) for name, kind in outputs.items()]
    columns += [ColSpec(kind, name, required=False) for name, kind in optional_outputs.items()]
    signature = ModelSignature(
        inputs=None,
        outputs=Schema(columns),
        params=ParamSchema([ParamSpec(k, _param_type(v), v) for k, v in params.items()]),
    )
    # Created here, in the run's experiment: left to itself, Model.log puts a model logged
    # outside an active run into the default experiment (and its artifacts beside it).
    c = client(uri)
    run = c.get_run(run_id)
    logged = c.create_logged_model(
        run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        params=dict(run.data.params),
    )
    with _fluent_uri(uri):
        info = Model.log(
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(code_path),
            artifacts=dict(artifacts),
            metadata=dict(metadata),
            signature=signature,
            input_example=input_example,
            pip_requirements=requirements,
            step=step,
        )
    set_tags(uri, run_id, {MODEL_URI_TAG: info.model_uri})
    return info.model_uri


def _param_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {int: "long", float: "double"}.get(type(value), "string")


def run_model_uri(uri: str, run_id: str) -> str | None:
    return client(uri).get_run(run_id).data.tags.get(MODEL_URI_TAG)


def register_model(
    uri: str,
    name: str,
    model_uri: str,
    run_id: str,
    tags: Mapping[str, str],
    description: str = "",
) -> str:
    """A new version of the registered model ``name`` (created when new) from ``model_uri``,
    described by ``description`` (the sweep's verdict); returns ``models:/<name>/<version>``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    unknown = sorted(set(tags) - set(VERSION_TAGS))
    if unknown:
        raise ValueError(f"unknown model version tags {unknown}; known: {sorted(VERSION_TAGS)}")
    registry = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        registry.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = _version_of(registry, name, model_uri, run_id)
    if existing is not None:  # a resumed sweep registers its winner once
        return f"models:/{name}/{existing}"
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    with _fluent_uri(uri):  # the registry resolves the source through the global store
        version = registry.create_model_version(
            name,
            source=model_uri,
            run_id=run_id,
            tags=dict(tags),
            model_id=model_id,
            description=description or None,
        )
    return f"models:/{name}/{version.version}"


def _version_of(registry, name: str, model_uri: str, run_id: str) -> str | None:
    """The version of ``name`` already registered from this model of this run, if any."""
    for version in registry.search_model_versions(f"name = '{name}'"):
        if version.run_id == run_id and version.source == model_uri:
            return version.version
    return None
