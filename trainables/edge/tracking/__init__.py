"""The one module of the sweep side that talks to MLflow. Layout: docs/tracking.md; the names
it writes: trainables/contract.py.

- ``_store``: the store's URI, the local SQLite store (made whole or not at all), experiments,
  the UI's address;
- ``_runs``: the parent run and each trial's run, their metrics, tags and files;
- ``_datasets``: the data as an MLflow dataset input;
- ``_models``: a trial's model logged, the winner registered.
"""

from trainables.edge.tracking._datasets import (
    DatasetRecord,
    dataset_record,
    log_dataset,
)
from trainables.edge.tracking._models import (
    log_python_model,
    register_model,
    run_model_uri,
)
from trainables.edge.tracking._runs import (
    TrialRun,
    child_runs,
    end_run,
    end_trial_run,
    ended_for_good,
    find_child_run,
    log_file,
    log_json,
    log_metrics,
    npz_bytes,
    png_bytes,
    reopen_run,
    set_tags,
    start_parent_run,
)
from trainables.edge.tracking._store import (
    DEFAULT_ARTIFACTS,
    DEFAULT_DB,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    METRICS_PER_BATCH,
    RUNS_VIEW,
    SYSTEM_METRICS_INTERVAL_S,
    UI_PORT,
    PendingExperiment,
    absolute_tracking_uri,
    client,
    create_local_store,
    default_tracking_uri,
    ensure_experiment,
    is_local_sqlite,
    is_server,
    runs_view_url,
    seed_local_store,
    ui_command,
)

__all__ = [
    "DEFAULT_ARTIFACTS",
    "DEFAULT_DB",
    "DatasetRecord",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "METRICS_PER_BATCH",
    "PendingExperiment",
    "RUNS_VIEW",
    "SYSTEM_METRICS_INTERVAL_S",
    "TrialRun",
    "UI_PORT",
    "absolute_tracking_uri",
    "child_runs",
    "client",
    "create_local_store",
    "dataset_record",
    "default_tracking_uri",
    "end_run",
    "end_trial_run",
    "ended_for_good",
    "ensure_experiment",
    "find_child_run",
    "is_local_sqlite",
    "is_server",
    "log_dataset",
    "log_file",
    "log_json",
    "log_metrics",
    "log_python_model",
    "npz_bytes",
    "png_bytes",
    "register_model",
    "reopen_run",
    "run_model_uri",
    "runs_view_url",
    "seed_local_store",
    "set_tags",
    "start_parent_run",
    "ui_command",
]
