"""The one module of the sweep side that talks to MLflow. Layout: docs/tracking.md; the names
it writes: trainables/contract.py."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainables.contract import (
    COMPLETED,
    DATASET_CONTEXT,
    INTERRUPTED,
    MODEL_NAME,
    MODEL_URI_TAG,
    NONFINITE_TAG,
    OUTCOME_TAG,
    PARENT_TAG,
    RAY_TRIAL_TAG,
    ROLE_TAG,
    STOPPED_EARLY,
    SWEEP_ROLE,
    VERSION_TAGS,
    encode_params,
)

if TYPE_CHECKING:
    from trainables.data import ImageData

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
METRICS_PER_BATCH = 900  # MLflow accepts at most 1000 metrics in one log_batch call

# System metrics (system/cpu_utilization_percentage, ...) are sampled this often, in seconds,
# unless MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL says otherwise: trials last seconds to minutes.
SYSTEM_METRICS_INTERVAL_S = 2.0
UI_PORT = 5000  # where ``mlflow ui`` listens by default
# The UI's runs table of an experiment in "model training" mode (MLflow 3's default mode is
# the GenAI one, whose landing page shows traces).
RUNS_VIEW = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # the UI names it "Machine learning"


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
    # Marked as a model-training experiment, so the UI offers its runs, not a traces page.
    return c.create_experiment(
        name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
    )


class PendingExperiment:
    """``ensure_experiment``, started on a thread when it has a new local store to create
    (seconds of table creation, done while Ray starts); otherwise run when ``id`` is asked,
    after Ray has started, so a refused sweep writes nothing to an existing store or server.
    ``discard`` removes a local store this created, for a sweep that stops before its first
    run, unless another sweep has begun to use it."""

    def __init__(self, uri: str, name: str) -> None:
        self._uri, self._name = uri, name
        self._db = Path(uri.removeprefix("sqlite:///")) if is_local_sqlite(uri) else None
        self._created_store = False  # set on the thread, read once it has ended
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._create, daemon=True)
        if self._db is not None and not self._db.exists():
            self._thread.start()

    def _create(self) -> None:
        """The new store, then the experiment in it. A store another sweep made meanwhile
        waits for ``id``, as any existing store does."""
        try:
            self._created_store = create_local_store(self._db)
        except BaseException as err:  # re-raised on the caller's thread by ``id``
            self._outcome["error"] = err
            return
        if self._created_store:
            self._ensure()

    def _ensure(self) -> None:
        try:
            self._outcome["id"] = ensure_experiment(self._uri, self._name)
        except BaseException as err:  # re-raised on the caller's thread by ``id``
            self._outcome["error"] = err

    def id(self) -> str:
        if self._thread.ident is not None:
            self._thread.join()
        if not self._outcome:
            self._ensure()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["id"]

    def discard(self) -> None:
        if self._thread.ident is None:
            return
        self._thread.join()
        if not self._created_store or _used_by_others(self._db, self._outcome.get("id")):
            return
        self._db.unlink(missing_ok=True)
        artifacts = self._db.parent / DEFAULT_ARTIFACTS
        if artifacts.is_dir() and not any(artifacts.iterdir()):
            artifacts.rmdir()


def create_local_store(db: Path, cache: Path | None = None) -> bool:
    """Make a new local store at ``db``, whole, unless one is there by then; returns whether
    this call made it. Its tables are laid in a file beside it, which takes the name only
    while the name is free: two sweeps started at once in one folder both used to lay it,
    the second over what the first had begun to write."""
    with tempfile.TemporaryDirectory(dir=db.parent, prefix=f".{db.name}-new-") as tmp:
        made = Path(tmp) / db.name
        if not seed_local_store(made, cache):
            _lay_empty_store(made)  # MLflow's migrations, as without the cache
        return _claim(made, db)


def _claim(made: Path, db: Path) -> bool:
    """Give ``made`` the name ``db`` unless it is taken: a hard link, which fails on an
    existing name as O_EXCL does, and shows the whole file at once; where the file system has
    no hard links, an O_EXCL file filled with it."""
    try:
        os.link(made, db)
    except FileExistsError:
        return False
    except OSError:
        try:
            with open(db, "xb") as claimed, open(made, "rb") as source:
                shutil.copyfileobj(source, claimed)
        except FileExistsError:
            return False
    return True


def _used_by_others(db: Path, experiment_id: str | None) -> bool:
    """Whether a store this sweep made holds a run, or an experiment besides its own and
    MLflow's Default: another sweep, started at once in the same folder, found it there."""
    mine = int(experiment_id) if experiment_id is not None else -1
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=rw", uri=True)) as db_:
            runs = db_.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            others = db_.execute(
                "SELECT COUNT(*) FROM experiments WHERE experiment_id NOT IN (0, ?)", (mine,)
            ).fetchone()[0]
    except sqlite3.Error:
        return True  # what cannot be read is kept
    return bool(runs or others)


def seed_local_store(db: Path, cache: Path | None = None) -> bool:
    """Lay a new local store's tables by copying an empty store made once per MLflow version
    (creating them runs MLflow's migrations, about a second; the copy takes milliseconds).
    The copy holds no experiment: MLflow makes its Default experiment on first use, with its
    own time and artifact location. Returns whether it copied; on any trouble with the cache
    MLflow creates the tables itself, as without it."""
    from mlflow.exceptions import MlflowException

    try:
        shutil.copyfile(_empty_store(cache or _cache_dir()), db)
    except (OSError, sqlite3.Error, MlflowException):
        db.unlink(missing_ok=True)
        return False
    return True


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "finetune-sweeps"


def _empty_store(cache: Path) -> Path:
    """The empty store of this MLflow version, made in the cache on first use."""
    import mlflow

    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if template.is_file():
        return template
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        made = Path(tmp).resolve() / template.name
        _lay_empty_store(made)
        os.replace(made, template)  # whole, or not there: another sweep may be making one
    return template


def _lay_empty_store(db: Path) -> None:
    """MLflow's tables at ``db``, without the Default experiment MLflow makes as it lays
    them (its artifact location names the folder it was made in)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{db}", db.parent.as_uri())
    store.engine.dispose()
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("DELETE FROM experiments")


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def ui_command(uri: str) -> str | None:
    """The command that serves the store's UI; None for a server, which serves its own."""
    if is_server(uri):
        return None
    return f"mlflow ui --backend-store-uri {uri}"


def runs_view_url(uri: str, experiment_id: str) -> str:
    """The UI page of the experiment's runs table in model-training mode: on the server
    itself, or where ``ui_command`` serves a local store."""
    base = uri.rstrip("/") if is_server(uri) else f"http://127.0.0.1:{UI_PORT}"
    return f"{base}/{RUNS_VIEW.format(experiment_id=experiment_id)}"


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


@dataclass(frozen=True)
class DatasetRecord:
    """A sweep's data as an MLflow dataset: computed once on the driver, logged by every run."""

    name: str
    digest: str  # of the pixels and labels of every split: another split, another digest
    source: str  # the --dataset spec as given
    schema: str  # JSON: the images' and labels' tensor specs
    profile: str  # JSON: images and class counts per split
    split_seed: int = 0  # of the train/val split hashed

    def entity(self):
        from mlflow.entities import Dataset

        return Dataset(
            name=self.name,
            digest=self.digest,
            source_type="local",
            source=json.dumps({"uri": self.source}),
            schema=self.schema,
            profile=self.profile,
        )

    def for_split(self, data: ImageData) -> DatasetRecord:
        """The record of ``data`` split again (a confirmation run of --confirm-splits): the
        same images pooled otherwise, so the digest follows from this one and the seed,
        without hashing the pixels again in every trial."""
        if data.split_seed == self.split_seed:
            return self
        digest = hashlib.sha256(f"{self.digest} split {data.split_seed}".encode())
        return dataclasses.replace(
            self,
            digest=digest.hexdigest()[:16],
            profile=json.dumps(_profile(data)),
            split_seed=data.split_seed,
        )


def dataset_record(data: ImageData, spec: str) -> DatasetRecord:
    from trainables.data import TENSOR_FIELDS

    digest = hashlib.sha256(json.dumps([data.name, list(data.classes)]).encode())
    for field in TENSOR_FIELDS:
        values = np.ascontiguousarray(getattr(data, field).numpy())
        digest.update(f"{field}{values.dtype}{values.shape}".encode())
        digest.update(values.reshape(-1).view(np.uint8))  # a view: the pixels are not copied
    return DatasetRecord(
        name=data.name,
        digest=digest.hexdigest()[:16],
        source=spec,
        schema=json.dumps({"mlflow_tensorspec": _tensor_specs(data)}),
        profile=json.dumps(_profile(data)),
        split_seed=data.split_seed,
    )


def _tensor_specs(data: ImageData) -> dict[str, str]:
    from mlflow.types.schema import Schema, TensorSpec

    def spec(tensor, name: str) -> str:
        shape = (-1, *tensor.shape[1:])
        return Schema([TensorSpec(np.dtype(str(tensor.numpy().dtype)), shape, name)]).to_json()

    return {"features": spec(data.train_x, "image"), "targets": spec(data.train_y, "label")}


def _profile(data: ImageData) -> dict[str, Any]:
    """Flat, as the UI's dataset panel lists a profile's entries one per line."""
    from trainables.data import SPLITS

    profile: dict[str, Any] = {
        "classes": len(data.classes),
        "multilabel": data.multilabel,
        "split_seed": data.split_seed,
    }
    for split in SPLITS:
        counts = data.class_counts(split).tolist()
        profile[f"{split}_images"] = int(getattr(data, f"{split}_y").shape[0])
        profile[f"{split}_class_counts"] = dict(zip(data.classes, counts, strict=True))
    return profile


def log_dataset(uri: str, run_id: str, record: DatasetRecord) -> None:
    from mlflow.entities import DatasetInput, InputTag

    context = InputTag("mlflow.data.context", DATASET_CONTEXT)
    client(uri).log_inputs(run_id, datasets=[DatasetInput(record.entity(), tags=[context])])


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
    uri: str, name: str, model_uri: str, run_id: str, tags: Mapping[str, str]
) -> str:
    """A new version of the registered model ``name`` (created when new) from ``model_uri``;
    returns ``models:/<name>/<version>``."""
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
            name, source=model_uri, run_id=run_id, tags=dict(tags), model_id=model_id
        )
    return f"models:/{name}/{version.version}"


def _version_of(registry, name: str, model_uri: str, run_id: str) -> str | None:
    """The version of ``name`` already registered from this model of this run, if any."""
    for version in registry.search_model_versions(f"name = '{name}'"):
        if version.run_id == run_id and version.source == model_uri:
            return version.version
    return None
