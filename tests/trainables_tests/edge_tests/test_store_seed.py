"""A new local MLflow store laid from an empty one made once per MLflow version
(``tracking.seed_local_store``): the same store MLflow itself would create, faster."""

import sqlite3
import threading

import mlflow
from mlflow.tracking import MlflowClient

from trainables.edge import tracking


def _schema(db) -> tuple[dict, list]:
    """Each table's and index's definition, as a set of its lines (MLflow's migrations write
    a table's constraints in an order that varies from one run to the next), and the
    migration revision."""
    with sqlite3.connect(db) as connection:
        rows = connection.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        revision = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    lines = {
        (kind, name): frozenset(line.strip().rstrip(",") for line in (sql or "").splitlines())
        for kind, name, sql in rows
    }
    return lines, revision


def test_a_seeded_store_is_the_store_mlflow_creates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where both stores put the Default experiment's artifacts
    fresh, seeded = tmp_path / "fresh.db", tmp_path / "seeded.db"
    MlflowClient(f"sqlite:///{fresh}").search_experiments()  # MLflow's own tables
    assert tracking.seed_local_store(seeded, tmp_path / "cache") is True
    assert _schema(seeded) == _schema(fresh)
    mine, theirs = (MlflowClient(f"sqlite:///{db}").get_experiment("0") for db in (seeded, fresh))
    assert (mine.name, mine.artifact_location) == (theirs.name, theirs.artifact_location)
    assert mine.creation_time >= theirs.creation_time  # made now, not when the cache was
    experiment = tracking.ensure_experiment(f"sqlite:///{seeded}", "focal")
    assert MlflowClient(f"sqlite:///{seeded}").get_experiment(experiment).name == "focal"


def test_the_empty_store_is_made_once_per_mlflow_version(tmp_path):
    cache = tmp_path / "cache"
    for name in ("a.db", "b.db"):
        assert tracking.seed_local_store(tmp_path / name, cache) is True
    assert [p.name for p in cache.iterdir()] == [f"mlflow-{mlflow.__version__}-empty.db"]


def test_an_unusable_cache_leaves_the_store_to_mlflow(tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache folder would go")
    db = tmp_path / "mlflow.db"
    assert tracking.seed_local_store(db, cache) is False
    assert not db.exists()
    assert tracking.ensure_experiment(f"sqlite:///{db}", "focal") == "1"


def test_a_sweep_s_new_store_is_seeded_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.PendingExperiment(uri, "focal").id() == "1"
    assert (
        tmp_path / "xdg" / "finetune-sweeps" / f"mlflow-{mlflow.__version__}-empty.db"
    ).is_file()


def test_two_sweeps_starting_at_once_in_one_folder_share_one_new_store(tmp_path, monkeypatch):
    """Both find no store and lay one; the second used to lay its own over the first's, after
    the first had made its experiment in it."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    lay, both_made, arrived, lock = (
        tracking._store._empty_store,
        threading.Event(),
        [],
        threading.Lock(),
    )

    def first_lays_and_ends_before_the_second_lays(cache):
        both_made.wait(10)
        with lock:
            arrived.append(threading.current_thread())
        if arrived[0] is not threading.current_thread():
            arrived[0].join(10)  # the first has laid the store and made its experiment
        return lay(cache)

    monkeypatch.setattr(tracking._store, "_empty_store", first_lays_and_ends_before_the_second_lays)
    sweeps = [tracking.PendingExperiment(uri, name) for name in ("first", "second")]
    both_made.set()
    ids = [sweep.id() for sweep in sweeps]
    found = {e.name: e.experiment_id for e in MlflowClient(uri).search_experiments()}
    assert found == {"Default": "0", "first": ids[0], "second": ids[1]}
    assert sorted(ids) == ["1", "2"]
    assert len(arrived) == 2  # both found no store, so both laid one
    assert [p.name for p in tmp_path.iterdir()] == ["mlflow.db"]  # nothing left beside it


def test_a_sweep_that_stops_early_keeps_a_new_store_another_sweep_uses(tmp_path):
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    first = tracking.PendingExperiment(uri, "focal")
    experiment = first.id()
    other = tracking.PendingExperiment(uri, "focal")  # a second sweep, started meanwhile
    assert other.id() == experiment
    run = MlflowClient(uri).create_run(experiment).info.run_id
    first.discard()  # the first stopped before its first run (its cluster refused it)
    other.discard()  # and a sweep that found the store there never removes it
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True) as connection:  # the file itself
        kept = connection.execute("SELECT run_uuid, experiment_id FROM runs").fetchall()
    assert kept == [(run, int(experiment))]
