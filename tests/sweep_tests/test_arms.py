"""The per-arm searcher and scheduler wrappers route every trial to its own arm."""

from ray.tune.search import Searcher

from sweep.arms import ArmsScheduler, ArmsSearcher


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


def test_scheduler_routes_trials_by_arm_including_confirmation_variants():
    scheduler = ArmsScheduler(RecordingScheduler, ("focal", "ce"))
    a, b = _Trial("focal"), _Trial("ce")
    c = _Trial("x")
    c.config = {"variant": {"arm": "ce"}}
    for trial in (a, b, c):
        scheduler.on_trial_add(None, trial)
    assert scheduler.schedulers["focal"].added == [a]
    assert scheduler.schedulers["ce"].added == [b, c]


def test_stopped_early_means_some_epochs_reported_but_not_all():
    from sweep.runner import stopped_early

    assert stopped_early({"training_iteration": 2}, max_epochs=6)
    assert not stopped_early({"training_iteration": 6}, max_epochs=6)
    assert not stopped_early({}, max_epochs=6)  # failed before its first epoch
