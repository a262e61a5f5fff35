"""A resumed sweep trusts the tracking store over Ray's saved state: the runs of trials that
Ray's last save missed are issued again with their own configs and handed to the trials that
take their place, within each arm's budget (``sweep.ledger``, ``ArmsSearcher.reconcile``)."""

import json
from types import SimpleNamespace

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from sweep import ledger
from sweep.arms import ArmsSearcher
from sweep.callbacks import ReconcileSearcher
from sweep.ledger import StoredRun
from trainables import contract
from trainables.edge import tracking
from trainables.edge.trial import TrackingTarget

PAIRS = ((0, 1), (0, 2))


@pytest.fixture
def target(tmp_path) -> TrackingTarget:
    """A store with a sweep's parent run and no child yet."""
    tracking.seed_local_store(tmp_path / "mlflow.db")  # no migrations: milliseconds
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("focal")
    parent = client.create_run(experiment, tags={contract.ROLE_TAG: contract.SWEEP_ROLE})
    return TrackingTarget(uri, experiment, parent.info.run_id)


def _child(target, trial_id, arm="focal", role="search", seed=0, status="FINISHED", **tags):
    """A trial's run as the trial leaves it; ``outcome`` and ``config`` among ``tags``."""
    client = MlflowClient(target.uri)
    config = tags.pop("config", None)
    run_tags = {
        contract.PARENT_TAG: target.parent_run_id,
        contract.RAY_TRIAL_TAG: trial_id,
        contract.ARM_TAG: arm,
        contract.ROLE_TAG: role,
        contract.SEED_TAG: str(seed),
        contract.SPLIT_SEED_TAG: "0",
        **({contract.RAY_CONFIG_TAG: json.dumps(config)} if config else {}),
        **{getattr(contract, f"{key.upper()}_TAG"): value for key, value in tags.items()},
    }
    run = client.create_run(target.experiment_id, tags=run_tags)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_the_store_says_which_trial_owns_each_run_and_whether_it_ended(target):
    done = _child(target, "a", outcome=contract.COMPLETED, config={"arm": "focal", "lr": 0.1})
    cut = _child(target, "b", arm="ce", status="RUNNING")  # its driver died
    stopped = _child(target, "c", status="KILLED", outcome=contract.INTERRUPTED)  # Ctrl-C
    wild = _child(target, "d", status="FAILED", outcome=contract.DIVERGED)
    seed = _child(target, "e", role=contract.CONFIRMATION_ROLE, seed=2)
    MlflowClient(target.uri).create_run(  # a child of no trial: not the searcher's
        target.experiment_id, tags={contract.PARENT_TAG: target.parent_run_id}
    )
    stored = ledger.stored_runs(target)
    assert [(r.run_id, r.trial_id, r.arm, r.ended) for r in stored] == [
        (done, "a", "focal", True),
        (cut, "b", "ce", False),
        (stopped, "c", "focal", False),
        (wild, "d", "focal", True),
        (seed, "e", "focal", True),
    ]
    assert stored[0].config == {"arm": "focal", "lr": 0.1} and stored[1].config is None
    assert [r.confirms for r in stored] == [False] * 4 + [True]
    assert stored[4].pair == (0, 2)
    ledger.hand_over(target.uri, cut, "z")
    assert [r.trial_id for r in ledger.stored_runs(target)][1] == "z"


def test_the_searcher_meets_rays_trials_and_the_stores_runs_once_per_run_of_the_experiment(
    target,
):
    run_id = _child(target, "lost", arm="ce", status="RUNNING")
    seen = []
    searcher = SimpleNamespace(reconcile=lambda *args: seen.append(args))
    callback = ReconcileSearcher(searcher, target)
    trial = SimpleNamespace(trial_id="a", status="RUNNING", config={"arm": "ce"}, last_result={})
    callback.setup()
    callback.on_step_begin(0, [trial])
    callback.on_step_begin(1, [trial])
    assert len(seen) == 1
    trials, stored, hand_over = seen[0]
    assert trials == {"a": ("RUNNING", {"arm": "ce"}, None)}
    assert [(r.run_id, r.trial_id) for r in stored] == [(run_id, "lost")]
    hand_over(run_id, "b")  # the store's run goes to the trial that takes its place
    assert ledger.stored_runs(target)[0].trial_id == "b"
    callback.setup()  # the experiment restored again
    callback.on_step_begin(0, [])
    assert len(seen) == 2 and seen[1][0] == {}


class _Space:
    """An arm's define-by-run space; a class, so the searcher pickles as Ray saves it."""

    def __init__(self, arm: str) -> None:
        self.arm = arm

    def __call__(self, trial) -> dict:
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        return {"arm": self.arm}


def _arms(per_arm: int) -> ArmsSearcher:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searchers = {
        arm: OptunaSearch(
            space=_Space(arm),
            metric="m",
            mode="max",
            sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10),
        )
        for arm in ("focal", "ce")
    }
    return ArmsSearcher(searchers, per_arm, "m", "max", max_epochs=4, pairs=PAIRS)


def _stored(trial_id, config, ended=True, role="search", pair=(0, 0)) -> StoredRun:
    return StoredRun(f"run-{trial_id}", trial_id, config["arm"], role, pair, ended, config)


def _lr(study) -> list[float]:
    return [t.params["lr"] for t in study.trials]


def test_trials_started_after_rays_last_save_count_once_and_keep_their_runs(tmp_path):
    """The issue's kill: two trials finished after Ray's last save; the resumed driver drew
    their configs again as new trials (new runs), and their own runs were left orphaned."""
    first = _arms(per_arm=3)
    t0, t1 = first.suggest("t0"), first.suggest("t1")  # focal, ce
    first.save(str(tmp_path / "state.pkl"))  # Ray's last save
    lost_focal, lost_ce = first.suggest("t2"), first.suggest("t3")
    stored = [_stored("t0", t0), _stored("t2", lost_focal), _stored("t3", lost_ce, ended=False)]

    resumed, handed = _arms(per_arm=3), []
    resumed.restore(str(tmp_path / "state.pkl"))
    trials = {"t0": ("RUNNING", t0, None), "t1": ("PENDING", t1, None)}
    resumed.reconcile(trials, stored, lambda run, trial: handed.append((run, trial)))
    assert [resumed.suggest("t4"), resumed.suggest("t5")] == [lost_focal, lost_ce]
    assert handed == [("run-t2", "t4"), ("run-t3", "t5")]
    # The budget: each arm has one trial left, drawn anew (not the lost config once more).
    fresh = [resumed.suggest("t6"), resumed.suggest("t7")]
    assert [c["arm"] for c in fresh] == ["focal", "ce"]
    assert fresh[0]["lr"] not in (t0["lr"], lost_focal["lr"])
    assert resumed.suggest("t8") is None  # only confirmation runs are left, once all ended
    resumed.on_trial_complete("t4", {"m": 0.8, "training_iteration": 4})
    study = resumed.searchers["focal"]._ot_study
    assert _lr(study) == [t0["lr"], lost_focal["lr"], fresh[0]["lr"]]
    assert (study.trials[1].state, study.trials[1].value) == (TrialState.COMPLETE, 0.8)


def test_a_lost_trial_the_searchers_save_knew_keeps_its_optuna_trial(tmp_path):
    first = _arms(per_arm=2)
    configs = {f"t{i}": first.suggest(f"t{i}") for i in range(4)}  # focal, ce, focal, ce
    first.on_trial_complete("t3", {"m": 0.6, "training_iteration": 4})
    first.save(str(tmp_path / "state.pkl"))  # Ray's trials were saved before t2 and t3
    resumed, handed = _arms(per_arm=2), []
    resumed.restore(str(tmp_path / "state.pkl"))
    trials = {t: ("TERMINATED", configs[t], {"m": 0.5}) for t in ("t0", "t1")}
    stored = [_stored("t2", configs["t2"], ended=False), _stored("t3", configs["t3"])]
    resumed.reconcile(trials, stored, lambda run, trial: handed.append((run, trial)))
    assert [resumed.suggest("t4"), resumed.suggest("t5")] == [configs["t2"], configs["t3"]]
    assert handed == [("run-t2", "t4"), ("run-t3", "t5")]
    # t3's sampler had heard its end: not told twice, and its value still ranks it.
    resumed.on_trial_complete("t5", {"m": 0.6, "training_iteration": 4})
    ce = resumed.searchers["ce"]._ot_study.trials
    assert [(t.state, t.value) for t in ce] == [(TrialState.COMPLETE, 0.5)] * 1 + [
        (TrialState.COMPLETE, 0.6)
    ]
    focal = resumed.searchers["focal"]._ot_study.trials  # no failed stand-in for t2
    assert [t.state for t in focal] == [TrialState.COMPLETE, TrialState.RUNNING]
    assert resumed.best_config("ce") == configs["t3"]


def test_no_arm_gets_more_trials_than_its_budget_whatever_the_store_holds():
    arms = _arms(per_arm=1)
    configs = [{"arm": "focal", "lr": lr} for lr in (0.01, 0.02)]
    stored = [_stored("a", configs[0]), _stored("b", configs[1])]
    arms.reconcile({}, stored, lambda run, trial: None)
    assert arms.suggest("t0") == configs[0]
    assert arms.suggest("t1")["arm"] == "ce"
    assert arms.suggest("t2") is None and arms.issued == {"focal": 1, "ce": 1}


def test_a_confirmation_run_rays_save_missed_goes_to_the_trial_of_its_seed():
    arms, handed = _arms(per_arm=1), []
    focal, ce = arms.suggest("t0"), arms.suggest("t1")
    confirm = {**focal, "role": contract.CONFIRMATION_ROLE, "split_seed": 0, "seed": 1}
    trials = {
        "t0": ("TERMINATED", focal, {"m": 0.5, "training_iteration": 4}),
        "t1": ("TERMINATED", ce, {"m": 0.4, "training_iteration": 4}),
        "c1": ("RUNNING", confirm, None),  # focal's seed 1: Ray has it
    }
    stored = [  # focal's seed 2 finished unseen; ce's seed 1 twice (the finished one counts)
        _stored("c2", focal, role=contract.CONFIRMATION_ROLE, pair=(0, 2)),
        _stored("c3", ce, ended=False, role=contract.CONFIRMATION_ROLE, pair=(0, 1)),
        _stored("c4", ce, role=contract.CONFIRMATION_ROLE, pair=(0, 1)),
    ]
    arms.reconcile(trials, stored, lambda run, trial: handed.append((run, trial)))
    issued = [arms.suggest(f"t{i}") for i in range(2, 5)]
    assert [(c["arm"], c["seed"]) for c in issued] == [("focal", 2), ("ce", 1), ("ce", 2)]
    assert handed == [("run-c2", "t2"), ("run-c4", "t3")]  # ce's seed 2 never ran
    assert arms.suggest("t5") == Searcher.FINISHED
