"""The per-arm searcher and scheduler wrappers route every trial to its own arm."""

import pickle
from types import SimpleNamespace

import pytest
from ray.tune.search import Searcher

from sweep.arms import ArmsScheduler, ArmsSearcher
from trainables.edge.trial import DIVERGED_KEY


class RecordingSearcher(Searcher):
    def __init__(self, arm: str) -> None:
        super().__init__(metric="m", mode="max")
        self.arm = arm
        self.completed: list[str] = []
        self.results: list[str] = []

    def suggest(self, trial_id):
        return {"arm": self.arm, "trial": trial_id}

    def on_trial_result(self, trial_id, result):
        self.results.append(trial_id)

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append(trial_id)


def test_each_arm_gets_the_same_budget_in_turn_and_only_its_own_trials():
    searchers = {a: RecordingSearcher(a) for a in ("focal", "ce")}
    arms = ArmsSearcher(searchers, per_arm=2, metric="m", mode="max")
    suggested = [arms.suggest(f"t{i}") for i in range(5)]
    assert [s["arm"] for s in suggested[:4]] == ["focal", "ce", "focal", "ce"]
    assert suggested[4] == Searcher.FINISHED
    arms.on_trial_result("t1", {"m": 1})
    arms.on_trial_complete("t0", {"m": 1})
    arms.on_trial_complete("t3", {"m": 1})
    assert searchers["focal"].completed == ["t0"] and searchers["ce"].completed == ["t3"]
    assert searchers["ce"].results == ["t1"] and searchers["focal"].results == []


def test_state_survives_save_and_restore(tmp_path):
    searchers = {a: RecordingSearcher(a) for a in ("focal", "ce")}
    arms = ArmsSearcher(searchers, per_arm=1, metric="m", mode="max")
    arms.suggest("t0")
    arms.save(str(tmp_path / "state.pkl"))
    fresh = ArmsSearcher({a: RecordingSearcher(a) for a in ("focal", "ce")}, 1, "m", "max")
    fresh.restore(str(tmp_path / "state.pkl"))
    assert fresh.suggest("t1")["arm"] == "ce" and fresh.suggest("t2") == Searcher.FINISHED


class _Trial:
    def __init__(self, arm):
        self.config = {"arm": arm}


class RecordingScheduler:
    def __init__(self):
        self.added = []

    def on_trial_add(self, controller, trial):
        self.added.append(trial)

    def on_trial_result(self, controller, trial, result):
        return "CONTINUE"


def test_scheduler_routes_trials_by_arm():
    scheduler = ArmsScheduler(RecordingScheduler, ("focal", "ce"))
    a, b = _Trial("focal"), _Trial("ce")
    c = _Trial("x")
    c.config = {"arm": "ce", "seed": 1}  # another search trial of ce
    for trial in (a, b, c):
        scheduler.on_trial_add(None, trial)
    assert scheduler.schedulers["focal"].added == [a]
    assert scheduler.schedulers["ce"].added == [b, c]


def test_stopped_early_means_some_epochs_reported_but_not_all():
    from sweep.callbacks import stopped_early

    assert stopped_early({"training_iteration": 2}, max_epochs=6)
    assert not stopped_early({"training_iteration": 6}, max_epochs=6)
    assert not stopped_early({}, max_epochs=6)  # failed before its first epoch


def test_a_diverged_trial_reaches_its_optuna_study_as_failed_and_its_scheduler_stops_it():
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from trainables.edge.trial import DIVERGED_KEY

    def space(trial):
        trial.suggest_float("lr", 1e-3, 1.0, log=True)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searchers = {a: OptunaSearch(space=space, metric="m", mode="max") for a in ("focal", "ce")}
    arms = ArmsSearcher(searchers, per_arm=1, metric="m", mode="max")
    arms.suggest("t0"), arms.suggest("t1")
    arms.on_trial_result("t0", {"m": 0.5, "training_iteration": 1})
    arms.on_trial_result("t0", {"m": float("nan"), DIVERGED_KEY: 1, "training_iteration": 2})
    arms.on_trial_complete("t0", {"m": float("nan"), DIVERGED_KEY: 1})
    arms.on_trial_complete("t1", {"m": 0.7})
    focal = searchers["focal"]._ot_study.trials[0]
    assert focal.state == optuna.trial.TrialState.FAIL
    assert focal.intermediate_values == {1: 0.5}  # the diverged epoch is not taught
    assert searchers["ce"]._ot_study.trials[0].state == optuna.trial.TrialState.COMPLETE

    scheduler = ArmsScheduler(RecordingScheduler, ("focal", "ce"))
    assert scheduler.on_trial_result(None, _Trial("focal"), {DIVERGED_KEY: 1}) == "STOP"


def test_asha_state_of_each_arm_survives_a_restore():
    from ray.tune.schedulers import ASHAScheduler

    from sweep.callbacks import SchedulerState

    def make():
        return ASHAScheduler(metric="m", mode="max", max_t=4, grace_period=1)

    class T:
        def __init__(self, trial_id, arm):
            self.trial_id, self.config = trial_id, {"arm": arm}

    before = ArmsScheduler(make, ("focal", "ce"))
    trials = [T("a", "focal"), T("b", "focal"), T("c", "ce")]
    for trial in trials:
        before.on_trial_add(None, trial)
    before.on_trial_result(None, trials[0], {"training_iteration": 1, "m": 0.9})
    saved = SchedulerState(before).get_state()
    after = ArmsScheduler(make, ("focal", "ce"))
    SchedulerState(after).set_state(pickle.loads(pickle.dumps(saved)))
    # The restored rung holds the first trial's 0.9, so a worse second trial is stopped.
    assert after.on_trial_result(None, trials[1], {"training_iteration": 1, "m": 0.1}) == "STOP"
    fresh = ArmsScheduler(make, ("focal", "ce"))
    fresh.on_trial_add(None, trials[1])
    assert fresh.on_trial_result(None, trials[1], {"training_iteration": 1, "m": 0.1}) == "CONTINUE"


def test_an_empty_state_file_is_mended_from_rays_staging_copy_or_dropped(tmp_path, monkeypatch):
    from sweep.ray_session import repair_experiment_state

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "tmp"))
    experiment = tmp_path / "results" / "focal-confirm-x"
    experiment.mkdir(parents=True)
    (experiment / "basic-variant-state-a.json").write_text("")  # a copy the kill cut short
    (experiment / "experiment_state-b.json").write_text("")  # no staging copy of this one
    (experiment / ".validate_storage_marker").write_text("")  # Ray's own, empty on purpose
    staged = tmp_path / "tmp/ray/session_1/artifacts/t/focal-confirm-x/driver_artifacts"
    staged.mkdir(parents=True)
    (staged / "basic-variant-state-a.json").write_text('{"whole": true}')
    mended = repair_experiment_state(experiment)
    assert sorted(p.name for p in mended) == [
        "basic-variant-state-a.json",
        "experiment_state-b.json",
    ]
    assert (experiment / "basic-variant-state-a.json").read_text() == '{"whole": true}'
    assert not (experiment / "experiment_state-b.json").exists()
    assert (experiment / ".validate_storage_marker").exists()


def test_a_finished_sweep_keeps_one_checkpoint_per_arm(tmp_path):
    from types import SimpleNamespace

    from sweep.runner import prune_checkpoints
    from sweep.tally import ArmResult

    plan = SimpleNamespace(storage_path=str(tmp_path), space=SimpleNamespace(name="f"), stamp="1")
    for trial in ("f-1/a", "f-1/b", "f-1/c", "f-1/d"):
        for n in (1, 2):
            (tmp_path / trial / f"checkpoint_00000{n}").mkdir(parents=True)
    arms = [
        ArmResult(
            "focal",
            best_trial_path=str(tmp_path / "f-1/a"),
            best_confirmation_path=str(tmp_path / "f-1/c"),
        ),
        ArmResult("ce", best_trial_path=str(tmp_path / "f-1/b")),  # no confirmation
    ]
    assert prune_checkpoints(plan, arms) == 6
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.glob("*/*/checkpoint_*"))
    assert left == ["f-1/b/checkpoint_000002", "f-1/c/checkpoint_000002"]


def _lr_space(trial):
    trial.suggest_float("lr", 1e-3, 1.0, log=True)


def _optuna_arms(max_epochs: int | None) -> tuple[ArmsSearcher, dict]:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searchers = {
        a: OptunaSearch(
            space=_lr_space, metric="m", mode="max", sampler=optuna.samplers.TPESampler(seed=0)
        )
        for a in ("focal", "ce")
    }
    return ArmsSearcher(searchers, 2, "m", "max", max_epochs=max_epochs), searchers


def _run(arms: ArmsSearcher, trial_id: str, values: list[float]) -> None:
    for epoch, value in enumerate(values, start=1):
        arms.on_trial_result(trial_id, {"m": value, "training_iteration": epoch})
    arms.on_trial_complete(trial_id, {"m": max(values), "training_iteration": len(values)})


def test_a_trial_stopped_early_reaches_its_optuna_study_as_pruned_with_its_epochs():
    from optuna.trial import TrialState

    arms, searchers = _optuna_arms(max_epochs=4)
    for trial_id in ("t0", "t1", "t2", "t3"):  # focal, ce, focal, ce
        arms.suggest(trial_id)
    _run(arms, "t0", [0.2, 0.5, 0.6, 0.7])  # all 4 epochs
    _run(arms, "t1", [0.3, 0.4])  # ASHA stopped it after 2
    _run(arms, "t2", [0.9, 0.95])  # a fast starter, stopped: its 0.95 is no final value
    _run(arms, "t3", [0.1, 0.2, 0.3, 0.4])
    focal = searchers["focal"]._ot_study.trials
    ce = searchers["ce"]._ot_study.trials
    assert [t.state for t in focal] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert [t.state for t in ce] == [TrialState.PRUNED, TrialState.COMPLETE]
    assert focal[0].value == 0.7 and ce[1].value == 0.4
    assert focal[1].intermediate_values == {1: 0.9, 2: 0.95}
    assert ce[0].intermediate_values == {1: 0.3, 2: 0.4}
    # Only complete trials count as the study's best: the pruned 0.95 does not.
    assert searchers["focal"]._ot_study.best_value == 0.7


def test_without_max_epochs_every_ended_trial_is_complete():
    """The behaviour this replaces: Ray's OptunaSearch alone tells a stopped trial complete."""
    from optuna.trial import TrialState

    arms, searchers = _optuna_arms(max_epochs=None)
    arms.suggest("t0")
    _run(arms, "t0", [0.9, 0.95])
    assert searchers["focal"]._ot_study.trials[0].state == TrialState.COMPLETE


def test_the_pruned_rule_survives_a_restore(tmp_path):
    from optuna.trial import TrialState

    arms, _ = _optuna_arms(max_epochs=4)
    arms.suggest("t0")
    arms.save(str(tmp_path / "state.pkl"))
    fresh, _ = _optuna_arms(max_epochs=None)
    fresh.restore(str(tmp_path / "state.pkl"))
    _run(fresh, "t0", [0.5, 0.6])
    assert fresh.searchers["focal"]._ot_study.trials[0].state == TrialState.PRUNED


@pytest.mark.parametrize("grace_period", [1, 2, 3, 5])
def test_trials_checkpoint_at_the_epochs_where_ray_asha_decides(grace_period):
    from ray.tune.schedulers import ASHAScheduler

    from sweep.methods import ASHA_REDUCTION_FACTOR, asha_rungs

    for max_t in range(grace_period, 70):
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric="m",
            mode="max",
            max_t=max_t,
            grace_period=grace_period,
            reduction_factor=ASHA_REDUCTION_FACTOR,
        )
        (bracket,) = scheduler._brackets
        assert asha_rungs(grace_period, max_t) == {epoch for epoch, _ in bracket._rungs}


PAIRS = ((0, 1), (0, 2))  # (split seed, seed) of each confirmation run


def _confirming(per_arm: int = 2) -> ArmsSearcher:
    searchers = {a: RecordingSearcher(a) for a in ("focal", "ce")}
    return ArmsSearcher(searchers, per_arm, metric="m", mode="max", max_epochs=4, pairs=PAIRS)


def test_an_arms_confirmation_runs_follow_its_own_search_with_its_best_config():
    arms = _confirming()
    assert [arms.suggest(f"t{i}")["trial"] for i in range(4)] == ["t0", "t1", "t2", "t3"]
    assert arms.suggest("t4") is None  # nothing ended: no best config yet, nor more search
    arms.on_trial_complete("t0", {"m": 0.5, "training_iteration": 4})
    assert arms.suggest("t4") is None  # focal's t2 still runs
    arms.on_trial_complete("t2", {"m": 0.5, "training_iteration": 4})  # a tie: by the config
    first, second = arms.suggest("t4"), arms.suggest("t5")
    assert [first["trial"], second["trial"]] == ["t0", "t0"]
    assert [(c["split_seed"], c["seed"]) for c in (first, second)] == list(PAIRS)
    assert {c["role"] for c in (first, second)} == {"confirmation"}
    assert arms.suggest("t6") is None  # ce still searches
    arms.on_trial_result("t4", {"m": 0.9})  # a confirmation run teaches no sampler
    arms.on_trial_complete("t4", {"m": 0.9})
    assert arms.searchers["focal"].completed == ["t0", "t2"]
    # ce has no config to confirm: one failed, one diverged.
    arms.on_trial_complete("t1", None, error=True)
    arms.on_trial_complete("t3", {"m": 0.99, DIVERGED_KEY: 1})
    assert arms.suggest("t6") == Searcher.FINISHED


def test_the_confirmation_queue_survives_save_and_restore(tmp_path):
    arms = _confirming(per_arm=1)
    arms.suggest("t0"), arms.suggest("t1")
    arms.on_trial_complete("t0", {"m": 0.4})
    arms.on_trial_complete("t1", {"m": 0.6})
    assert arms.suggest("t2")["arm"] == "focal"
    arms.save(str(tmp_path / "state.pkl"))
    fresh = _confirming(per_arm=1)
    fresh.restore(str(tmp_path / "state.pkl"))
    rest = [fresh.suggest(f"t{i}") for i in range(3, 7)]
    assert [(c["arm"], c["seed"]) for c in rest[:3]] == [("focal", 2), ("ce", 1), ("ce", 2)]
    assert rest[3] == Searcher.FINISHED


def test_the_searcher_confirms_the_config_the_runner_reports_as_best():
    """Both read the same trials in different orders: the searcher as they end, the runner
    Ray's list, which after a restore holds the newest first. Equal values too."""
    from sweep.tally import ArmResult, _count_search_trial

    ended = [  # trial, value, error, diverged, in creation order
        ("t0", 0.7, False, False),
        ("t1", 0.9, True, False),  # failed: its last value does not count
        ("t2", 0.95, False, True),  # diverged: nor does this one's
        ("t3", 0.8, False, False),
        ("t4", 0.8, False, False),  # ties with t3, created later
        ("t5", None, False, False),  # never reported the metric
    ]
    searcher = ArmsSearcher({"focal": RecordingSearcher("focal")}, 6, "m", "max", 4, PAIRS)
    for trial_id, *_ in ended:
        searcher.suggest(trial_id)
    results = {}
    for trial_id, value, error, went_wrong in ended:
        metrics = {"training_iteration": 4, **({} if value is None else {"m": value})}
        metrics.update({DIVERGED_KEY: 1} if went_wrong else {})
        results[trial_id] = SimpleNamespace(
            config={"arm": "focal", "trial": trial_id},
            metrics=metrics,
            error=RuntimeError("lost") if error else None,
            path=trial_id,
            checkpoint=None,
        )
    for trial_id in ("t4", "t5", "t2", "t3", "t1", "t0"):  # the order they ended
        result = results[trial_id]
        searcher.on_trial_complete(trial_id, result.metrics, error=result.error is not None)
    arm = ArmResult("focal")
    plan = SimpleNamespace(metric="m", mode="max", max_epochs=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("sweep.tally.tune_metric", lambda plan: "m")
        for trial_id, *_ in reversed(ended):
            _count_search_trial(arm, results[trial_id], plan)
    confirmed = searcher.suggest("t6")
    assert arm.best_config == {"arm": "focal", "trial": "t3"}
    assert {k: confirmed[k] for k in arm.best_config} == arm.best_config


def test_confirmation_runs_go_to_no_arms_scheduler():
    scheduler = ArmsScheduler(RecordingScheduler, ("focal", "ce"))
    run = _Trial("ce")
    run.config = {"arm": "ce", "role": "confirmation", "seed": 1}
    scheduler.on_trial_add(None, run)
    assert scheduler.schedulers["ce"].added == []
    assert scheduler.on_trial_result(None, run, {"training_iteration": 1, "m": 0.0}) == "CONTINUE"


def test_a_restore_from_two_saves_matches_the_searcher_to_rays_trials():
    """Ray copies its trials and the searcher's state one file at a time: a killed driver can
    leave them from different saves, and the sweep must neither hang nor run a pair twice."""
    arms = _confirming()
    for i in range(4):
        arms.suggest(f"t{i}")
    arms.on_trial_complete("t0", {"m": 0.5})
    # Ray's trials are newer for t1 and t2 (ended unseen), older for t3 (never created), and
    # hold a ce trial t9 the searcher's save does not know, and focal's first confirmation.
    configs = {t: {"arm": arm, "trial": t} for t, arm in (("t0", "focal"), ("t2", "focal"))}
    trials = {
        "t0": ("TERMINATED", configs["t0"], {"m": 0.5}),
        "t1": ("TERMINATED", {"arm": "ce", "trial": "t1"}, {"m": 0.3}),
        "t2": ("ERROR", configs["t2"], {"m": 0.9}),
        "t9": ("RUNNING", {"arm": "ce", "trial": "t9"}, None),
        "c0": (
            "RUNNING",
            {**configs["t0"], "split_seed": 0, "seed": 1, "role": "confirmation"},
            None,
        ),
    }
    arms.reconcile(trials)
    assert arms.searchers["focal"].completed == ["t0", "t2"]  # t2 reached its sampler
    assert arms.searchers["ce"].completed == ["t1", "t3"]  # t3, which Ray never had, failed
    # focal's search has ended: only the confirmation Ray does not hold is left.
    again = arms.suggest("t10")
    assert (again["trial"], again["seed"]) == ("t0", 2)
    assert arms.suggest("t11") is None  # ce's t9 runs: it took the lost t3's place
    arms.on_trial_result("t9", {"m": 0.1})  # no sampler knows t9: not passed on
    arms.on_trial_complete("t9", {"m": 0.8})
    assert arms.searchers["ce"].completed == ["t1", "t3"] and arms.searchers["ce"].results == []
    ce = [arms.suggest(f"t{i}") for i in (13, 14)]
    assert [(c["trial"], c["seed"]) for c in ce] == [("t9", 1), ("t9", 2)]
    assert arms.suggest("t15") == Searcher.FINISHED
