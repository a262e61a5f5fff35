"""Ray Tune callbacks of a sweep: progress lines, closing the MLflow runs of trials Ray ended,
and carrying the per-arm schedulers' state across ``Tuner.restore``."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback

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


class Progress(Callback):
    """One line per finished trial. Counts come from the trials themselves, not from a
    counter of this callback, so they stay right after ``--resume``."""

    def __init__(
        self, phase: str, total: int, metric: str, mode: str, max_epochs: int, quiet: bool
    ) -> None:
        self.phase = phase
        self.total = total
        self.metric = metric
        self.mode = mode
        self.max_epochs = max_epochs
        self.quiet = quiet

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._print(trials, trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._print(trials, trial, failed=True)

    def _print(self, trials: list, current: Any, failed: bool) -> None:
        """``current`` has ended, though Ray updates its status only after the callbacks."""
        if self.quiet:
            return
        ended = [t for t in trials if t is current or t.status in ("TERMINATED", "ERROR")]
        errored = [t for t in ended if (t is current and failed) or t.status == "ERROR"]
        results = [t.last_result or {} for t in ended if t not in errored]
        early = sum(stopped_early(r, self.max_epochs) for r in results)
        lost = sum(diverged(r) for r in results)
        errors = len(errored)
        running = sum(t.status == "RUNNING" and t is not current for t in trials)
        best = None
        for r in results:
            value = r.get(self.metric)
            if value is not None and not diverged(r) and better(value, best, self.mode):
                best = float(value)
        extra = "".join(
            f", {n} {what}"
            for n, what in ((early, "stopped early"), (lost, "diverged"), (errors, "failed"))
            if n
        )
        shown = "n/a" if best is None else f"{best:.4f}"
        print(
            f"[{self.phase}] {len(ended)}/{self.total} trials ended{extra}; {running} running; "
            f"best {contract.unbest(self.metric)} so far {shown}",
            flush=True,
        )


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
