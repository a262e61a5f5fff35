"""The names that tie the sweep (the writer) to the analysis (the reader) through MLflow.

The trial, the sweep's driver and ``analysis`` all spell these names through this module;
docs/tracking.md documents each of them, and tests/trainables_tests/test_contract.py checks
that the two agree. Pure constants and string functions: no MLflow, no Ray.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

# MLflow's own tags.
PARENT_TAG = "mlflow.parentRunId"  # nests a child run under the sweep's parent run
RUN_NAME_TAG = "mlflow.runName"  # the run's display name

# Tags of a child run (one per Ray trial).
SPACE_TAG = "space"  # the search space's name (also on the parent run)
FACTOR_TAG = "factor"  # the config key the arms differ in (also on the parent run)
ARM_TAG = "arm"  # the run's level of the factor
SEED_TAG = "seed"  # the run's seed
SPLIT_SEED_TAG = "split_seed"  # the run's train/val split (confirmation runs pair by it too)
ROLE_TAG = "role"  # which phase made the run: ROLES (``sweep`` on the parent run)
BACKBONE_TAG = "backbone"  # the run's backbone
# The Ray trial the run belongs to: a restored trial resumes it, and a resumed sweep gives a
# run whose trial Ray's saved state lacks to the trial that takes its place (sweep.ledger).
RAY_TRIAL_TAG = "ray_trial_id"
# The config Ray gave the trial, JSON: a resumed sweep issues a run Ray lost with it again.
RAY_CONFIG_TAG = "ray_config"
RAY_NODE_TAG = "ray_node_id"  # the Ray node the trial ran on
OUTCOME_TAG = "outcome"  # how the trial ended: OUTCOMES
NONFINITE_TAG = "nonfinite_metrics"  # metrics that became NaN or infinite, comma-separated
DIVERGED_EPOCH_TAG = "diverged_epoch"  # the epoch a diverged trial stopped at
DIVERGED_REASON_TAG = "diverged_reason"  # what was not finite in a diverged trial
MODEL_URI_TAG = "model_uri"  # the run's logged model; on the parent run, the winner's model
# For a trial whose frozen backbone could train on cached features: FEATURE_CACHE_USED, or
# FEATURE_CACHE_UNCACHED_PREFIX and why it trained uncached (over the budget, a folder it
# cannot write, layers that cannot be cut). Also the key of the trial's results to Ray.
FEATURE_CACHE_TAG = "feature_cache"
FEATURE_CACHE_USED = "used"
FEATURE_CACHE_UNCACHED_PREFIX = "uncached: "

# Values of the tag ``outcome``: how a trial's run ended.
COMPLETED = "completed"  # trained to the last epoch
STOPPED_EARLY = "stopped_early"  # stopped by ASHA
DIVERGED = "diverged"  # the training loss or the embeddings were not finite
FAILED = "failed"  # an error after the retries Ray was allowed
INTERRUPTED = "interrupted"  # the sweep was stopped (Ctrl-C, a killed driver); --resume continues
OUTCOMES = (COMPLETED, STOPPED_EARLY, DIVERGED, FAILED, INTERRUPTED)  # every value of ``outcome``

# Values of the tag ``role``.
SEARCH_ROLE = "search"  # a trial of the Optuna search
CONFIRMATION_ROLE = "confirmation"  # an arm's best config re-run on another seed
SWEEP_ROLE = "sweep"  # the parent run of a sweep
ROLES = (SEARCH_ROLE, CONFIRMATION_ROLE, SWEEP_ROLE)  # every value of ``role``

# Tags of the parent run (besides ``role``, ``space``, ``factor`` and ``model_uri``).
ARMS_TAG = "arms"  # the factor's levels, comma-separated
METRIC_TAG = "metric"  # the metric the sweep optimises, e.g. ``val_macro_f1``
MODE_TAG = "mode"  # ``max`` or ``min``
WINNER_RUN_TAG = "winner_run_id"  # the run whose model won the sweep
# Set only when arms freeze layers of a randomly initialised backbone: the warning, one line.
FROZEN_RANDOM_TAG = "warning.frozen_random"
# What ``tune.py --resume`` reads to rebuild and continue the sweep.
ARGV_TAG = "sweep.argv"  # the command line as typed, JSON
STAMP_TAG = "sweep.stamp"  # names the sweep's Ray Tune experiments
STORAGE_TAG = "sweep.storage_path"  # where those experiments live
# The driver running the sweep now, JSON (host, pid, heartbeat): a second driver is refused
# while it lives (sweep.lease); absent once the sweep stopped.
LEASE_TAG = "sweep.driver"
ARMS_SEPARATOR = ","  # joins the levels in the tag ``arms``

# The sweep's answer on its parent run (sweep.answer), once both phases have ended. Keys
# spell arms and phases with ``metric_part``.
ARM_METRIC = "arm.{arm}.{name}"  # a value of one arm, ``name`` one of ARM_METRICS
ARM_METRICS = ("search_best", "confirm_mean", "confirm_std", "confirm_n")
# The paired difference of the best arm over another: ``name`` one of COMPARISON_METRICS.
COMPARISON_METRIC = "answer.{best}_vs_{other}.{name}"
COMPARISON_METRICS = ("diff", "ci_low", "ci_high", "t_low", "t_high", "n")
VERDICT_NAME = "verdict"  # the tag answer.<best>_vs_<other>.verdict: which arm is better, if any
TRIALS_METRIC = "trials.{role}.{outcome}"  # how many trials of a phase ended that way
TRIAL_ROLES = (SEARCH_ROLE, CONFIRMATION_ROLE)  # the phases counted
ANSWER_TAG = "answer"  # one readable line per comparison: difference, intervals, pairs, verdict
# Set only when the best arm did no better than chance (sweep.winner.no_learning_line): the
# line, also leading ``answer``; no winner is tagged or registered then.
NO_LEARNING_TAG = "no_learning"
# "True" when every comparison of the best arm is clear (both intervals exclude zero): only
# then does the summary call it the winner; else its model is "kept", the higher mean.
ANSWER_CLEAR_TAG = "answer.clear"
# Whether more search would have helped (analysis.anytime): per arm, the trial its best
# search value came at, ``7 of 32`` (trials in the order they started); and each arm's best
# value so far against the epochs its search had spent, one figure.
BEST_TRIAL_TAG = "best_trial.{arm}"
ANYTIME_ARTIFACT = "search/anytime.png"
# MLflow's own tag for a run's description (its note, shown atop the run's page).
DESCRIPTION_TAG = "mlflow.note.content"
# The arms' Optuna studies (study name: the arm), an Optuna JournalStorage file.
OPTUNA_JOURNAL_ARTIFACT = "optuna/journal.log"
OPTUNA_STORAGE_TAG = "optuna.storage"  # --optuna-storage URL, when given
OPTUNA_STUDIES_TAG = "optuna.studies"  # JSON: arm -> its study's name in that database
# Every run's data as an MLflow dataset input: the value of its tag ``mlflow.data.context``.
DATASET_CONTEXT = "training"

# Tags of a registered model version (tune.py --register-model): where it won, and how well.
VERSION_TAGS = {
    "sweep": "the sweep's parent run name",
    "sweep_run_id": "the sweep's parent run id",
    "experiment": "the MLflow experiment",
    "factor": "what the arms differ in",
    "arm": "the winning arm",
    "seed": "the seed of the run registered",
    "run_id": "the run registered",
    "metric": "the sweep's metric",
    "metric_value": "the registered run's best value of the metric",
    "arm_mean": "the arm's mean over its confirmation runs (empty without them)",
    "verdict": "the paired comparison's answer, as the parent run's tag ``answer`` says it",
}

# Artifacts of a child run.
CONFIG_ARTIFACT = "config.json"  # the resolved trial config
HISTORY_ARTIFACT = "history.csv"  # one row per epoch, one column per metric
EPOCH_COLUMN = "epoch"  # the epoch column of history.csv
BEST_ARTIFACT = "best.json"  # the best epoch and its value of the sweep's metric
VAL_PREDICTIONS_ARTIFACT = "predictions/val_predictions.npz"  # y_true, y_prob, y_pred, embedding
# The same keys, of the test split: confirmation runs only, at their best epoch.
TEST_PREDICTIONS_ARTIFACT = "predictions/test_predictions.npz"
MISCLASSIFIED_ARTIFACT = "predictions/misclassified.npz"  # images, y_true, y_pred
# The trained model: an MLflow logged model of the run, so ``runs:/<run id>/model`` loads it.
MODEL_NAME = "model"
LOG_MODELS = ("confirmation", "search", "none")  # tune.py --log-models: whose runs log one

# Artifacts of the parent run.
CLASSES_ARTIFACT = "data/classes.json"  # class names, counts per split, multi-label or not
REPORT_ARTIFACT_DIR = "report"  # where ``python -m analysis report`` attaches its report
REPORT_ARTIFACT_NAME = "report.html"  # the report's file name


def confusion_csv(split: str) -> str:
    """The best epoch's confusion counts of ``split`` (artifact of a child run)."""
    return f"confusion/{split}_confusion.csv"


def confusion_png(split: str) -> str:
    """The best epoch's confusion figure of ``split`` (artifact of a child run)."""
    return f"confusion/{split}_confusion.png"


# Metric names: ``<split>_<name>``, per class ``<split>_<kind>.<class>``, and ``best_*``.
TRAIN = "train"  # the training split's metric prefix
VAL = "val"  # the validation split's metric prefix
SPLITS = (TRAIN, VAL)  # the splits every epoch is measured on
# Scored once, when a confirmation run ends, with its best epoch's weights, logged at step
# ``best_epoch``: the same metric names as val's with this prefix.
TEST = "test"
# The confusion matrices a confirmation run draws when it ends (every split's counts are
# logged as CSV; ``python -m analysis confusion`` draws any of them): about half a second each.
PICTURED_SPLITS = (VAL, TEST)
DEFAULT_METRIC = "val_macro_f1"  # the metric of a sweep whose parent run names none
BEST_PREFIX = "best_"  # a run's value of a metric at its best epoch so far
BEST_EPOCH_METRIC = "best_epoch"  # the epoch the sweep's metric was best at
CLASS_SEPARATOR = "."  # between a per-class metric's kind and its class


def split_metric(split: str, name: str) -> str:
    """``val_accuracy``: the metric ``name`` on ``split``."""
    return f"{split}_{name}"


def best_metric(metric: str) -> str:
    """``best_val_macro_f1``: the best value of ``metric`` so far, logged each epoch."""
    return f"{BEST_PREFIX}{metric}"


def is_confirmation(config: Mapping[str, Any]) -> bool:
    """Whether a trial's config is a confirmation run's (else a search trial's)."""
    return config.get("role") == CONFIRMATION_ROLE


def is_best_metric(name: str) -> bool:
    return name.startswith(BEST_PREFIX)


def unbest(name: str) -> str:
    """The metric a ``best_`` metric tracks: ``unbest(best_metric(m)) == m``."""
    return name.removeprefix(BEST_PREFIX)


def class_metric(split: str, kind: str, class_key: str) -> str:
    """``val_recall.<class_key>``: a per-class metric, ``class_key`` the class name as
    ``metric_safe`` cleaned it."""
    return f"{split_metric(split, kind)}{CLASS_SEPARATOR}{class_key}"


def class_key(metric: str) -> str:
    """The class part of a per-class metric: ``class_key(class_metric(s, k, c)) == c``."""
    return metric.split(CLASS_SEPARATOR, 1)[1]


_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_safe(name: str) -> str:
    """Class names become part of MLflow metric keys, which accept few characters."""
    return _UNSAFE.sub("_", str(name)).strip() or "_"


_KEY_PART_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


def metric_part(name: str) -> str:
    """An arm or phase as one segment of a metric key: MLflow takes few characters in keys
    (a colon nowhere on Windows), and dots and slashes would split the segment."""
    return _KEY_PART_UNSAFE.sub("_", str(name)) or "_"


def arm_metric(arm: str, name: str) -> str:
    """``arm.partial_2.confirm_mean``: a value of one arm on the parent run."""
    return ARM_METRIC.format(arm=metric_part(arm), name=name)


def comparison_metric(best: str, other: str, name: str) -> str:
    """``answer.focal_vs_ce.diff``: a number of one paired comparison (``name`` may be
    ``VERDICT_NAME``, a tag)."""
    return COMPARISON_METRIC.format(best=metric_part(best), other=metric_part(other), name=name)


def best_trial_tag(arm: str) -> str:
    """``best_trial.focal``: the trial at which an arm's best search value came."""
    return BEST_TRIAL_TAG.format(arm=metric_part(arm))


def trials_metric(role: str, outcome: str) -> str:
    """``trials.search.stopped_early``: how many trials of a phase ended that way."""
    return TRIALS_METRIC.format(role=metric_part(role), outcome=metric_part(outcome))


# Params: every field of ``trainables.config.TrialConfig`` with a value, as a string.
EMPTY_SEQUENCE = "none"  # how an empty tuple or list is logged


def param_str(value: Any) -> str:
    """How a config value is logged: tuples joined by ``-`` (as Optuna's categoricals spell
    them, which ``TrialConfig.from_dict`` reads back), dicts as JSON, the rest as ``str``."""
    if isinstance(value, tuple | list):
        return "-".join(str(v) for v in value) if value else EMPTY_SEQUENCE
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def encode_params(values: Mapping[str, Any]) -> dict[str, str]:
    # MLflow params are strings; None is left out so conditional params stay absent.
    return {k: param_str(v) for k, v in values.items() if v is not None}


# Which config fields are hyperparameters: the analysis ranks and compares by the others'
# complement. These say which sweep, arm and phase a run belongs to, and what it monitors.
RUN_IDENTITY_PARAMS = frozenset({"space", "factor", "arm", "role", "metric", "mode"})
# Where and how fast a run ran; they do not change what it learns.
HARDWARE_PARAMS = frozenset({"num_threads", "amp", "channels_last", "feature_cache"})
# Params that are not hyperparameters: left out of the params that were searched.
BOOKKEEPING_PARAMS = RUN_IDENTITY_PARAMS | HARDWARE_PARAMS
# Fields a sweep holds fixed across its search trials (the confirmation phase varies the seed).
SWEEP_FIXED_PARAMS = frozenset(
    {"seed", "split_seed", "val_fraction", "test_fraction", "max_epochs", "image_size"}
)
