"""A small fake sweep written straight into a temporary MLflow store, following
docs/tracking.md, with effects planted so tests know the right answers.

``make_fake_sweep(root)`` builds it; the session fixture ``fake_sweep`` holds it, and ``sweep``
hands it to the tests that check values. To run those on a real sweep, override ``sweep`` with
a fixture returning a ``SweepInfo`` for the real store (``planted`` left empty: the tests that
need planted numbers skip then). The bad-input tests keep using ``fake_sweep``.

Its confirmation runs carry test metrics as the sweep logs them (once, at the best epoch, with
other planted effects than on val); the same store holds an older sweep without any
(experiment ``focal-old``), and the parent run names a winning model.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainables import contract
from trainables.contract import PARENT_TAG, SPLITS, metric_safe

CLASSES = ("cat", "dog", "ant (rare)", "fish")  # "ant (rare)" needs its metric key sanitised
TRAIN_COUNTS = (200, 100, 20, 50)
VAL_COUNTS = (60, 30, 8, 16)
TEST_COUNTS = (40, 20, 4, 12)  # the rare class has 4 test images: its recall moves by 0.25
SEEDS = (0, 1, 2)
EPOCHS = 4
BEST_EPOCH = 3  # epoch 4 is worse, so "at the best epoch" and "at the last" differ
METRIC = contract.DEFAULT_METRIC

# Planted paired effects of focal over ce in the confirmation runs, at the best epoch.
# Per seed: val_macro_f1 gains 0.05 plus the noise below; the rare class's recall gains 0.2;
# cat's recall is identical in both arms (difference exactly 0).
MACRO_F1_NOISE = (0.004, -0.003, 0.002)
RARE_RECALL_GAIN = 0.2
# At the last epoch focal drops more than ce, so a last-epoch comparison would be wrong.
LAST_EPOCH_DROP = {"focal": 0.08, "ce": 0.01}
# On test the effects differ from val, so a test that reads the wrong split fails: macro F1
# gains 0.03 plus noise, the rare class's recall gains 0.5 (0.25 -> 0.75, 1 -> 3 of 4 images).
TEST_MACRO_F1_NOISE = (0.006, -0.004, 0.001)
TEST_MACRO_F1_GAIN = 0.03
TEST_RARE_RECALL = {"ce": 0.25, "focal": 0.75}
MODEL_URI = "models:/m-0123456789abcdef"
TEST = "test"  # the held-out split's metric prefix
TEST_PREDICTIONS = (
    "predictions/test_predictions.npz"  # the parent run's winning model (tag model_uri)
)


@dataclass(frozen=True)
class SweepInfo:
    tracking_uri: str
    experiment: str
    parent_run_id: str
    root: Path
    factor: str = "loss"
    levels: tuple[str, str] = ("ce", "focal")  # baseline, other
    classes: tuple[str, ...] = CLASSES
    best_run_id: str = ""
    empty_experiment: str = ""  # an experiment whose sweep has no finished run
    old_experiment: str = ""  # a finished sweep whose runs logged no test metrics
    planted: dict[str, float] = field(default_factory=dict)  # metric -> mean focal - ce
    model_uri: str = ""  # the parent run's tag model_uri


def _config(**changes: Any) -> dict[str, Any]:
    from trainables.config import TrialConfig

    config = dataclasses.replace(TrialConfig(), **changes)
    return config.to_dict()


def _epoch_metrics(target: dict[str, float], arm: str, epoch: int) -> dict[str, float]:
    """Every metric of one epoch: the target values at the best epoch, lower before it and
    lower by the arm's drop after it."""
    shift = -0.1 * (BEST_EPOCH - epoch) if epoch <= BEST_EPOCH else -LAST_EPOCH_DROP[arm]
    values = {}
    for key, value in target.items():
        if key.endswith("_loss"):
            values[key] = value + 0.3 * (BEST_EPOCH - epoch) if epoch <= BEST_EPOCH else value
        else:
            values[key] = float(np.clip(value + shift, 0.0, 1.0))
    return values


def _targets(
    rng: np.random.Generator,
    macro_f1: float,
    rare_recall: float,
    splits: tuple[tuple[str, float], ...] = (("train", 0.08), ("val", 0.0)),
) -> dict[str, float]:
    """Values at the best epoch per split; train a little better than val."""
    target = {}
    for split, bonus in splits:
        target[f"{split}_loss"] = 0.6 - bonus
        target[f"{split}_accuracy"] = min(macro_f1 + 0.05 + bonus, 1.0)
        target[f"{split}_balanced_accuracy"] = min(macro_f1 + 0.01 + bonus, 1.0)
        target[f"{split}_macro_f1"] = min(macro_f1 + bonus, 1.0)
        for name in CLASSES:
            key = metric_safe(name)
            recall = rare_recall if name == "ant (rare)" else 0.8
            target[contract.class_metric(split, "recall", key)] = min(recall + bonus, 1.0)
            target[contract.class_metric(split, "precision", key)] = float(rng.uniform(0.6, 0.9))
            target[contract.class_metric(split, "f1", key)] = float(rng.uniform(0.5, 0.9))
    return target


def _predictions(
    rng: np.random.Generator, skill: float, counts: tuple[int, ...] = VAL_COUNTS
) -> dict[str, dict[str, np.ndarray]]:
    y_true = np.repeat(np.arange(len(CLASSES)), counts)
    logits = np.eye(len(CLASSES))[y_true] * skill + rng.normal(0, 1, (len(y_true), len(CLASSES)))
    y_prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_pred = y_prob.argmax(axis=1)
    centers = rng.normal(0, 3, (len(CLASSES), 16))
    embedding = centers[y_true] + rng.normal(0, 1, (len(y_true), 16))
    wrong = np.flatnonzero(y_pred != y_true)[:12]
    images = rng.integers(0, 256, (len(wrong), 1, 8, 8), dtype=np.uint8)
    return {
        contract.VAL_PREDICTIONS_ARTIFACT: {
            "y_true": y_true,
            "y_prob": y_prob.astype(np.float32),
            "y_pred": y_pred,
            "embedding": embedding.astype(np.float32),
        },
        contract.MISCLASSIFIED_ARTIFACT: {
            "images": images,
            "y_true": y_true[wrong],
            "y_pred": y_pred[wrong],
        },
    }


def _confusion_csv(rng: np.random.Generator, counts: tuple[int, ...], skill: float) -> str:
    """Counts in the layout trainables/edge/trial.py writes: header ``true\\predicted``."""
    lines = ["true\\predicted," + ",".join(f'"{c}"' if "," in c else c for c in CLASSES)]
    for i, (name, total) in enumerate(zip(CLASSES, counts, strict=True)):
        probs = np.full(len(CLASSES), (1 - skill) / (len(CLASSES) - 1))
        probs[i] = skill
        row = rng.multinomial(total, probs)
        lines.append(",".join([name, *map(str, row)]))
    return "\n".join(lines) + "\n"


class _Writer:
    """Thin helpers over MlflowClient so the sweep below reads like the contract."""

    def __init__(self, uri: str, tmp: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(uri)
        self.uri = uri
        self.tmp = tmp

    def run(self, experiment_id: str, name: str, tags: dict, params: dict) -> str:
        from mlflow.entities import Param

        run = self.client.create_run(experiment_id, run_name=name, tags=tags)
        items = [Param(k, v) for k, v in contract.encode_params(params).items()]
        self.client.log_batch(run.info.run_id, params=items)
        return run.info.run_id

    def metrics(self, run_id: str, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        items = [Metric(k, float(v), 0, step) for k, v in values.items()]
        self.client.log_batch(run_id, metrics=items)

    def artifact(self, run_id: str, path: str, payload: str | bytes) -> None:
        directory, _, name = path.rpartition("/")
        with tempfile.TemporaryDirectory(dir=self.tmp) as tmp:
            local = Path(tmp) / name
            if isinstance(payload, str):
                local.write_text(payload)
            else:
                local.write_bytes(payload)
            self.client.log_artifact(run_id, str(local), directory or None)

    def arrays(self, run_id: str, path: str, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        self.artifact(run_id, path, buffer.getvalue())


def _child(
    w: _Writer,
    experiment_id: str,
    parent_id: str,
    config: dict[str, Any],
    target: dict[str, float],
    rng: np.random.Generator,
    test_target: dict[str, float] | None = None,
) -> str:
    arm, role, seed = config["arm"], config["role"], config["seed"]
    name = f"smallcnn-{arm}-lr{config['lr']:.0e}-s{seed}"
    if role == "confirmation":
        name += "-confirm"
    tags = {
        PARENT_TAG: parent_id,
        contract.SPACE_TAG: "focal",
        contract.FACTOR_TAG: "loss",
        contract.ARM_TAG: arm,
        contract.SEED_TAG: str(seed),
        contract.ROLE_TAG: role,
        contract.RAY_TRIAL_TAG: f"t{rng.integers(1e6)}",
        contract.RAY_NODE_TAG: "node0",
        contract.BACKBONE_TAG: config["backbone"],
    }
    run_id = w.run(experiment_id, name, tags, config)
    rows = []
    for epoch in range(1, EPOCHS + 1):
        values = _epoch_metrics(target, arm, epoch)
        rows.append({contract.EPOCH_COLUMN: epoch, **values})
        w.metrics(run_id, values, epoch)
        if epoch <= BEST_EPOCH:
            best = {contract.BEST_EPOCH_METRIC: epoch, contract.best_metric(METRIC): values[METRIC]}
            w.metrics(run_id, best, epoch)
    import pandas as pd

    w.artifact(run_id, contract.CONFIG_ARTIFACT, json.dumps(config, default=str, indent=2))
    w.artifact(run_id, contract.HISTORY_ARTIFACT, pd.DataFrame(rows).to_csv(index=False))
    skill = 0.55 + 0.4 * target[METRIC]
    for split, counts in zip(SPLITS, (TRAIN_COUNTS, VAL_COUNTS), strict=True):
        w.artifact(run_id, contract.confusion_csv(split), _confusion_csv(rng, counts, skill))
    for path, arrays in _predictions(rng, 1 + 2 * target[METRIC]).items():
        w.arrays(run_id, path, arrays)
    if test_target is not None:
        _test_metrics(w, run_id, test_target, rng)
    w.client.set_tag(run_id, contract.OUTCOME_TAG, contract.COMPLETED)
    w.client.set_terminated(run_id, "FINISHED")
    return run_id


def _test_metrics(
    w: _Writer, run_id: str, target: dict[str, float], rng: np.random.Generator
) -> None:
    """As a confirmation run logs them: once, at the best epoch chosen on val, with the test
    confusion matrix and predictions."""
    w.metrics(run_id, target, BEST_EPOCH)
    skill = 0.55 + 0.4 * target["test_macro_f1"]
    w.artifact(run_id, contract.confusion_csv(TEST), _confusion_csv(rng, TEST_COUNTS, skill))
    arrays = _predictions(rng, 1 + 2 * target["test_macro_f1"], TEST_COUNTS)
    # Named like val's, as docs/tracking.md has it.
    w.arrays(run_id, TEST_PREDICTIONS, arrays[contract.VAL_PREDICTIONS_ARTIFACT])


def _confirmations(
    w: _Writer, experiment_id: str, parent: str, best_config: dict, *, with_test: bool
) -> tuple[dict[str, float], dict[str, float]]:
    """Each arm's best config re-run per seed with the planted effects; returns the run
    scores and the planted mean differences (focal - ce)."""
    rng = np.random.default_rng(11)
    scores, val_gain, test_gain = {}, [], []
    for seed, noise, test_noise in zip(SEEDS, MACRO_F1_NOISE, TEST_MACRO_F1_NOISE, strict=True):
        base = 0.6 + 0.03 * seed
        val_gain.append(0.05 + noise)
        test_gain.append(TEST_MACRO_F1_GAIN + test_noise)
        for arm, gain, rare in (("ce", 0.0, 0.25), ("focal", 1.0, 0.25 + RARE_RECALL_GAIN)):
            f1 = base + gain * val_gain[-1]
            test = None
            if with_test:
                test_f1 = base - 0.02 + gain * test_gain[-1]
                splits = (("test", 0.0),)
                test = _targets(rng, test_f1, TEST_RARE_RECALL[arm], splits)
            config = _config(arm=arm, loss=arm, role="confirmation", seed=seed, **best_config[arm])
            run_id = _child(w, experiment_id, parent, config, _targets(rng, f1, rare), rng, test)
            scores[run_id] = f1
    rare_key = metric_safe("ant (rare)")
    recall = contract.class_metric
    planted = {
        **{contract.split_metric(contract.VAL, m): float(np.mean(val_gain)) for m in HEADLINE},
        recall(contract.VAL, "recall", rare_key): RARE_RECALL_GAIN,
        recall(contract.VAL, "recall", "cat"): 0.0,
    }
    if with_test:
        planted |= {contract.split_metric(TEST, m): float(np.mean(test_gain)) for m in HEADLINE}
        rare_gain = TEST_RARE_RECALL["focal"] - TEST_RARE_RECALL["ce"]
        planted[recall(TEST, "recall", rare_key)] = rare_gain
        planted[recall(TEST, "recall", "cat")] = 0.0
    return scores, planted


HEADLINE = ("macro_f1", "balanced_accuracy", "accuracy")


FROZEN_RANDOM_WARNING = "arm 'backbone' freezes a randomly initialised backbone: it measures little"
NO_LEARNING_LINE = "no trial learned: best val_macro_f1 0.069 (loss=ce), chance 0.1"


def _old_sweep(w: _Writer, root: Path, parent_tags: dict) -> str:
    """A finished sweep from before the test split: confirmation runs with val metrics only."""
    experiment_id = w.client.create_experiment(
        "focal-old", artifact_location=(root / "mlartifacts").as_uri()
    )
    parent = w.run(experiment_id, "old-sweep", parent_tags, {"space": "focal"})
    w.client.set_tag(parent, contract.FROZEN_RANDOM_TAG, FROZEN_RANDOM_WARNING)
    w.client.set_tag(parent, contract.NO_LEARNING_TAG, NO_LEARNING_LINE)
    configs = {arm: {"lr": 0.01} for arm in ("ce", "focal")}
    _confirmations(w, experiment_id, parent, configs, with_test=False)
    w.client.set_terminated(parent, "FINISHED")
    return "focal-old"


PARENT_TAGS = {
    contract.ROLE_TAG: contract.SWEEP_ROLE,
    contract.SPACE_TAG: "focal",
    contract.FACTOR_TAG: "loss",
    contract.ARMS_TAG: "focal,ce",
    contract.METRIC_TAG: METRIC,
    contract.MODE_TAG: "max",
}


def start_fake_sweep(root: Path, params: dict[str, Any]) -> tuple[_Writer, str, str]:
    """A store in ``root`` with the experiment ``focal`` and a sweep's parent run in it:
    the writer, the experiment's id and the parent run's id."""
    root.mkdir(parents=True, exist_ok=True)
    w = _Writer(f"sqlite:///{root / 'mlflow.db'}", root)
    experiment_id = w.client.create_experiment(
        "focal", artifact_location=(root / "mlartifacts").as_uri()
    )
    return w, experiment_id, w.run(experiment_id, "focal-sweep", PARENT_TAGS, params)


def make_fake_sweep(root: Path) -> SweepInfo:
    """Parent + 2 arms x (3 search + 3 confirmation) finished children, one failed child, and
    a second experiment whose only sweep never finished a run, and a third (``focal-old``)
    whose sweep has no test metrics."""
    w, experiment_id, parent = start_fake_sweep(root, {"space": "focal", "samples": 3})
    uri, parent_tags = w.uri, PARENT_TAGS
    classes = {
        "classes": list(CLASSES),
        "train_counts": list(TRAIN_COUNTS),
        "val_counts": list(VAL_COUNTS),
        "test_counts": list(TEST_COUNTS),
        "multilabel": False,
    }
    w.artifact(parent, contract.CLASSES_ARTIFACT, json.dumps(classes))
    rng = np.random.default_rng(7)
    scores: dict[str, float] = {}

    # Search: each arm tries three random configs (gamma exists only for focal).
    best_config = {}
    for arm in ("ce", "focal"):
        tried = []
        for i in range(3):
            hyper = {
                "lr": float(10 ** rng.uniform(-3, -0.5)),
                "momentum": float(rng.uniform(0, 0.95)),
                "batch_size": int(rng.choice([32, 64, 128])),
                "freeze": ("none", "partial:1")[i % 2],  # both levels, never paired
                "gamma": float(rng.uniform(0.5, 3.0)) if arm == "focal" else None,
            }
            f1 = 0.55 + 0.05 * i + (0.02 if arm == "focal" else 0.0)
            config = _config(arm=arm, loss=arm, role="search", seed=0, **hyper)
            run_id = _child(w, experiment_id, parent, config, _targets(rng, f1, 0.3), rng)
            scores[run_id] = f1
            tried.append((f1, hyper))
        best_config[arm] = max(tried, key=lambda t: t[0])[1]

    # Confirmation: each arm's best config re-run per seed, with the planted effects.
    confirmed, planted = _confirmations(w, experiment_id, parent, best_config, with_test=True)
    scores |= confirmed
    w.client.set_tag(parent, contract.MODEL_URI_TAG, MODEL_URI)
    w.client.set_tag(parent, contract.WINNER_RUN_TAG, max(confirmed, key=confirmed.get))

    # A failed trial with an excellent score must be ignored everywhere.
    failed = w.run(
        experiment_id,
        "smallcnn-focal-failed",
        {PARENT_TAG: parent, contract.ROLE_TAG: contract.SEARCH_ROLE, contract.ARM_TAG: "focal"},
        _config(arm="focal", loss="focal", gamma=2.0),
    )
    w.metrics(
        failed, {contract.best_metric(METRIC): 0.99, METRIC: 0.99, contract.BEST_EPOCH_METRIC: 1}, 1
    )
    w.client.set_terminated(failed, "FAILED")
    w.client.set_terminated(parent, "FINISHED")

    empty_id = w.client.create_experiment(
        "unfinished", artifact_location=(root / "mlartifacts").as_uri()
    )
    empty_parent = w.run(empty_id, "never-finished", parent_tags, {})
    running = w.run(
        empty_id,
        "still-running",
        {PARENT_TAG: empty_parent, contract.ROLE_TAG: contract.SEARCH_ROLE},
        {},
    )
    del running
    old = _old_sweep(w, root, parent_tags)

    return SweepInfo(
        tracking_uri=uri,
        experiment="focal",
        parent_run_id=parent,
        root=root,
        best_run_id=max(scores, key=scores.get),
        empty_experiment="unfinished",
        old_experiment=old,
        planted=planted,
        model_uri=MODEL_URI,
    )


@pytest.fixture(scope="session")
def fake_sweep(tmp_path_factory: pytest.TempPathFactory) -> SweepInfo:
    """The fake sweep, built once per test session (about ten seconds)."""
    return make_fake_sweep(tmp_path_factory.mktemp("fake-sweep"))


@pytest.fixture(scope="session")
def sweep(fake_sweep: SweepInfo) -> SweepInfo:
    """The sweep the value tests read; override to point them at a real one."""
    return fake_sweep


def runs_frame(records: list[dict[str, Any]]) -> Any:
    """A runs table like ``store.runs_table`` from flat records (``params.lr``, ...); run ids,
    names, status FINISHED and start order are filled in when missing."""
    import pandas as pd

    rows = []
    for i, record in enumerate(records):
        row = {"run_id": f"run{i:03d}", "status": "FINISHED", "start_time": i}
        row.update(record)
        row.setdefault("run_name", row["run_id"])
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def make_runs():
    return runs_frame
