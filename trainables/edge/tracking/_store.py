"""The MLflow store: its URI, the local SQLite store made whole or not at all, experiments,
and where the UI shows them."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass


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
