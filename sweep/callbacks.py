"""Ray Tune callbacks of a sweep: the progress view, closing the MLflow runs of trials Ray ended,
and carrying the per-arm schedulers' state across ``Tuner.restore``."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ray.tune import Callback

from sweep.console import LiveBlock, live_terminal
from sweep.progress import (
    PENDING,
    RUNNING,
    Snapshot,
    TrialView,
    final_line,
    live_lines,
    snapshot,
    trial_line,
)
from trainables import contract, tracking
from trainables.trial import DIVERGED_KEY, TrackingTarget


def stopped_early(result: dict, max_epochs: int) -> bool:
    """Reported some epochs but not all: the scheduler ended it (errors are counted apart)."""
    return 0 < result.get("training_iteration", 0) < max_epochs and not diverged(result)


def diverged(result: dict) -> bool:
    return bool(result.get(DIVERGED_KEY))


def outcome_of(result: dict, max_epochs: int) -> str:
    """How a trial that ended without an error ended, from its last result."""
    if diverged(result):
        return contract.DIVERGED
    return contract.STOPPED_EARLY if stopped_early(result, max_epochs) else contract.COMPLETED


def better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value > best if mode == "max" else value < best)


def search_value(result: dict | None, error: bool, metric: str) -> float | None:
    """A search trial's value as a candidate for its arm's best config: None for one that
    failed, diverged or never reported the metric."""
    if error or not result or diverged(result):
        return None
    value = result.get(metric)
    return None if value is None else float(value)


class Progress(Callback):
    """The progress view of one phase (``sweep.progress``). On a terminal a few lines are
    redrawn in place as trials start, report and end, at most twice a second; elsewhere one
    plain line per ended trial. When the phase ends, one line stays. Counts come from the
    trials themselves, not from a counter of this callback, so they stay right after
    ``--resume``."""

    REFRESH_S = 0.5

    def __init__(
        self,
        phase: str,
        total: int,
        metric: str,
        mode: str,
        max_epochs: int,
        quiet: bool,
        *,
        arms: Sequence[str] = (),
        slots: int = 0,
        live: bool | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``slots``: trials that run at once, for the estimate of the time left; ``live``:
        redraw in place (None: when the output is a terminal); ``stream``: sys.stdout as it
        is when the phase starts, unless given."""
        self.phase = phase
        self.total = total
        self.metric = metric
        self.mode = mode
        self.max_epochs = max_epochs
        self.quiet = quiet
        self.arms = tuple(arms)
        self.slots = slots
        self.live = live
        self.stream = stream
        self.clock = clock
        self._start()

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the callbacks with the Tuner; the terminal they write to stays here.
        return {**self.__dict__, "_block": None}

    def _start(self) -> None:
        self._started = self.clock()
        # When each trial started and how long each ended one took, by this clock: between
        # two results a running trial's age still grows, and a trial's start-up counts.
        self._began: dict[str, float] = {}
        self._took: dict[str, float] = {}
        self._drawn_at = -math.inf
        out = self.stream or sys.stdout
        live = live_terminal(out) if self.live is None else self.live
        self._block = LiveBlock(out) if live and not self.quiet else None

    def setup(self, **info) -> None:
        self._start()  # elapsed time counts from the start of the phase (or of its resume)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._began[trial.trial_id] = self.clock()
        # Ray marks the trial RUNNING after the callbacks.
        self._redraw(trials, trial, RUNNING)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        # ``trial.last_result`` is still the previous one here.
        self._redraw(trials, trial, RUNNING, result)

    def on_step_end(self, iteration, trials, **info) -> None:
        self._redraw(trials)  # the clock moves between results

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # ``trial`` has ended, though Ray updates its status only after the callbacks.
        self._ended(trials, trial, outcome_of(trial.last_result or {}, self.max_epochs))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trials, trial, contract.FAILED)

    def on_experiment_end(self, trials, **info) -> None:
        if self.quiet:
            return
        line = final_line(self.snapshot(trials))
        if self._block is not None:
            self._block.close(line)
        else:
            print(line, file=self.stream or sys.stdout, flush=True)

    def snapshot(
        self, trials: list, current: Any = None, state: str | None = None, result=None
    ) -> Snapshot:
        """The phase now; ``current`` is in ``state`` whatever its status says."""
        views = [
            self._view(t, state if t is current else None, result if t is current else None)
            for t in trials
        ]
        return snapshot(
            self.phase,
            views,
            total=self.total,
            metric=self.metric,
            mode=self.mode,
            arms=self.arms,
            elapsed=self.clock() - self._started,
            slots=self.slots,
        )

    def _view(self, trial: Any, state: str | None, result: dict | None) -> TrialView:
        result = result if result is not None else trial.last_result or {}
        state = state or self._state_of(trial)
        value = None if diverged(result) else result.get(self.metric)
        seconds = self._seconds(trial, state, result)
        return TrialView(state, arm_of(trial.config or {}), value, seconds)

    def _seconds(self, trial: Any, state: str, result: dict) -> float | None:
        """How long the trial has run, by this clock when it saw the trial start, else by
        Ray's training time (a trial that ended before a ``--resume``)."""
        if trial.trial_id in self._took:
            return self._took[trial.trial_id]
        if state == RUNNING and trial.trial_id in self._began:
            return self.clock() - self._began[trial.trial_id]
        return result.get("time_total_s")

    def _state_of(self, trial: Any) -> str:
        if trial.status == "TERMINATED":
            return outcome_of(trial.last_result or {}, self.max_epochs)
        return _STATES.get(trial.status, PENDING)

    def _ended(self, trials: list, trial: Any, state: str) -> None:
        if trial.trial_id in self._began:
            self._took[trial.trial_id] = self.clock() - self._began.pop(trial.trial_id)
        if self._block is not None:
            self._redraw(trials, trial, state)
        elif not self.quiet:
            snap = self.snapshot(trials, trial, state)
            if snap.done < snap.total:  # the last one is told by the phase's final line
                print(trial_line(snap), file=self.stream or sys.stdout, flush=True)

    def _redraw(self, trials: list, current: Any = None, state: str | None = None, result=None):
        if self._block is None or self.clock() - self._drawn_at < self.REFRESH_S:
            return
        self._block.draw(live_lines(self.snapshot(trials, current, state, result)))
        self._drawn_at = self.clock()


class SweepProgress(Callback):
    """The search's progress view, then the confirmation's, for the one Tuner that runs both
    (``sweep.arms``): each view sees only the trials of its role. The search's view leaves
    its final line when the first confirmation run starts, which then counts the runs it
    will have: ``pairs`` for each arm with a search trial to confirm."""

    def __init__(self, search: Progress, confirmation: Progress | None, pairs: int) -> None:
        self.search = search
        self.confirmation = confirmation
        self.pairs = pairs
        self._confirming = False

    def setup(self, **info) -> None:
        self.search.setup(**info)
        self._confirming = False

    def _split(self, trials: list) -> tuple[list, list]:
        search = [t for t in trials if not _confirms(t)]
        return search, [t for t in trials if _confirms(t)]

    def _view(self, trials: list, trial: Any) -> tuple[Progress, list]:
        """The view ``trial`` belongs to and its trials; the confirmation's starts here."""
        search, confirmation = self._split(trials)
        if not _confirms(trial) or self.confirmation is None:
            return self.search, search
        if not self._confirming:
            self._confirming = True
            self.search.on_experiment_end(search)
            arms = {arm_of(t.config or {}) for t in search if _confirmable(t, self.search)}
            self.confirmation.total = self.pairs * len(arms)
            self.confirmation.setup()
        return self.confirmation, confirmation

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        view, mine = self._view(trials, trial)
        view.on_trial_start(iteration, mine, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        view, mine = self._view(trials, trial)
        view.on_trial_result(iteration, mine, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        view, mine = self._view(trials, trial)
        view.on_trial_complete(iteration, mine, trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        view, mine = self._view(trials, trial)
        view.on_trial_error(iteration, mine, trial)

    def on_step_end(self, iteration, trials, **info) -> None:
        search, confirmation = self._split(trials)
        if self._confirming:
            self.confirmation.on_step_end(iteration, confirmation)
        else:
            self.search.on_step_end(iteration, search)

    def on_experiment_end(self, trials, **info) -> None:
        search, confirmation = self._split(trials)
        if self._confirming:
            self.confirmation.on_experiment_end(confirmation)
        else:
            self.search.on_experiment_end(search)


def _confirms(trial: Any) -> bool:
    config = trial.config or {}
    return config.get("variant", config).get("role") == contract.CONFIRMATION_ROLE


def _confirmable(trial: Any, view: Progress) -> bool:
    """A search trial that can be its arm's best config (``search_value``)."""
    return search_value(trial.last_result, trial.status == "ERROR", view.metric) is not None


_STATES = {"RUNNING": RUNNING, "ERROR": contract.FAILED}  # the others wait (PENDING, PAUSED)


def arm_of(config: dict[str, Any]) -> str | None:
    """A search trial's arm, or a confirmation run's (inside its grid ``variant``)."""
    arm = config.get("arm", (config.get("variant") or {}).get("arm"))
    return None if arm is None else str(arm)


class CloseRuns(Callback):
    """Ends the MLflow run of a trial Ray stopped early or lost: the trial cannot do it."""

    def __init__(self, target: TrackingTarget, max_epochs: int) -> None:
        self.target = target
        self.max_epochs = max_epochs

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        if run_id := result.get("mlflow_run_id"):
            tracking.end_trial_run(self.target.uri, run_id, outcome_of(result, self.max_epochs))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if run_id := (trial.last_result or {}).get("mlflow_run_id"):
            tracking.end_trial_run(self.target.uri, run_id, contract.FAILED)


class SchedulerState(Callback):
    """Ray saves a searcher's state and callbacks' state with the experiment, but restores a
    scheduler as it was built. This callback holds the per-arm scheduler (the same object
    the Tuner runs: both travel in one pickle) and saves and restores its state, so ASHA's
    rungs survive ``--resume``."""

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict[str, Any] | None:
        return {"state": self.scheduler.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.scheduler.set_state(state["state"])
