"""The sweep's answer says only what the paired comparison says: a planted difference is
called one, a planted nothing is not, in the parent run's tags, its description (MLflow's
note) and the summary. The confirmation runs are written straight into an MLflow store."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from sweep.answer import log_answer
from sweep.options import parse_args
from sweep.plan import build_plan
from sweep.summary import format_summary
from sweep.tally import ArmResult
from tests.analysis_tests.conftest import (
    CLASSES,
    METRIC,
    _child,
    _config,
    _targets,
    start_fake_sweep,
)
from trainables import contract

# Per seed, focal's gain over ce in test macro F1 (ce's base moves with the seed).
CLEAR_GAINS = (0.050, 0.045, 0.055, 0.052)
NO_GAINS = (0.030, -0.030, 0.020, -0.018)  # focal ahead by 0.05 points
HYPER = {"lr": 0.01, "momentum": 0.9, "batch_size": 32, "freeze": "none"}


def plant_sweep(root, gains: tuple[float, ...]) -> tuple[SimpleNamespace, list[ArmResult]]:
    """A parent run and its confirmation runs, focal ahead of ce by ``gains`` per seed."""
    w, experiment_id, parent = start_fake_sweep(root, {"space": "focal"})
    rng = np.random.default_rng(5)
    values: dict[str, list[float]] = {"focal": [], "ce": []}
    for seed, gain in enumerate(gains, start=1):
        base = 0.6 + 0.03 * seed
        for arm, g in (("ce", 0.0), ("focal", gain)):
            extra = {"gamma": 2.0} if arm == "focal" else {}
            config = _config(arm=arm, loss=arm, role="confirmation", seed=seed, **HYPER, **extra)
            test = _targets(rng, base - 0.02 + g, 0.5, (("test", 0.0),))
            _child(w, experiment_id, parent, config, _targets(rng, base + g, 0.5), rng, test)
            values[arm].append(base + g)
    w.client.set_terminated(parent, "FINISHED")
    target = SimpleNamespace(uri=w.uri, experiment_id=experiment_id, parent_run_id=parent)
    arms = [
        ArmResult(arm, {"loss": arm}, max(v), confirmation_values=v) for arm, v in values.items()
    ]
    return target, arms


@pytest.fixture
def plan(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan = build_plan(parse_args(["--space", "focal", "--confirm-seeds", "4"]))
    return dataclasses.replace(plan, experiment="focal")


@pytest.mark.parametrize(
    ("gains", "clear", "verdict"),
    [
        (CLEAR_GAINS, True, "loss=focal better on test macro F1: +5.1 points [+4.4, +5.7]"),
        (NO_GAINS, False, "no clear difference between loss=focal and loss=ce on test macro F1"),
    ],
    ids=["planted-difference", "planted-nothing"],
)
def test_the_answer_carries_the_verdict_everywhere(tmp_path, plan, gains, clear, verdict):
    assert len(CLASSES) == 4  # the planted runs' classes, not digits': only the tags matter
    target, arms = plant_sweep(tmp_path / "store", gains)
    log_answer(plan, arms, target)
    from mlflow.tracking import MlflowClient

    tags = MlflowClient(target.uri).get_run(target.parent_run_id).data.tags
    answer = tags[contract.ANSWER_TAG]
    assert answer.startswith(verdict)
    assert answer.count("4 pairs") == 1 and answer.endswith("pairs)")
    assert tags[contract.ANSWER_CLEAR_TAG] == str(clear)
    note = tags[contract.DESCRIPTION_TAG]
    assert note.startswith(f"**Answer** (loss: focal, ce; {METRIC}): {answer}")
    assert "Power: with " in note or "power" in note.lower()
    text = format_summary(plan, arms, target.experiment_id, target.parent_run_id, tags)
    assert f"Answer: {answer}" in text
    if clear:
        assert "Winner: loss=focal, better than every other arm" in text
    else:
        assert "Winner" not in text
        assert "Model kept: loss=focal's, the higher mean over confirmation seeds" in text
