"""The one module of the sweep side that talks to MLflow. Layout: docs/tracking.md."""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
METRICS_PER_BATCH = 900  # MLflow accepts at most 1000 metrics in one log_batch call

# How a trial's run ended (tag ``outcome``).
COMPLETED = "completed"
STOPPED_EARLY = "stopped_early"
DIVERGED = "diverged"
FAILED = "failed"
INTERRUPTED = "interrupted"  # the sweep was stopped (Ctrl-C, a killed driver); --resume continues
OUTCOME_TAG = "outcome"
NONFINITE_TAG = "nonfinite_metrics"  # metrics that became NaN or infinite, comma-separated
# Tags of the parent run that let ``tune.py --resume`` rebuild and continue the sweep.
ARGV_TAG = "sweep.argv"  # the command line as typed, JSON
STAMP_TAG = "sweep.stamp"  # names the sweep's Ray Tune experiments
STORAGE_TAG = "sweep.storage_path"  # where those experiments live


def default_tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else an SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


def absolute_tracking_uri(uri: str) -> str:
    """Local stores with an absolute path: trials run in folders of their own, where a
    relative ``sqlite:///mlflow.db`` or ``./mlruns`` would name another store."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).expanduser().resolve()}"
    if "://" not in uri and not uri.startswith(("databricks", "file:")):
        return str(Path(uri).expanduser().resolve())
    return uri


def is_local_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:///")


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The experiment's id, creating it when new. A local store keeps its artifacts beside it."""
    c = client(uri)
    experiment = c.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            c.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    location = None
    if is_local_sqlite(uri):
        db = Path(uri.removeprefix("sqlite:///"))
        location = (db.parent / DEFAULT_ARTIFACTS).resolve().as_uri()
    return c.create_experiment(name, artifact_location=location)


def ui_command(uri: str) -> str:
    if is_local_sqlite(uri):
        return f"mlflow ui --backend-store-uri {uri}"
    return f"open {uri} in a browser (or: mlflow ui --backend-store-uri {uri})"


def _params(values: Mapping[str, Any]) -> dict[str, str]:
    # MLflow params are strings; None is left out so conditional params stay absent.
    return {k: _param_str(v) for k, v in values.items() if v is not None}


def _param_str(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "-".join(str(v) for v in value) if value else "none"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def start_parent_run(
    uri: str, experiment_id: str, name: str, tags: Mapping[str, str], params: Mapping[str, Any]
) -> str:
    from mlflow.entities import Param

    c = client(uri)
    run = c.create_run(experiment_id, run_name=name, tags={**tags, "role": "sweep"})
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _params(params).items()])
    return run.info.run_id


def log_json(uri: str, run_id: str, payload: Any, artifact_file: str) -> None:
    client(uri).log_dict(run_id, payload, artifact_file)


def set_tags(uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client(uri).log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run ended unless it already is, so a finished run is never re-opened."""
    c = client(uri)
    if c.get_run(run_id).info.status == "RUNNING":
        c.set_terminated(run_id, status=status)


def find_child_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> str | None:
    """The child run of a Ray trial, if one was opened before (a restored trial resumes it)."""
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.ray_trial_id = '{trial_id}'"
    runs = client(uri).search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0].info.run_id if runs else None


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    return client(uri).search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'", max_results=5000
    )


def end_trial_run(uri: str, run_id: str, outcome: str) -> None:
    """Tag a trial's run with how it ended and close it, unless it is closed already (its
    trial closed it, or an earlier pass did): a run's first ending is the true one."""
    c = client(uri)
    if c.get_run(run_id).info.status != "RUNNING":
        return
    set_tags(uri, run_id, {OUTCOME_TAG: outcome})
    status = {COMPLETED: "FINISHED", STOPPED_EARLY: "FINISHED", INTERRUPTED: "KILLED"}
    c.set_terminated(run_id, status=status.get(outcome, "FAILED"))


def reopen_run(uri: str, run_id: str) -> None:
    client(uri).update_run(run_id, status="RUNNING")


class TrialRun:
    """The child run of one trial: params and tags once, metrics each epoch, artifacts at the
    best epoch. Every call is a plain client call, so concurrent trials never share state."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri = uri
        self.run_id = run_id
        self.client = client(uri)

    @classmethod
    def open(
        cls,
        uri: str,
        *,
        experiment_id: str,
        parent_run_id: str,
        run_name: str,
        tags: Mapping[str, str],
        params: Mapping[str, Any],
    ) -> TrialRun:
        from mlflow.entities import Param

        c = client(uri)
        trial_id = tags.get("ray_trial_id")
        existing = trial_id and find_child_run(uri, experiment_id, parent_run_id, trial_id)
        if existing:
            c.update_run(existing, status="RUNNING")
            return cls(uri, existing)
        run = c.create_run(
            experiment_id, run_name=run_name, tags={**tags, PARENT_TAG: parent_run_id}
        )
        c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in _params(params).items()])
        return cls(uri, run.info.run_id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # Values that are not finite are logged as they are (MLflow stores NaN and inf), and
        # named in a tag, so a run whose metric broke shows it instead of a silent gap.
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        broken = sorted(k for k, v in metrics.items() if not np.isfinite(v))
        if broken:
            self.set_tags({NONFINITE_TAG: ",".join(broken)[:4000]})
        for start in range(0, len(items), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[start : start + METRICS_PER_BATCH])

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_arrays(self, arrays: Mapping[str, np.ndarray], artifact_file: str) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        self.log_bytes(buffer.getvalue(), artifact_file)

    def log_bytes(self, payload: bytes, artifact_file: str) -> None:
        directory, _, name = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(payload)
            self.client.log_artifact(self.run_id, str(path), directory or None)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        set_tags(self.uri, self.run_id, tags)

    def end(self, status: str = "FINISHED") -> None:
        end_run(self.uri, self.run_id, status)
