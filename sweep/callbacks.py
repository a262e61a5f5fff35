"""Ray Tune callbacks of a sweep: the progress view, closing the MLflow runs of trials Ray ended,
and carrying the per-arm schedulers' state across ``Tuner.restore``."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from ray.tune import Callback

from sweep import ledger
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
from trainables import contract
from trainables.edge import tracking
from trainables.edge.trial import DIVERGED_KEY, TrackingTarget


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


def better_candidate(
    value: float, config: dict, best: tuple[float, dict] | None, mode: str
) -> bool:
    """Whether a search trial's value and config beat an arm's best so far: by value, and
    between equal values by the config's canonical JSON. The choice then does not hang on
    the order trials are seen in: the searcher sees them end, the runner reads Ray's list,
    which a restore or a retried trial reorders."""
    if best is None:
        return True
    best_value, best_config = best
    if value == best_value:
        return _canonical(config) < _canonical(best_config)
    return better(value, best_value, mode)


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def search_value(result: dict | None, error: bool, metric: str) -> float | None:
    """A search trial's value as a candidate for its arm's best config: None for one that
    failed, diverged or never reported the metric."""
    if error or not result or diverged(result):
        return None
    value = result.get(metric)
    return None if value is None else float(value)


@dataclass(frozen=True)
class DriverOptions:
    """What the callbacks take from the command line that runs the sweep, which ``--resume``
    may change (``sweep.resume.EXEMPT``): Ray pickles the callbacks into the experiment, and
    ``Tuner.restore`` would bring them back with the first command line's values."""

    quiet: bool
    live: bool | None  # None: redraw in place when the output is a terminal
    slots: int
    target: TrackingTarget


_RESUMING: DriverOptions | None = None


@contextlib.contextmanager
def resumed_with(options: DriverOptions) -> Iterator[None]:
    """Callbacks unpickled inside (``Tuner.restore``) take ``options`` in place of the values
    they were pickled with."""
    global _RESUMING
    _RESUMING = options
    try:
        yield
    finally:
        _RESUMING = None


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
        self.muted = False  # follows its trials, writes nothing (another phase is on screen)
        self._start()

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles the callbacks with the Tuner; the terminal they write to stays here.
        return {**self.__dict__, "_block": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if _RESUMING is not None:  # the view ``setup`` draws is the resuming command's
            self.quiet, self.live, self.slots = _RESUMING.quiet, _RESUMING.live, _RESUMING.slots

    def _start(self) -> None:
        self._started = self.clock()
        # When each trial started and how long each ended one took, by this clock: between
        # two results a running trial's age still grows, and a trial's start-up counts.
        self._began: dict[str, float] = {}
        self._took: dict[str, float] = {}
        self._drawn_at = -math.inf
        self._finished = False  # its final line written
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
        self.finish(trials)

    def finish(self, trials: list, current: Any = None, state: str | None = None) -> None:
        """The phase's final line (``current`` ended as ``state``, whatever its status); the
        view writes nothing after it."""
        if self.quiet or self._finished:
            return
        self._finished = True
        line = final_line(self.snapshot(trials, current, state))
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
        if self.muted or self._finished:
            return
        if self._block is not None:
            self._redraw(trials, trial, state)
        elif not self.quiet:
            snap = self.snapshot(trials, trial, state)
            if snap.done < snap.total:  # the last one is told by the phase's final line
                print(trial_line(snap), file=self.stream or sys.stdout, flush=True)

    def _redraw(self, trials: list, current: Any = None, state: str | None = None, result=None):
        if self.muted or self._finished or self._block is None:
            return
        if self.clock() - self._drawn_at < self.REFRESH_S:
            return
        self._block.draw(live_lines(self.snapshot(trials, current, state, result)))
        self._drawn_at = self.clock()


class SweepProgress(Callback):
    """The search's progress view, then the confirmation's, for the one Tuner that runs both
    (``sweep.arms``): each view follows only the trials of its role. An arm's confirmation
    runs may start while another arm still searches; their view stays silent until the last
    search trial has ended and the search's view has left its final line. It then counts the
    runs it will have: ``pairs`` for each arm with a search trial to confirm."""

    def __init__(self, search: Progress, confirmation: Progress | None, pairs: int) -> None:
        self.search = search
        self.confirmation = confirmation
        self.pairs = pairs
        self._confirming = False  # a confirmation run has started
        self._searched = False  # every search trial has ended

    def setup(self, **info) -> None:
        self.search.setup(**info)
        self._confirming = self._searched = False

    def _view(self, trials: list, trial: Any) -> tuple[Progress, list]:
        """The view ``trial`` belongs to and its trials; the confirmation's starts here."""
        search, confirmation = _split(trials)
        if not _confirms(trial) or self.confirmation is None:
            return self.search, search
        if not self._confirming:
            self._confirming = True
            self.confirmation.setup()
            self.confirmation.muted = not self._searched
            self._end_search_if_done(search)  # resumed after the search had ended
        return self.confirmation, confirmation

    def _end_search_if_done(self, search: list, current: Any = None, state: str = "") -> None:
        if self._searched:
            return
        snap = self.search.snapshot(search, current, state or None)
        if snap.done < snap.total:
            return
        self._searched = True
        self.search.finish(search, current, state or None)
        if self.confirmation is not None:
            self._count_confirmations(search, current if state == contract.FAILED else None)
            self.confirmation.muted = False

    def _count_confirmations(self, search: list, failed: Any = None) -> None:
        """``pairs`` runs for each arm with a search trial that can be its best config
        (``search_value``); ``failed``: a trial that failed, though Ray has not yet marked
        it so."""
        arms = {
            arm_of(t.config or {})
            for t in search
            if search_value(t.last_result, t.status == "ERROR" or t is failed, self.search.metric)
            is not None
        }
        self.confirmation.total = self.pairs * len(arms)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        view, mine = self._view(trials, trial)
        view.on_trial_start(iteration, mine, trial)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        view, mine = self._view(trials, trial)
        view.on_trial_result(iteration, mine, trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        view, mine = self._view(trials, trial)
        view.on_trial_complete(iteration, mine, trial)
        if view is self.search:
            state = outcome_of(trial.last_result or {}, self.search.max_epochs)
            self._end_search_if_done(mine, trial, state)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        view, mine = self._view(trials, trial)
        view.on_trial_error(iteration, mine, trial)
        if view is self.search:
            self._end_search_if_done(mine, trial, contract.FAILED)

    def on_step_end(self, iteration, trials, **info) -> None:
        search, confirmation = _split(trials)
        if self._searched and self._confirming:
            self.confirmation.on_step_end(iteration, confirmation)
        else:  # a view that has left its final line draws nothing more
            self.search.on_step_end(iteration, search)

    def on_experiment_end(self, trials, **info) -> None:
        search, confirmation = _split(trials)
        if confirmation and not self._confirming:  # all had ended before a resume
            self._view(trials, confirmation[0])
        if not self._searched:  # stopped (Ctrl-C) during the search, or nothing to confirm
            self.search.finish(search)
            if self._confirming:
                self._count_confirmations(search)
        if self._confirming:
            self.confirmation.finish(confirmation)


def _split(trials: list) -> tuple[list, list]:
    """Search trials, confirmation runs."""
    return [t for t in trials if not _confirms(t)], [t for t in trials if _confirms(t)]


def _confirms(trial: Any) -> bool:
    return contract.is_confirmation(trial.config or {})


_STATES = {"RUNNING": RUNNING, "ERROR": contract.FAILED}  # the others wait (PENDING, PAUSED)


def arm_of(config: dict[str, Any]) -> str | None:
    """A trial's arm, of a search trial or a confirmation run."""
    arm = config.get("arm")
    return None if arm is None else str(arm)


class CloseRuns(Callback):
    """Ends the MLflow run of a trial Ray stopped early or lost: the trial cannot do it."""

    def __init__(self, target: TrackingTarget, max_epochs: int) -> None:
        self.target = target
        self.max_epochs = max_epochs

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if _RESUMING is not None:  # the store as the resuming command names it
            self.target = _RESUMING.target

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        outcome = outcome_of(result, self.max_epochs)
        if outcome != contract.STOPPED_EARLY:
            return  # the trial ended its run itself, before its last report: nothing to ask
        if run_id := result.get("mlflow_run_id"):
            tracking.end_trial_run(self.target.uri, run_id, outcome)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        if run_id := (trial.last_result or {}).get("mlflow_run_id"):
            tracking.end_trial_run(self.target.uri, run_id, contract.FAILED)


class ReconcileSearcher(Callback):
    """Ray restores a searcher and the trials from files it copied to storage one at a time,
    every few seconds; on the first step of each run of the experiment, before the searcher
    is asked for a trial, its state is matched to the trials and to the sweep's runs in the
    tracking store (``ArmsSearcher.reconcile``, ``sweep.ledger``): one query. It holds the
    searcher the Tuner runs, as ``SchedulerState`` holds the scheduler."""

    def __init__(self, searcher: Any, target: TrackingTarget) -> None:
        self.searcher = searcher
        self.target = target
        self._matched = False

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if _RESUMING is not None:  # the store as the resuming command names it
            self.target = _RESUMING.target

    def setup(self, **info) -> None:
        self._matched = False

    def on_step_begin(self, iteration, trials, **info) -> None:
        if self._matched:
            return
        self._matched = True
        self.searcher.reconcile(
            {t.trial_id: (t.status, t.config or {}, t.last_result or None) for t in trials},
            ledger.stored_runs(self.target),
            functools.partial(ledger.hand_over, self.target.uri),
        )


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
