"""What the tracking store knows of a sweep's trials, for a sweep that continues.

Ray Tune saves its experiment (its trials and the searcher) every few seconds, so a driver
killed in between leaves Ray knowing fewer trials than ran: a trial started after the last
save is missing, even when its run had finished before the kill. MLflow has every run the
trials opened. A resumed sweep reads the parent run's child runs once (``stored_runs``), and
the searcher (``sweep.arms.ArmsSearcher.reconcile``) issues each run Ray lacks again, with
its own config, as a new Ray trial; the run is handed to that trial (``hand_over``) before
Ray starts it, so the trial finds it as a restarted trial finds its own: a run that had
ended reports its result and trains nothing, one that had not trains again in the same run.
Each arm's budget then counts every trial once, whatever Ray's save had missed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainables import contract
from trainables.edge import tracking
from trainables.edge.trial import TrackingTarget


@dataclass(frozen=True)
class StoredRun:
    """One child run of the sweep, as much of it as the searcher needs."""

    run_id: str
    trial_id: str  # the Ray trial the run belongs to now (tag ``ray_trial_id``)
    arm: str
    role: str
    pair: tuple[int, int]  # (split seed, seed): what pairs confirmation runs
    ended: bool  # ended as its trial ended it (``tracking.ended_for_good``): not trained again
    config: Mapping[str, Any] | None  # as Ray gave it (tag ``ray_config``); None: not logged

    @property
    def confirms(self) -> bool:
        return self.role == contract.CONFIRMATION_ROLE


def stored_runs(target: TrackingTarget) -> list[StoredRun]:
    """The sweep's child runs that belong to a trial, oldest first (one query)."""
    runs = tracking.child_runs(target.uri, target.experiment_id, target.parent_run_id)
    found = [_stored(run) for run in sorted(runs, key=lambda r: r.info.start_time or 0)]
    return [run for run in found if run is not None]


def _stored(run: Any) -> StoredRun | None:
    tags = run.data.tags
    needed = (contract.RAY_TRIAL_TAG, contract.ARM_TAG, contract.ROLE_TAG)
    if not all(tags.get(key) for key in needed):
        return None  # not a trial's run
    config = tags.get(contract.RAY_CONFIG_TAG)
    return StoredRun(
        run_id=run.info.run_id,
        trial_id=tags[contract.RAY_TRIAL_TAG],
        arm=tags[contract.ARM_TAG],
        role=tags[contract.ROLE_TAG],
        pair=(int(tags.get(contract.SPLIT_SEED_TAG, 0)), int(tags.get(contract.SEED_TAG, 0))),
        ended=tracking.ended_for_good(run),
        config=json.loads(config) if config else None,
    )


def hand_over(uri: str, run_id: str, trial_id: str) -> None:
    """Make ``run_id`` the run of Ray's trial ``trial_id``: the trial looks its run up by
    this tag when it starts."""
    tracking.set_tags(uri, run_id, {contract.RAY_TRIAL_TAG: trial_id})
