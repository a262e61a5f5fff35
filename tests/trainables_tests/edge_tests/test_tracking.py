"""Trials write to one MLflow store at once: nothing may be lost."""

import multiprocessing
import re
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from trainables import contract
from trainables.edge import model_export, served_model, tracking

WRITERS = 4
EPOCHS = 15
METRICS = 40


def _write_trial(uri: str, experiment_id: str, parent: str, index: int) -> None:
    run = tracking.TrialRun.open(
        uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        run_name=f"writer-{index}",
        tags={"ray_trial_id": f"t{index}", "arm": "focal"},
        params={"lr": 0.1 * index, "gamma": None},
    )
    for epoch in range(1, EPOCHS + 1):
        run.log_metrics({f"m{k}": epoch + k / 100 for k in range(METRICS)}, step=epoch)
        run.log_files({"history.csv": f"epoch {epoch}", "sub/a.bin": bytes([epoch])})
    run.end()


def test_concurrent_trials_lose_no_metric(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "concurrency")
    parent = tracking.start_parent_run(uri, experiment_id, "sweep", {"space": "x"}, {"n": 4})
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=_write_trial, args=(uri, experiment_id, parent, i))
        for i in range(WRITERS)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=240)
        assert w.exitcode == 0
    client = MlflowClient(uri)
    children = tracking.child_runs(uri, experiment_id, parent)
    assert len(children) == WRITERS
    for run in children:
        assert run.info.status == "FINISHED"
        assert "gamma" not in run.data.params
        for k in (0, METRICS - 1):
            history = client.get_metric_history(run.info.run_id, f"m{k}")
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(
                range(1, EPOCHS + 1)
            )
        assert len(run.data.metrics) == METRICS
        # One upload per epoch carries several files; the last epoch's content stands.
        history = Path(client.download_artifacts(run.info.run_id, "history.csv")).read_text()
        assert history == f"epoch {EPOCHS}"
        blob = Path(client.download_artifacts(run.info.run_id, "sub/a.bin")).read_bytes()
        assert blob == bytes([EPOCHS])


def test_a_restored_trial_reopens_its_own_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "restore")
    parent = tracking.start_parent_run(uri, experiment_id, "sweep", {}, {})
    first = tracking.TrialRun.open(
        uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        run_name="a",
        tags={"ray_trial_id": "t1"},
        params={},
    )
    first.log_metrics({"val_loss": 1.0}, step=1)
    again = tracking.TrialRun.open(
        uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        run_name="a",
        tags={"ray_trial_id": "t1"},
        params={},
    )
    assert again.run_id == first.run_id
    assert len(tracking.child_runs(uri, experiment_id, parent)) == 1


def test_the_running_children_of_a_parent_are_found_in_one_query(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = tracking.ensure_experiment(uri, "leftovers")
    parent, other = (tracking.start_parent_run(uri, experiment_id, n, {}, {}) for n in "ab")
    runs = {
        (name, owner): tracking.TrialRun.open(
            uri,
            experiment_id=experiment_id,
            parent_run_id=owner,
            run_name=name,
            tags={"ray_trial_id": f"{name}-{owner}"},
            params={},
        )
        for name in ("ended", "running")
        for owner in (parent, other)
    }
    runs["ended", parent].end()
    found = tracking.child_runs(uri, experiment_id, parent, running=True)
    assert [r.info.run_id for r in found] == [runs["running", parent].run_id]
    assert len(tracking.child_runs(uri, experiment_id, parent)) == 2


def test_default_store_is_a_sqlite_file_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.default_tracking_uri() == "http://127.0.0.1:5000"


def test_local_stores_become_absolute_so_trials_in_other_folders_share_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.absolute_tracking_uri("sqlite:///runs.db") == f"sqlite:///{tmp_path}/runs.db"
    assert tracking.absolute_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking.absolute_tracking_uri("mlruns") == str(tmp_path / "mlruns")
    assert tracking.absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_the_model_names_are_those_docs_tracking_md_gives():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "tracking.md").read_text()
    spans = re.findall(r"`([^`]+)`", doc)
    names = [
        contract.MODEL_NAME,
        contract.MODEL_URI_TAG,
        contract.WINNER_RUN_TAG,
        *contract.VERSION_TAGS,
        *contract.LOG_MODELS,
        served_model.PREDICTED,
        served_model.LABELS,
        f"{served_model.PROB_PREFIX}<class>",
        served_model.ERROR,
        *served_model.PARAMS,
        *served_model.UNREADABLE_CHOICES,
        f"artifacts/{model_export.WEIGHTS_FILE}",
        f"artifacts/{model_export.SPEC_FILE}",
        served_model.METADATA_KEY,
        f"{Path(served_model.__file__).name}",
    ]

    def documented(name: str) -> bool:
        pattern = rf"(^|\W){re.escape(name)}(\W|$)"
        return any(re.search(pattern, span) for span in spans)

    assert [name for name in names if not documented(name)] == []


def test_a_pending_experiment_discards_only_a_store_it_created(tmp_path):
    new_uri = f"sqlite:///{tmp_path / 'new.db'}"
    pending = tracking.PendingExperiment(new_uri, "e")
    assert pending.id() == MlflowClient(new_uri).get_experiment_by_name("e").experiment_id
    pending.discard()
    assert not (tmp_path / "new.db").exists()

    old_uri = f"sqlite:///{tmp_path / 'old.db'}"
    kept = tracking.ensure_experiment(old_uri, "e")
    again = tracking.PendingExperiment(old_uri, "e")
    assert again.id() == kept
    again.discard()
    assert MlflowClient(old_uri).get_experiment_by_name("e").experiment_id == kept
    # In an existing store nothing is written until the experiment is asked for.
    refused = tracking.PendingExperiment(old_uri, "refused")
    refused.discard()
    assert MlflowClient(old_uri).get_experiment_by_name("refused") is None


def test_a_pending_experiment_raises_its_error_on_the_caller(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    pending = tracking.PendingExperiment(f"sqlite:///{tmp_path}/a-file/x.db", "e")
    with pytest.raises(Exception, match="(?i)file exists|not a directory|unable to open"):
        pending.id()
