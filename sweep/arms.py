"""All arms of a space searched in one Ray Tune run, each with its own budget, sampler and
early stopping. Ray has searchers and schedulers for one search; these two small wrappers
route every trial to the one of its arm, so arms interleave on the cluster (no idle tail
between them) while staying independent: the same number of trials per arm, each arm's TPE
learning only from its own trials, and ASHA comparing a trial only with its own arm.

A trial ASHA stopped reaches its arm's sampler as pruned, with the values of the epochs it
ran, not as complete: its value after two epochs is no measure of a finished config, and
Optuna's TPE ranks pruned trials apart (by how far they got, then by their last value)."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from sweep.callbacks import stopped_early
from trainables.trial import DIVERGED_KEY


class ArmsSearcher(Searcher):
    """Asks each arm's searcher in turn until every arm has issued ``per_arm`` trials.
    ``max_epochs``: a trial that reported fewer epochs ended early, and is told as pruned."""

    def __init__(
        self,
        searchers: dict[str, Searcher],
        per_arm: int,
        metric: str,
        mode: str,
        max_epochs: int | None = None,
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searchers = searchers
        self.per_arm = per_arm
        self.max_epochs = max_epochs
        self.issued = dict.fromkeys(searchers, 0)
        self.owner: dict[str, str] = {}

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        # The arm searchers were built with their metric and define-by-run space.
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        open_arms = [arm for arm in self.searchers if self.issued[arm] < self.per_arm]
        if not open_arms:
            return Searcher.FINISHED
        arm = min(open_arms, key=lambda a: self.issued[a])  # round robin, in the arms' order
        config = self.searchers[arm].suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        self.issued[arm] += 1
        self.owner[trial_id] = arm
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.owner and not result.get(DIVERGED_KEY):
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error=False) -> None:
        arm = self.owner.pop(trial_id, None)
        if arm is None:
            return
        # A diverged trial is a failed one to the sampler: its last value would mislead TPE.
        if result and result.get(DIVERGED_KEY):
            result, error = None, True
        elif result and self.max_epochs and stopped_early(result, self.max_epochs):
            # Ray's OptunaSearch tells a trial that ends without a result or an error as
            # PRUNED; the epochs it reported (on_trial_result) stay its intermediate values.
            result = None
        self.searchers[arm].on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


class ArmsScheduler(FIFOScheduler):
    """One scheduler per arm (ASHA here); each trial goes to the scheduler of its arm."""

    def __init__(self, make: Callable[[], TrialScheduler], arms: tuple[str, ...]) -> None:
        super().__init__()
        self.schedulers = {arm: make() for arm in arms}

    def _of(self, trial) -> TrialScheduler:
        config = trial.config.get("variant", trial.config)
        return self.schedulers[config["arm"]]

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return all(s.set_search_properties(metric, mode, **spec) for s in self.schedulers.values())

    def on_trial_add(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get(DIVERGED_KEY):  # its value says nothing about the config's promise
            return TrialScheduler.STOP
        return self._of(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        if result and result.get(DIVERGED_KEY):
            self._of(trial).on_trial_remove(tune_controller, trial)
        else:
            self._of(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._of(trial).on_trial_remove(tune_controller, trial)

    def get_state(self) -> dict[str, Any]:
        """Each arm's scheduler as it stands (ASHA's rungs): see ``sweep.callbacks``."""
        return {arm: dict(s.__dict__) for arm, s in self.schedulers.items()}

    def set_state(self, state: dict[str, Any]) -> None:
        for arm, saved in state.items():
            self.schedulers[arm].__dict__.update(saved)

    def debug_string(self) -> str:
        return "; ".join(f"{arm}: {s.debug_string()}" for arm, s in self.schedulers.items())
