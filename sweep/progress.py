"""What the progress view of a sweep's phase says, computed from plain records of its trials
and then written as text. Nothing here knows Ray: ``sweep.callbacks.Progress`` turns Ray's
trials into ``TrialView`` records, ``sweep.console`` puts the text on the screen.

Every trial is in exactly one state, so the counts add up to the trials there are: a phase
never reads "8/8 done, 1 running"."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from trainables import contract

PENDING = "pending"  # not started yet (or paused)
RUNNING = "running"
# The ways a trial ends, in the order the view lists them (contract.COMPLETED first).
ENDED = (contract.COMPLETED, contract.STOPPED_EARLY, contract.DIVERGED, contract.FAILED)
_SHOWN = {contract.STOPPED_EARLY: "stopped early", contract.DIVERGED: "diverged"}
BAR_WIDTH = 20


@dataclass(frozen=True)
class TrialView:
    """One trial as the view needs it."""

    state: str  # PENDING, RUNNING or one of ENDED
    arm: str | None = None
    value: float | None = None  # its best value of the metric so far; None: none to show
    seconds: float | None = None  # how long it has trained (Ray's time_total_s)


@dataclass(frozen=True)
class Snapshot:
    """A phase at one moment: counts by state, the best value per arm, the time."""

    phase: str
    total: int
    counts: dict[str, int]
    best: dict[str, float | None]  # per arm, in the arms' order
    metric: str  # as the user names it (val_macro_f1, not best_val_macro_f1)
    elapsed: float
    remaining: float | None  # None until a trial has ended

    @property
    def done(self) -> int:
        return sum(self.counts.get(state, 0) for state in ENDED)

    @property
    def running(self) -> int:
        return self.counts.get(RUNNING, 0)


def snapshot(
    phase: str,
    trials: Sequence[TrialView],
    *,
    total: int,
    metric: str,
    mode: str,
    arms: Sequence[str] = (),
    elapsed: float,
    slots: int = 0,
) -> Snapshot:
    """The phase's numbers. ``total`` grows to the trials there are (a restored phase may
    hold more than it was planned with); ``slots`` is how many trials run at once."""
    counts = {state: 0 for state in (PENDING, RUNNING, *ENDED)}
    for trial in trials:
        counts[trial.state] = counts.get(trial.state, 0) + 1
    total = max(total, len(trials))
    counts[PENDING] += total - len(trials)  # trials the searcher has not created yet
    durations = [t.seconds for t in trials if t.state in ENDED and t.seconds is not None]
    running_for = [t.seconds or 0.0 for t in trials if t.state == RUNNING]
    return Snapshot(
        phase=phase,
        total=total,
        counts=counts,
        best=best_per_arm(trials, mode, arms),
        metric=contract.unbest(metric),
        elapsed=elapsed,
        remaining=estimate_remaining(durations, running_for, counts[PENDING], slots),
    )


def best_per_arm(
    trials: Iterable[TrialView], mode: str, arms: Sequence[str] = ()
) -> dict[str, float | None]:
    """Each arm's best finite value so far, running trials' included; arms in the order
    given, then any other in the order its trials come."""
    best: dict[str, float | None] = dict.fromkeys(arms)
    for trial in trials:
        if trial.arm is None:
            continue
        current = best.setdefault(trial.arm, None)
        value = trial.value
        if value is None or not math.isfinite(value):
            continue
        if current is None or (value > current if mode == "max" else value < current):
            best[trial.arm] = float(value)
    return best


def estimate_remaining(
    durations: Sequence[float], running_for: Sequence[float], queued: int, slots: int
) -> float | None:
    """Seconds until the phase ends. Each trial not started takes the mean duration of those
    that ended, each running one what it has left of that mean; the work is shared by the
    trials that run at once (``slots``, or as many as run now when more do). None before
    any trial has ended: there is nothing to take the mean of."""
    if not durations:
        return None
    mean = statistics.fmean(durations)
    work = queued * mean + sum(max(mean - s, 0.0) for s in running_for)
    return work / max(slots, len(running_for), 1)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def clock(seconds: float) -> str:
    """``1:05``, ``1:02:03``: elapsed and remaining time."""
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _done(snap: Snapshot) -> str:
    return f"{snap.done}/{snap.total} {'trial' if snap.total == 1 else 'trials'} done"


def _outcomes(snap: Snapshot, every: bool = False) -> str:
    """``1 stopped early, 2 failed``: the ways trials ended other than completing; those
    with no trial only when ``every``."""
    parts = [
        f"{snap.counts.get(state, 0)} {_SHOWN.get(state, state)}"
        for state in ENDED[1:]
        if every or snap.counts.get(state, 0)
    ]
    return ", ".join(parts)


def _best(snap: Snapshot) -> str:
    values = ", ".join(
        f"{arm} {'n/a' if value is None else f'{value:.4f}'}" for arm, value in snap.best.items()
    )
    return f"best {snap.metric} {values}" if values else f"best {snap.metric} n/a"


def _time(snap: Snapshot) -> str:
    """``0:42 elapsed, about 1:10 left``; the estimate once a trial has ended."""
    elapsed = f"{clock(snap.elapsed)} elapsed"
    if snap.remaining is None:
        return elapsed
    if snap.remaining < 1 and snap.done < snap.total:
        return f"{elapsed}, finishing"
    return f"{elapsed}, about {clock(snap.remaining)} left"


def trial_line(snap: Snapshot) -> str:
    """The plain line printed when a trial ends (output that is not a terminal)."""
    ended = _outcomes(snap)
    return (
        f"[{snap.phase}] {_done(snap)}{f' ({ended})' if ended else ''}, "
        f"{snap.running} running; {_best(snap)}; {_time(snap)}"
    )


def live_lines(snap: Snapshot) -> list[str]:
    """The three lines a terminal redraws in place while the phase runs; they fit in 80
    columns with two arms."""
    filled = round(BAR_WIDTH * snap.done / snap.total) if snap.total else 0
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    return [
        f"[{snap.phase}] [{bar}] {_done(snap)}, {snap.running} running",
        f"  {_outcomes(snap, every=True)} | {_time(snap)}",
        f"  {_best(snap)}",
    ]


def final_line(snap: Snapshot) -> str:
    """The one line a phase leaves when it ends, finished or not."""
    ended = f" ({_outcomes(snap)})" if _outcomes(snap) else ""
    unfinished = snap.total - snap.done
    if unfinished:
        head = f"stopped after {clock(snap.elapsed)}: {_done(snap)}{ended}, {unfinished} unfinished"
    else:
        head = f"{_done(snap)} in {clock(snap.elapsed)}{ended}"
    return f"[{snap.phase}] {head}; {_best(snap)}"
