"""All arms of a space searched in one Ray Tune run, each with its own budget, sampler and
early stopping, and then each arm's best config confirmed on paired seeds in the same run.
Ray has searchers and schedulers for one search; these two small wrappers route every trial
to the one of its arm, so arms interleave on the cluster (no idle tail between them) while
staying independent: the same number of trials per arm, each arm's TPE learning only from
its own trials, and ASHA comparing a trial only with its own arm.

Once an arm's search trials have all ended, the searcher issues its confirmation runs: its
best config on every (split seed, seed) pair, run to the last epoch (no scheduler stops
them). In the same Tuner they take over the workers the search warmed (``reuse_actors``); a
second Tuner would start every worker again (torch, Ray Tune, MLflow's store and torch's
compiler stack; benchmarks/startup_floor.py measures them).

A trial ASHA stopped reaches its arm's sampler as pruned, with the values of the epochs it
ran, not as complete: its value after two epochs is no measure of a finished config, and
Optuna's TPE ranks pruned trials apart (by how far they got, then by their last value)."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher

from sweep.callbacks import better_candidate, search_value, stopped_early
from sweep.ledger import StoredRun
from trainables import contract
from trainables.edge.trial import DIVERGED_KEY

Pair = tuple[int, int]  # a confirmation run's (split seed, seed)
ENDED_STATUSES = ("TERMINATED", "ERROR")  # Ray's, of a trial that will not run again


@dataclass(frozen=True)
class _Lost:
    """A search trial Ray's saved state lacks and the store has a run of: issued again,
    with its config, under the id Ray gives the trial that takes its place."""

    arm: str
    run_id: str
    config: Mapping[str, Any]
    old_id: str  # the trial id it had
    told: bool  # its arm's sampler had already heard how it ended


def _pair_of(config: Mapping[str, Any]) -> tuple:
    """Which confirmation run a config is: its arm and (split seed, seed)."""
    return config["arm"], config["split_seed"], config["seed"]


def confirmation_variants(
    best_configs: Mapping[str, dict[str, Any]], pairs: Sequence[Pair]
) -> list[dict[str, Any]]:
    """Each arm's best config on every (split seed, seed) pair, arms in the order given. The
    trial splits train and val again by its ``split_seed`` from the data every trial shares
    (a resplit is cheap next to training, where K datasets would each take room in the
    object store); arms share, per pair, the split and the initial weights, so runs pair up
    by (split seed, seed); the test split is the same for all."""
    return [
        {**config, "split_seed": split_seed, "seed": seed, "role": contract.CONFIRMATION_ROLE}
        for config in best_configs.values()
        for split_seed, seed in pairs
    ]


def best_search_configs(
    ended: Sequence[tuple[str, dict[str, Any], float]], mode: str
) -> dict[str, dict[str, Any]]:
    """Each arm's best config from its search trials' ``(arm, config, value)``, by the rule
    ``sweep.runner`` reports the best by (``better_candidate``), whatever their order."""
    best: dict[str, tuple[float, dict[str, Any]]] = {}
    for arm, config, value in ended:
        if better_candidate(value, config, best.get(arm), mode):
            best[arm] = (value, config)
    return {arm: config for arm, (_, config) in best.items()}


class ArmsSearcher(Searcher):
    """Asks each arm's searcher in turn until every arm has issued ``per_arm`` trials; once
    they have all ended, issues each arm's best config on every pair of ``pairs``.
    ``max_epochs``: a trial that reported fewer epochs ended early, and is told as pruned."""

    def __init__(
        self,
        searchers: dict[str, Searcher],
        per_arm: int,
        metric: str,
        mode: str,
        max_epochs: int | None = None,
        pairs: Sequence[Pair] = (),
    ) -> None:
        super().__init__(metric=metric, mode=mode)
        self.searchers = searchers
        self.per_arm = per_arm
        self.max_epochs = max_epochs
        self.pairs = tuple(pairs)
        self.issued = dict.fromkeys(searchers, 0)
        self.owner: dict[str, str] = {}
        self.configs: dict[str, dict[str, Any]] = {}  # each search trial's, in issue order
        self.values: dict[str, float] = {}  # the search trials that can be an arm's best
        self.confirming: set[str] = set()  # arms whose confirmation runs have been queued
        self.confirmations: list[dict[str, Any]] = []  # queued, not yet issued
        self.held: set[tuple] = set()  # confirmation runs Ray held at a restore (_pair_of)
        self.unknown: set[str] = set()  # search trials whose results no arm sampler hears
        # What a restore found in the store and not in Ray's trials (``reconcile``): search
        # trials to issue again, and confirmation runs (_pair_of -> run id) to hand over.
        self.lost: list[_Lost] = []
        self.lost_pairs: dict[tuple, str] = {}
        # Gives a stored run to a new trial (run id, trial id): ``sweep.ledger.hand_over``.
        self.hand_over: Callable[[str, str], None] | None = None

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        # The arm searchers were built with their metric and define-by-run space.
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.lost:  # first: they hold part of their arms' budgets
            return self._suggest_lost(self.lost.pop(0), trial_id)
        open_arms = [arm for arm in self.searchers if self.issued[arm] < self.per_arm]
        if open_arms:
            arm = min(open_arms, key=lambda a: self.issued[a])  # round robin, in arms' order
            config = self.searchers[arm].suggest(trial_id)
            if config == Searcher.FINISHED:
                return config
            if config is not None:
                self._issue(arm, trial_id, config)
                return config
        elif not self.pairs:
            return Searcher.FINISHED
        return self._suggest_confirmation(trial_id)

    def _issue(self, arm: str, trial_id: str, config: dict[str, Any]) -> None:
        self.issued[arm] += 1
        self.owner[trial_id] = arm
        self.configs[trial_id] = config

    def _suggest_lost(self, lost: _Lost, trial_id: str) -> dict[str, Any]:
        """A lost search trial again, as ``trial_id``, its run handed to it: the trial
        reports the run's result if it had ended, else trains again in it."""
        config = _replay(self.searchers[lost.arm], trial_id, lost)
        if config is None:  # a sampler that cannot take it again, or has learnt it already
            config = dict(lost.config)
            self.unknown.add(trial_id)
        self._issue(lost.arm, trial_id, config)
        if self.hand_over is not None:
            self.hand_over(lost.run_id, trial_id)
        return config

    def _suggest_confirmation(self, trial_id: str) -> dict[str, Any] | str | None:
        """The next confirmation run, of an arm whose search trials have all ended (its best
        config is known then); None while none is ready, FINISHED after the last. An arm's
        runs are issued as soon as its search ends, while other arms still search: a
        worker whose trial ended is kept for a trial waiting to start, and stopped when
        none is (Ray Tune's actor cache keeps one)."""
        for arm in self.searchers:
            if arm not in self.confirming and self._searched(arm):
                self.confirming.add(arm)
                self.confirmations += self._variants(arm)
        if self.confirmations:
            variant = self.confirmations.pop(0)
            run_id = self.lost_pairs.pop(_pair_of(variant), None)
            if run_id is not None and self.hand_over is not None:
                self.hand_over(run_id, trial_id)  # its seed ran already: no second run
            return variant
        if len(self.confirming) == len(self.searchers):
            return Searcher.FINISHED
        return None

    def _variants(self, arm: str) -> list[dict[str, Any]]:
        """``arm``'s confirmation runs, but those Ray already holds (``reconcile``)."""
        best = self.best_config(arm)
        variants = confirmation_variants({arm: best} if best else {}, self.pairs)
        return [v for v in variants if _pair_of(v) not in self.held]

    def _searched(self, arm: str) -> bool:
        """Every search trial of ``arm`` issued and ended."""
        return self.issued[arm] >= self.per_arm and arm not in self.owner.values()

    def best_config(self, arm: str) -> dict[str, Any] | None:
        """``arm``'s best search config of its trials ended so far (None: none can be)."""
        ended = [
            (arm, config, self.values[trial_id])
            for trial_id, config in self.configs.items()
            if trial_id in self.values and config["arm"] == arm
        ]
        return best_search_configs(ended, self.mode).get(arm)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.unknown:
            return
        if trial_id in self.owner and not result.get(DIVERGED_KEY):
            self.searchers[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error=False) -> None:
        arm = self.owner.pop(trial_id, None)
        if arm is None:
            return
        value = search_value(result, error, self.metric)
        if value is not None:
            self.values[trial_id] = value
        # A diverged trial is a failed one to the sampler: its last value would mislead TPE.
        if result and result.get(DIVERGED_KEY):
            result, error = None, True
        elif result and self.max_epochs and stopped_early(result, self.max_epochs):
            # Ray's OptunaSearch tells a trial that ends without a result or an error as
            # PRUNED; the epochs it reported (on_trial_result) stay its intermediate values.
            result = None
        if trial_id not in self.unknown:
            self.searchers[arm].on_trial_complete(trial_id, result=result, error=error)

    def reconcile(
        self,
        trials: Mapping[str, tuple[str, dict[str, Any], dict | None]],
        stored: Sequence[StoredRun] = (),
        hand_over: Callable[[str, str], None] | None = None,
    ) -> None:
        """Match this state to Ray's trials after a restore (trial id -> status, config, last
        result), then to the runs the store holds (``sweep.ledger``). Ray copies its trials
        and this state to storage one file at a time, every few seconds, so a driver killed
        meanwhile can leave the two from different saves, and both without the trials that
        started since. A search trial that ended unseen reaches its arm (else the arm would
        wait for it forever); one only Ray has counts for its arm (its sampler never learns
        it). The store has the last word: a run whose trial Ray lacks is issued again, a
        search trial with its own config (within its arm's budget) and a confirmation run
        when its pair comes up, and handed to the trial that takes its place (``hand_over``),
        which reports it if it had ended: nothing runs twice, and each arm's budget counts
        every trial once. A trial Ray lacks and the store has no run of is issued anew."""
        self.hand_over = hand_over
        lost = [run for run in stored if run.trial_id not in trials]
        taken = self._take_back(run for run in lost if not run.confirms)
        self._match_trials(trials)
        self._queue_lost(taken)
        ended_last = sorted((run for run in lost if run.confirms), key=lambda run: run.ended)
        self.lost_pairs = {(run.arm, *run.pair): run.run_id for run in ended_last}
        self.held = {_pair_of(c) for _, c, _ in trials.values() if contract.is_confirmation(c)}
        self.confirmations = [v for arm in self.confirming for v in self._variants(arm)]

    def _match_trials(self, trials: Mapping[str, tuple[str, dict[str, Any], dict | None]]):
        for trial_id, arm in list(self.owner.items()):
            if trial_id not in trials:  # never started: its config is drawn anew
                del self.owner[trial_id], self.configs[trial_id]
                self.issued[arm] -= 1
                self.searchers[arm].on_trial_complete(trial_id, error=True)
            elif trials[trial_id][0] in ENDED_STATUSES:
                status, _, result = trials[trial_id]
                self.on_trial_complete(trial_id, result, error=status == "ERROR")
        for trial_id, (status, config, result) in trials.items():
            unknown = trial_id not in self.configs and "arm" in config  # not one yet unfilled
            if unknown and not contract.is_confirmation(config):
                self._issue(config["arm"], trial_id, config)
                self.unknown.add(trial_id)  # to its arm's sampler
                if status in ENDED_STATUSES:
                    self.on_trial_complete(trial_id, result, error=status == "ERROR")

    def _take_back(self, runs: Iterable[StoredRun]) -> list[_Lost]:
        """The lost search trials that can be issued again (their config is known), each
        taken off these books until it is."""
        taken = []
        for run in runs:
            known = run.trial_id in self.configs
            config = self.configs.pop(run.trial_id) if known else run.config
            if config is None or run.arm not in self.searchers:
                continue  # a run of a version that did not log its config: left as it is
            if known:
                self.issued[run.arm] -= 1
                self.values.pop(run.trial_id, None)
            told = known and self.owner.pop(run.trial_id, None) is None
            taken.append(_Lost(run.arm, run.run_id, config, run.trial_id, told))
        return taken

    def _queue_lost(self, taken: list[_Lost]) -> None:
        """Those of ``taken`` their arms' budgets have room for: all, unless the store holds
        more of an arm's runs than its sampler issued."""
        self.lost = []
        for lost in taken:
            queued = sum(other.arm == lost.arm for other in self.lost)
            if self.issued[lost.arm] + queued < self.per_arm:
                self.lost.append(lost)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


def _replay(searcher: Searcher, trial_id: str, lost: _Lost) -> dict[str, Any] | None:
    """``lost``'s config from its arm's sampler again, as ``trial_id``: Ray's OptunaSearch
    keeps its Optuna trial by Ray's id (``_ot_trials``), so the trial it had moves to the new
    id (its number, and the run it names in the study, stay), or, where the sampler never had
    it, the config is enqueued for the Optuna trial asked next. None where the sampler is of
    another kind or has heard already how the trial ended (it must not hear it twice)."""
    ot_trials = getattr(searcher, "_ot_trials", None)
    if ot_trials is None:
        return None
    if lost.old_id in ot_trials:
        ot_trials[trial_id] = ot_trials.pop(lost.old_id)
        if lost.told:
            return None
    else:
        study = searcher._ot_study
        study.enqueue_trial(dict(lost.config))
        # The sampler's random state is as Ray saved it, before it drew this config: the
        # next trial would draw it again.
        study.sampler.reseed_rng()
    return searcher.suggest(trial_id)


class ArmsScheduler(FIFOScheduler):
    """One scheduler per arm (ASHA here); each search trial goes to the scheduler of its arm,
    and confirmation runs to none."""

    def __init__(self, make: Callable[[], TrialScheduler], arms: tuple[str, ...]) -> None:
        super().__init__()
        self.schedulers = {arm: make() for arm in arms}
        self._confirmations = FIFOScheduler()  # run to the last epoch, never compared

    def _of(self, trial) -> TrialScheduler:
        if contract.is_confirmation(trial.config):
            return self._confirmations
        return self.schedulers[trial.config["arm"]]

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
