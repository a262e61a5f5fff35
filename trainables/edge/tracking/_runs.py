"""Runs: the parent run, each trial's run (opened, continued after a restart, ended with its
outcome), their metrics, tags, files and pictures."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainables.contract import (
    COMPLETED,
    INTERRUPTED,
    NONFINITE_TAG,
    OUTCOME_TAG,
    PARENT_TAG,
    RAY_TRIAL_TAG,
    ROLE_TAG,
    STOPPED_EARLY,
    SWEEP_ROLE,
    encode_params,
)

if TYPE_CHECKING:
    pass

from trainables.edge.tracking._datasets import DatasetRecord, log_dataset
from trainables.edge.tracking._store import METRICS_PER_BATCH, SYSTEM_METRICS_INTERVAL_S, client


def log_metrics(uri: str, run_id: str, metrics: Mapping[str, float]) -> None:
    """Single values (step 0), such as the parent run's answer."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
    for start in range(0, len(items), METRICS_PER_BATCH):
        client(uri).log_batch(run_id, metrics=items[start : start + METRICS_PER_BATCH])


def log_file(uri: str, run_id: str, path: Path, artifact_file: str) -> None:
    """The file at ``path`` as the run's artifact ``artifact_file`` (its own name aside)."""
    import shutil

    directory, _, name = artifact_file.rpartition("/")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / name
        shutil.copyfile(path, copy)
        client(uri).log_artifact(run_id, str(copy), directory or None)


def start_parent_run(
    uri: str,
    experiment_id: str,
    name: str,
    tags: Mapping[str, str],
    params: Mapping[str, Any],
    dataset: DatasetRecord | None = None,
) -> str:
    from mlflow.entities import Param

    c = client(uri)
    run = c.create_run(experiment_id, run_name=name, tags={**tags, ROLE_TAG: SWEEP_ROLE})
    c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in encode_params(params).items()])
    if dataset is not None:
        log_dataset(uri, run.info.run_id, dataset)
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


def find_child_run(uri: str, experiment_id: str, parent_run_id: str, trial_id: str) -> Any:
    """The child run (MLflow's ``Run``, status and tags with it) of a Ray trial, if one was
    opened before (a restored trial resumes it); None if not."""
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.{RAY_TRIAL_TAG} = '{trial_id}'"
    runs = client(uri).search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


_LOOK_UP = object()  # TrialRun.open: find the trial's earlier run itself


def child_runs(uri: str, experiment_id: str, parent_run_id: str, *, running: bool = False) -> list:
    """The parent run's children (only those still running, with ``running``)."""
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if running:
        query += " and attributes.status = 'RUNNING'"
    return client(uri).search_runs([experiment_id], filter_string=query, max_results=5000)


def ended_for_good(run: Any) -> bool:
    """A trial's run (MLflow's ``Run``) that ended as its trial ended it: completed, stopped,
    diverged or failed. Its trial is not trained again; one interrupted (Ctrl-C, a dead
    driver) goes on."""
    return run.info.status != "RUNNING" and run.data.tags.get(OUTCOME_TAG) != INTERRUPTED


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
        self._monitor = None  # MLflow's system metrics monitor, while it runs

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
        dataset: DatasetRecord | None = None,
        existing: Any = _LOOK_UP,
    ) -> TrialRun:
        """``existing``: the trial's earlier run (``find_child_run``) when the caller has
        already looked for it, None when it has none."""
        from mlflow.entities import Param

        c = client(uri)
        trial_id = tags.get(RAY_TRIAL_TAG)
        if existing is _LOOK_UP:
            existing = trial_id and find_child_run(uri, experiment_id, parent_run_id, trial_id)
        if existing:
            c.update_run(existing.info.run_id, status="RUNNING")
            return cls(uri, existing.info.run_id)
        run = c.create_run(
            experiment_id, run_name=run_name, tags={**tags, PARENT_TAG: parent_run_id}
        )
        c.log_batch(run.info.run_id, params=[Param(k, v) for k, v in encode_params(params).items()])
        if dataset is not None:
            log_dataset(uri, run.info.run_id, dataset)
        return cls(uri, run.info.run_id)

    def start_system_metrics(self) -> None:
        """CPU, memory, disk, network and (with nvidia-ml-py and a GPU) GPU use, sampled in a
        thread of this process into ``system/*`` metrics until ``stop_system_metrics``."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            self.run_id,
            sampling_interval=SYSTEM_METRICS_INTERVAL_S,
            resume_logging=True,  # a restored trial's run goes on from its last sample
            tracking_uri=self.uri,
        )
        # One sample at once: Ray may end a trial it stops (and its process) before the
        # first interval has passed or the trial has written what is left.
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
        monitor.start()
        self._monitor = monitor

    def stop_system_metrics(self) -> None:
        """Stop sampling and write what is left; safe to call again."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        monitor.finish()
        # MLflow's monitor drops the samples since its last write when stopped; a trial
        # shorter than one interval would have none. They are written here, averaged.
        leftover = monitor.aggregate_metrics()
        if leftover:
            monitor.publish_metrics(leftover)
            monitor.mlflow_logger.flush()

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

    def log_files(self, files: Mapping[str, str | bytes]) -> None:
        """Several artifacts, ``{path in the run: content}``, in one MLflow call: each call
        costs a round trip to the artifact store, whatever its size."""
        if not files:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for artifact_file, content in files.items():
                path = Path(tmp) / artifact_file
                path.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(content, str):
                    path.write_text(content)
                else:
                    path.write_bytes(content)
            self.client.log_artifacts(self.run_id, tmp)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        set_tags(self.uri, self.run_id, tags)

    def end(self, status: str = "FINISHED") -> None:
        self.stop_system_metrics()  # its last samples belong to the run
        end_run(self.uri, self.run_id, status)


def npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def png_bytes(figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
