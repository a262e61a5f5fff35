"""The one module that talks to MLflow: find a sweep, load its runs as pandas, read artifacts.

Everything else in the package works on the tables and arrays returned here, so it can be
tested without a store. The layout read is docs/tracking.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from analysis.classes import ClassInfo
from analysis.errors import AnalysisError
from trainables import contract
from trainables.contract import (
    CLASSES_ARTIFACT,
    HISTORY_ARTIFACT,
    PARENT_TAG,
    REPORT_ARTIFACT_DIR,
    REPORT_ARTIFACT_NAME,
)

DEFAULT_DB = "mlflow.db"
RUN_COLUMNS = ["run_id", "run_name", "status", "start_time", "end_time"]


def default_tracking_uri() -> str:
    """The store tune.py writes to: ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / DEFAULT_DB}"


@dataclass(frozen=True)
class Sweep:
    """One parent run and its child runs (one row each, columns ``params.*``, ``metrics.*``,
    ``tags.*`` as in ``mlflow.search_runs``)."""

    experiment_id: str
    experiment_name: str
    parent_run_id: str
    parent_run_name: str
    tags: dict[str, str]
    params: dict[str, str]
    runs: pd.DataFrame = field(repr=False)

    @property
    def factor(self) -> str | None:
        return self.tags.get(contract.FACTOR_TAG)

    @property
    def metric(self) -> str:
        return self.tags.get(contract.METRIC_TAG) or contract.DEFAULT_METRIC

    @property
    def mode(self) -> str:
        return self.tags.get(contract.MODE_TAG) or "max"

    @property
    def arms(self) -> list[str]:
        arms = self.tags.get(contract.ARMS_TAG) or ""
        return [a for a in arms.split(contract.ARMS_SEPARATOR) if a]

    @property
    def finished(self) -> pd.DataFrame:
        return self.runs[self.runs["status"] == "FINISHED"]


class Store:
    """A read-mostly view of one tracking store; its only write is the report artifact."""

    def __init__(self, tracking_uri: str) -> None:
        _check_store_exists(tracking_uri)
        # Artifact reads draw a progress bar per file on stderr, which is for errors here.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.tracking import MlflowClient  # slow import, only once a store is needed

        self.tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._histories: dict[str, pd.DataFrame] = {}

    # Sweeps and runs.
    def load_sweep(self, experiment: str, parent_run: str | None = None) -> Sweep:
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None or exp.lifecycle_stage != "active":
            raise AnalysisError(f"no experiment '{experiment}' in {self.tracking_uri}")
        parents = self._search(
            exp.experiment_id, f"tags.{contract.ROLE_TAG} = '{contract.SWEEP_ROLE}'"
        )
        if not parents:
            raise AnalysisError(
                f"experiment '{experiment}' has no sweep run "
                f"(tag {contract.ROLE_TAG}={contract.SWEEP_ROLE})"
            )
        parent = _pick_parent(parents, parent_run, experiment)
        children = self._search(exp.experiment_id, f"tags.`{PARENT_TAG}` = '{parent.info.run_id}'")
        return Sweep(
            experiment_id=exp.experiment_id,
            experiment_name=exp.name,
            parent_run_id=parent.info.run_id,
            parent_run_name=parent.info.run_name or parent.info.run_id,
            tags=dict(parent.data.tags),
            params=dict(parent.data.params),
            runs=runs_table(children),
        )

    def _search(self, experiment_id: str, filter_string: str) -> list:
        found, token = [], None
        while True:
            page = self._client.search_runs(
                [experiment_id], filter_string, max_results=1000, page_token=token
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    # Per-run data.
    def history(self, run_id: str) -> pd.DataFrame:
        """Metrics per epoch (index ``epoch``), from ``history.csv`` or else MLflow's history."""
        if run_id not in self._histories:
            try:
                table = pd.read_csv(io.BytesIO(self.read_bytes(run_id, HISTORY_ARTIFACT)))
            except AnalysisError:
                table = self._metric_history(run_id)
            self._histories[run_id] = _index_by_epoch(table)
        return self._histories[run_id]

    def _metric_history(self, run_id: str) -> pd.DataFrame:
        keys = [
            k for k in self._client.get_run(run_id).data.metrics if not contract.is_best_metric(k)
        ]
        series = {}
        for key in keys:
            points = self._client.get_metric_history(run_id, key)
            series[key] = pd.Series({p.step: p.value for p in points}, dtype=float)
        table = pd.DataFrame(series)
        return table.rename_axis(contract.EPOCH_COLUMN).reset_index()

    def read_bytes(self, run_id: str, path: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self._client.download_artifacts(run_id, path, dst_path=tmp)
            except Exception as error:  # MLflow raises several types for a missing file
                raise AnalysisError(f"run {run_id[:8]} has no artifact '{path}'") from error
            return Path(local).read_bytes()

    def read_json(self, run_id: str, path: str) -> Any:
        return json.loads(self.read_bytes(run_id, path))

    def read_csv(self, run_id: str, path: str, **kwargs: Any) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(self.read_bytes(run_id, path)), **kwargs)

    def read_npz(self, run_id: str, path: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.read_bytes(run_id, path)), allow_pickle=False) as arrays:
            return {k: arrays[k] for k in arrays.files}

    def classes(self, sweep: Sweep) -> ClassInfo:
        return ClassInfo.from_json(self.read_json(sweep.parent_run_id, CLASSES_ARTIFACT))

    def model_description(self, model_uri: str) -> Any:
        """MLflow's description of the model at ``model_uri`` (``mlflow.models.ModelInfo``):
        its MLmodel file only, read as YAML; none of the model's code runs."""
        import mlflow.models

        with self._reading_model(model_uri):
            return mlflow.models.get_model_info(model_uri)

    def load_model(self, model_uri: str) -> Any:
        """The MLflow pyfunc model at ``model_uri`` (``models:/NAME/VERSION``, ``models:/ID``,
        ``runs:/RUN_ID/model``), read through this store. Loading runs the model's code:
        check ``model_description`` first."""
        import mlflow.pyfunc

        with self._reading_model(model_uri):
            return mlflow.pyfunc.load_model(model_uri)

    @contextlib.contextmanager
    def _reading_model(self, model_uri: str) -> Iterator[None]:
        """MLflow pointed at this store meanwhile; its refusal as one line."""
        import mlflow
        from mlflow.exceptions import MlflowException

        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            yield
        except MlflowException as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise AnalysisError(f"cannot load model {model_uri} ({reason})") from None
        finally:
            mlflow.set_tracking_uri(previous)

    def log_report(self, run_id: str, html_file: Path) -> str:
        """Attach the report to the parent run as ``report/report.html``; returns that path."""
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / REPORT_ARTIFACT_NAME
            shutil.copyfile(html_file, staged)
            self._client.log_artifact(run_id, str(staged), REPORT_ARTIFACT_DIR)
        return f"{REPORT_ARTIFACT_DIR}/{REPORT_ARTIFACT_NAME}"


def runs_table(runs: list) -> pd.DataFrame:
    """MLflow runs as one row each, columns named like ``mlflow.search_runs`` names them."""
    rows = []
    for run in runs:
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name or run.info.run_id,
            "status": run.info.status,
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    return table.sort_values("start_time", kind="stable").reset_index(drop=True)


def _pick_parent(parents: list, wanted: str | None, experiment: str):
    if wanted is None:
        # The latest sweep: what a user who just ran tune.py means.
        return max(parents, key=lambda r: r.info.start_time or 0)
    matches = [p for p in parents if wanted in (p.info.run_id, p.info.run_name)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"{p.info.run_name} ({p.info.run_id[:8]})" for p in parents[:5])
    if matches:
        raise AnalysisError(f"several sweeps are named '{wanted}'; pass a run id ({known})")
    raise AnalysisError(f"no sweep run '{wanted}' in experiment '{experiment}' (sweeps: {known})")


def _index_by_epoch(table: pd.DataFrame) -> pd.DataFrame:
    if contract.EPOCH_COLUMN in table.columns:
        table = table.set_index(contract.EPOCH_COLUMN)
    elif "step" in table.columns:
        table = table.set_index("step")
    else:
        table.index = pd.RangeIndex(1, len(table) + 1)
    table.index = table.index.astype(int)
    return table.rename_axis(contract.EPOCH_COLUMN).sort_index()


def _check_store_exists(uri: str) -> None:
    """Opening a missing SQLite file or folder would create an empty store: refuse instead."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if path is not None and str(path) != ":memory:" and not path.exists():
            raise AnalysisError(
                f"no MLflow store at {path} (set --tracking-uri or MLFLOW_TRACKING_URI)"
            )
    elif parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else uri)
        if not path.exists():
            raise AnalysisError(f"no MLflow store at {path} (set --tracking-uri)")
