"""The sweep's parent run in MLflow: opened (or reopened on --resume, under this driver's
lease), named by what ran, and its leftover child runs closed when the sweep stops."""

from __future__ import annotations

import json
import time
from typing import Any

from sweep.lease import Holder, Lease
from sweep.plan import SweepPlan
from trainables import contract
from trainables.edge import tracking
from trainables.edge.trial import TrackingTarget

STAMP_FORMAT = "%Y%m%d-%H%M%S"  # tune.py's stamp of a sweep: when it started


def open_parent(
    plan: SweepPlan, experiment_id: str, dataset: tracking.DatasetRecord
) -> tuple[str, Lease]:
    """The sweep's parent run, and this driver's lease on it (``sweep.lease``): reopened when
    resuming (refused while another driver holds it), else created with what resume needs."""
    if plan.parent_run_id:
        lease = Lease.take(plan.tracking_uri, plan.parent_run_id)
        tracking.reopen_run(plan.tracking_uri, plan.parent_run_id)
        return plan.parent_run_id, lease
    driver = Holder.me()
    parent = tracking.start_parent_run(
        plan.tracking_uri,
        experiment_id,
        parent_run_name(plan),
        tags={
            contract.SPACE_TAG: plan.space.name,
            contract.FACTOR_TAG: plan.space.factor,
            contract.ARMS_TAG: contract.ARMS_SEPARATOR.join(plan.arms),
            contract.METRIC_TAG: plan.metric,
            contract.MODE_TAG: plan.mode,
            contract.ARGV_TAG: json.dumps(list(plan.argv)),
            contract.STAMP_TAG: plan.stamp,
            contract.STORAGE_TAG: plan.storage_path,
            contract.LEASE_TAG: driver.to_tag(),
            **plan.parent_tags,
        },
        params=plan.options,
        dataset=dataset,
    )
    tracking.log_json(plan.tracking_uri, parent, class_summary(plan), contract.CLASSES_ARTIFACT)
    return parent, Lease(plan.tracking_uri, parent, driver)


def parent_run_name(plan: SweepPlan) -> str:
    """What ran, readable in the UI's run list, e.g.
    ``focal · focal vs ce · digits-lt · smallcnn · 11-23 15:40`` (the backbone is left out
    where the arms are backbones)."""
    parts = [plan.space.name, " vs ".join(plan.arms), plan.data.name]
    if plan.space.factor != "backbone":
        parts.append(",".join(plan.context.backbones))
    if plan.stamp:
        parts.append(_stamp_time(plan.stamp))
    return " · ".join(parts)


def _stamp_time(stamp: str) -> str:
    try:
        return time.strftime("%m-%d %H:%M", time.strptime(stamp, STAMP_FORMAT))
    except ValueError:  # a stamp of another form (a test's) is shown as it is
        return stamp


def close_leftover_runs(target: TrackingTarget, outcome: str = contract.INTERRUPTED) -> int:
    """End every child run still open: trials Ctrl-C stopped, or runs a killed driver left
    behind whose trials Ray had not yet recorded. Returns how many."""
    leftovers = [run.info.run_id for run in child_runs(target, running=True)]
    for run_id in leftovers:
        tracking.end_trial_run(target.uri, run_id, outcome)
    return len(leftovers)


def child_runs(target: TrackingTarget, running: bool = False) -> list:
    return tracking.child_runs(
        target.uri, target.experiment_id, target.parent_run_id, running=running
    )


def class_summary(plan: SweepPlan) -> dict[str, Any]:
    data = plan.data
    return {
        "dataset": data.name,
        "classes": list(data.classes),
        "train_counts": data.class_counts("train").tolist(),
        "val_counts": data.class_counts("val").tolist(),
        "test_counts": data.class_counts("test").tolist(),
        "multilabel": data.multilabel,
    }
