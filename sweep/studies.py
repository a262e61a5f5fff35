"""Each arm's Optuna study, saved where Optuna's own tools open it.

During the search each arm's sampler keeps an in-memory Optuna study (Ray's ``OptunaSearch``
inside ``sweep.arms.ArmsSearcher``). Once the sweep has ended, the studies as Ray saved them
with the experiment are copied into an Optuna journal file, one study per arm named by
the arm, and logged with the parent run (``optuna/journal.log``): ``optuna-dashboard FILE``
shows them and ``optuna.load_study`` reopens them. Each trial carries the user attributes
``ray_trial_id`` and ``mlflow_run_id``. ``--optuna-storage URL`` also copies them into that
database, as ``<experiment>-<stamp>-<arm>``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sweep.plan import SweepPlan
from trainables import contract
from trainables.config import numbered_run_name
from trainables.edge import tracking
from trainables.edge.trial import TrackingTarget

RAY_TRIAL_ATTR = "ray_trial_id"
MLFLOW_RUN_ATTR = "mlflow_run_id"


def journal_path(plan: SweepPlan) -> Path | None:
    """Beside the sweep's Ray Tune experiment; None when that is remote (the parent run's
    artifact is then the only copy)."""
    if "://" in plan.storage_path:
        return None
    return Path(plan.storage_path) / f"{plan.space.name}-optuna-{plan.stamp}.log"


def save_studies(plan: SweepPlan, searcher: Any, search_path: str, target: TrackingTarget) -> None:
    """Copy the arms' studies of the search phase at ``search_path`` into a journal file
    (rewritten, so a resumed sweep holds each trial once) and log it with the parent run.
    ``searcher`` is a fresh ``ArmsSearcher`` of the sweep, into which Ray's saved state is
    read."""
    with _local_copy(search_path) as folder:
        searcher.restore_from_dir(folder)
    runs = tracking.child_runs(target.uri, target.experiment_id, target.parent_run_id)
    run_ids = _search_run_ids(runs)
    run_names = {run.info.run_id: run.info.run_name or "" for run in runs}
    with _journal_file(plan) as path:
        journal = journal_storage(path)
        for arm, arm_searcher in searcher.searchers.items():
            study = copy_study(arm_searcher, journal, arm, run_ids)
            _number_search_runs(target.uri, study.get_trials(deepcopy=False), run_names)
        tracking.log_file(target.uri, target.parent_run_id, path, contract.OPTUNA_JOURNAL_ARTIFACT)
    if plan.optuna_storage:
        names = {arm: f"{plan.experiment}-{plan.stamp}-{arm}" for arm in searcher.searchers}
        for arm, arm_searcher in searcher.searchers.items():
            copy_study(arm_searcher, plan.optuna_storage, names[arm], run_ids)
        tracking.set_tags(
            target.uri,
            target.parent_run_id,
            {
                contract.OPTUNA_STORAGE_TAG: plan.optuna_storage,
                contract.OPTUNA_STUDIES_TAG: json.dumps(names),
            },
        )


@contextlib.contextmanager
def _journal_file(plan: SweepPlan) -> Iterator[Path]:
    """A new, empty journal file: a resumed sweep's is rewritten, so it holds each trial once."""
    path = journal_path(plan)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder) / "journal.log"


def journal_storage(path: Path):
    import optuna

    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def copy_study(searcher: Any, storage: Any, name: str, run_ids: Mapping[str, str]):
    """The searcher's finished trials, with their intermediate values and times, as the
    study ``name`` of ``storage`` (replaced when it exists). Returns the new study."""
    import optuna

    source = searcher._ot_study  # Ray's OptunaSearch keeps it here, and pickles it so
    ray_ids = {trial.number: ray_id for ray_id, trial in searcher._ot_trials.items()}
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=name, storage=storage)
    study = optuna.create_study(storage=storage, study_name=name, direction=source.direction)
    trials = []
    for trial in source.get_trials(states=_finished_states()):
        ray_id = ray_ids.get(trial.number, "")
        trial.user_attrs = {
            **trial.user_attrs,
            RAY_TRIAL_ATTR: ray_id,
            MLFLOW_RUN_ATTR: run_ids.get(ray_id, ""),
        }
        trials.append(trial)
    study.add_trials(trials)
    return study


def _finished_states() -> tuple:
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _number_search_runs(uri: str, trials: list, names: Mapping[str, str]) -> None:
    """Put each trial's number in its arm's study into its run's name, so MLflow's runs and
    optuna-dashboard's trials can be matched by eye. ``names``: each run's name now, by run
    id (one query for the sweep rather than one per trial)."""
    for trial in trials:
        run_id = trial.user_attrs.get(MLFLOW_RUN_ATTR)
        if run_id in names:
            numbered = numbered_run_name(names[run_id], trial.number)
            if numbered != names[run_id]:
                tracking.client(uri).update_run(run_id, name=numbered)


def _search_run_ids(runs: list) -> dict[str, str]:
    """The ids of the sweep's search runs (of its child runs, MLflow's ``Run``s), by Ray's
    trial id."""
    return {
        run.data.tags[contract.RAY_TRIAL_TAG]: run.info.run_id
        for run in runs
        if run.data.tags.get(contract.ROLE_TAG) == contract.SEARCH_ROLE
        and run.data.tags.get(contract.RAY_TRIAL_TAG)
    }


@contextlib.contextmanager
def _local_copy(path: str) -> Iterator[str]:
    """The experiment folder itself, or for remote storage a local copy of the searcher's
    saved state (all ``restore_from_dir`` reads)."""
    if "://" not in path:
        yield path
        return
    import pyarrow.fs

    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    with tempfile.TemporaryDirectory() as folder:
        for info in fs.get_file_info(pyarrow.fs.FileSelector(root)):
            if info.base_name.startswith("searcher-state-"):
                with fs.open_input_stream(info.path) as source:
                    (Path(folder) / info.base_name).write_bytes(source.read())
        yield folder
