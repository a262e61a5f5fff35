"""The thin layer between Ray Tune and the training loop: config in, reports, checkpoints and
MLflow logging out. The only module of ``trainables`` that imports Ray."""

from __future__ import annotations

import csv
import io
import json
import pickle
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import tune

from trainables import contract
from trainables.config import TrialConfig
from trainables.contract import COMPLETED, DIVERGED, OUTCOME_TAG
from trainables.data import ImageData, resplit
from trainables.edge.checkpoint_pacing import PACED, CheckpointPacer, CheckpointPolicy
from trainables.edge.tracking import (
    DatasetRecord,
    TrialRun,
    client,
    ended_for_good,
    find_child_run,
    npz_bytes,
    png_bytes,
)
from trainables.engine import (
    EpochOutcome,
    SplitEval,
    TrainedModel,
    TrainingDiverged,
    TrainingState,
    build_training_state,
    evaluate_test,
    fit,
    misclassified,
    pick_device,
)
from trainables.errors import UserError
from trainables.feature_cache import FeatureCache, feature_cache_note
from trainables.memory import release_memory

CHECKPOINT_FILE = "state.pt"
# What goes to Ray each epoch: the aggregate metrics (per-class ones live in MLflow only).
REPORTED = ("loss", "accuracy", "balanced_accuracy", "macro_f1", "map")
Best = dict[str, torch.Tensor] | None  # the trained weights of the best epoch so far
Confusions = dict[str, np.ndarray]  # the best epoch's confusion matrices by split
# Set in the last result of a trial whose training diverged: the searcher hears "failed",
# the scheduler stops it, the summary counts it.
DIVERGED_KEY = "diverged"


@dataclass(frozen=True)
class TrackingTarget:
    uri: str
    experiment_id: str
    parent_run_id: str
    # Trials of these roles log their model.
    model_roles: tuple[str, ...] = (contract.CONFIRMATION_ROLE,)
    dataset: DatasetRecord | None = None  # the sweep's data, hashed once on the driver


def train_trial(
    config: dict[str, Any],
    *,
    data: ImageData,
    tracking: TrackingTarget,
    checkpoints: CheckpointPolicy = PACED,
) -> None:
    """Ray Tune's function trainable. ``data`` arrives once per node via the object store,
    as arrays, or as the path and rows of the image cache's file, mapped here (same node)."""
    # A worker runs trial after trial: what the ones before it freed goes back first.
    release_memory()
    cfg = TrialConfig.from_dict(config)
    previous = _previous_run(tracking)
    if previous is not None and ended_for_good(previous):
        _report_ended(previous, cfg, tracking)
        return
    torch.set_num_threads(cfg.num_threads)
    device = pick_device()
    # Another train/val split for confirmation runs of --confirm-splits; the test split stays.
    data = resplit(data, cfg.split_seed)
    run = _open_run(cfg, data, tracking, device, previous, config)
    state = build_training_state(cfg, data, device)
    history, best, confusions = _restore(state, device)
    # Artifacts go out with the epoch's, in one call.
    files = {contract.CONFIG_ARTIFACT: cfg.to_json()}
    completed = False
    pacer, clock = CheckpointPacer(checkpoints, cfg.max_epochs, cfg.role), time.perf_counter()
    cache, noted = FeatureCache.from_env(), None
    try:
        for outcome in fit(cfg, data, device, state, cache=cache):
            noted = _note_cache(run, cfg, cache, noted)
            history.append({contract.EPOCH_COLUMN: outcome.epoch, **outcome.metrics})
            run.log_metrics(outcome.metrics, step=outcome.epoch)
            files[contract.HISTORY_ARTIFACT] = _history_csv(history)
            if outcome.improved:
                best, confusions = copy_trained_state(state), outcome.confusions
                files.update(best_epoch_files(outcome, data))
            run.log_files(files)
            files = {}
            if state.epoch >= cfg.max_epochs:
                # Before the last report: Ray may end the trial inside it (ASHA at max_t).
                _complete(run, cfg, data, state, best, confusions, tracking, device, cache)
                noted = _note_cache(run, cfg, cache, noted)  # the test scoring's part
                completed = True
            metrics = _ray_metrics(outcome, cfg, run.run_id, noted)
            saved = {"state": state, "history": history, "best": best, "confusions": confusions}
            _report(metrics, pacer, time.perf_counter() - clock, **saved)
            clock = time.perf_counter()
    except TrainingDiverged as err:
        _end_diverged(run, cfg, state, err, _note_cache(run, cfg, cache, noted))
        return
    finally:  # also when Ray stops the trial (a SystemExit raised in tune.report)
        run.stop_system_metrics()
    if not completed:  # restarted from its last epoch's checkpoint: nothing left to train
        _complete(run, cfg, data, state, best, confusions, tracking, device, cache)
        _note_cache(run, cfg, cache, noted)


def _note_cache(
    run: TrialRun, cfg: TrialConfig, cache: FeatureCache, noted: str | None
) -> str | None:
    """What the feature cache did for the trial so far (``feature_cache_note``), in the run's
    tag whenever it changes (``noted``: the value tagged last); returned for Ray's reports."""
    note = feature_cache_note(cfg, cache)
    if note is not None and note != noted:
        run.set_tags({contract.FEATURE_CACHE_TAG: note})
    return note


def _open_run(
    cfg: TrialConfig,
    data: ImageData,
    tracking: TrackingTarget,
    device: torch.device,
    previous: Any,
    ray_config: dict[str, Any],
) -> TrialRun:
    """The trial's MLflow run (``previous`` again for a restarted trial), recording the
    system's metrics. ``ray_config``: the config as Ray gave it, kept in a tag so that a
    resumed sweep can issue the trial again should Ray's saved state lose it."""
    run = TrialRun.open(
        tracking.uri,
        experiment_id=tracking.experiment_id,
        parent_run_id=tracking.parent_run_id,
        run_name=cfg.run_name,
        tags={**_tags(cfg), contract.RAY_CONFIG_TAG: json.dumps(ray_config, default=str)},
        params=cfg.effective_on(device.type).to_dict(),  # amp is off on a CPU, and says so
        dataset=tracking.dataset and tracking.dataset.for_split(data),
        existing=previous,
    )
    run.start_system_metrics()
    return run


def _complete(
    run: TrialRun,
    cfg: TrialConfig,
    data: ImageData,
    state: TrainingState,
    best: Best,
    confusions: Confusions,
    tracking: TrackingTarget,
    device: torch.device,
    cache: FeatureCache,
) -> None:
    """What a trial that ran to its last epoch leaves: for a confirmation run, the pictures of
    its best epoch's val and test confusions (drawn once: a picture costs about half a second
    of CPU, and the data behind it is logged at every improvement) and its test scores; its
    model when its role keeps one; and the end of its run."""
    if cfg.role == contract.CONFIRMATION_ROLE:
        pictured = {k: v for k, v in confusions.items() if k in contract.PICTURED_SPLITS}
        files = confusion_pictures(pictured, data.classes, state.best_epoch)
        if best is not None and len(data.test_y):
            files.update(_score_test(run, cfg, data, state, best, device, cache))
        run.log_files(files)
    if cfg.role in tracking.model_roles and best is not None:
        from trainables.edge.model_export import log_trial_model  # MLflow's pyfunc: only here

        # The model of the epoch the run's metrics are reported at, not of the last epoch.
        log_trial_model(tracking.uri, run.run_id, cfg, data, state, best)
    run.set_tags({OUTCOME_TAG: COMPLETED})
    run.end()


def _score_test(
    run: TrialRun,
    cfg: TrialConfig,
    data: ImageData,
    state: TrainingState,
    best: dict[str, torch.Tensor],
    device: torch.device,
    cache: FeatureCache,
) -> dict[str, str | bytes]:
    """The test split, scored once the last epoch has run and val has chosen the best one:
    ``test_*`` metrics at step ``best_epoch``, and the files of that epoch's test predictions.
    Ray hears none of it, so nothing that selects can."""
    outcome = evaluate_test(cfg, data, device, state, best, cache=cache)
    run.log_metrics(outcome.metrics, step=state.best_epoch)
    files: dict[str, str | bytes] = {
        contract.TEST_PREDICTIONS_ARTIFACT: npz_bytes(prediction_arrays(outcome.test))
    }
    if outcome.confusion is not None:
        matrix = {contract.TEST: outcome.confusion}
        files[contract.confusion_csv(contract.TEST)] = _confusion_csv(
            outcome.confusion, data.classes
        )
        files.update(confusion_pictures(matrix, data.classes, state.best_epoch))
    return files


def _previous_run(tracking: TrackingTarget) -> Any:
    """The run this trial opened before Ray restarted it, or None: one query for every trial,
    which also serves to open its run. With or without a checkpoint: Ray's saved state may
    hold a trial without the checkpoints it wrote (only some epochs have one), and that
    trial starts again from its first epoch. A trial that takes the place of one Ray's saved
    state lost finds the lost trial's run here too: the resumed driver gave it the run's tag
    before Ray started it (``sweep.ledger``)."""
    trial_id = tune.get_context().get_trial_id()
    if not trial_id:
        return None
    return find_child_run(tracking.uri, tracking.experiment_id, tracking.parent_run_id, trial_id)


class EndedRunError(RuntimeError):
    """A restarted trial's run had ended without a result to give Ray: failed, or with no
    value of the searched metric. Ray records the trial as failed, as it was."""


def _report_ended(run: Any, cfg: TrialConfig, tracking: TrackingTarget) -> None:
    """Ray hears once the result of a run that had ended, as the trial reported it then, at
    its last epoch. Ray's saved state can lack every result of such a trial, and a trial that
    returns without any leaves Ray without the metric its searcher needs: the sweep would
    stop on an error. (The test split's scores stay out: nothing that selects hears them.)"""
    metrics, tags = run.data.metrics, run.data.tags
    best, run_id = contract.best_metric(cfg.metric), run.info.run_id
    diverged = tags.get(OUTCOME_TAG) == DIVERGED
    if tags.get(OUTCOME_TAG) == contract.FAILED or not (diverged or best in metrics):
        raise EndedRunError(f"run {run_id} ended before the restart with no result to report")
    ended: dict[str, Any] = {"mlflow_run_id": run_id}
    if contract.FEATURE_CACHE_TAG in tags:
        ended[contract.FEATURE_CACHE_TAG] = tags[contract.FEATURE_CACHE_TAG]
    if diverged:  # as _end_diverged reported it
        epoch = int(tags.get(contract.DIVERGED_EPOCH_TAG, 0))
        ended.update({best: metrics.get(best, float("nan")), DIVERGED_KEY: 1})
    else:
        history = client(tracking.uri).get_metric_history(run_id, cfg.metric)
        epoch = max(m.step for m in history)
        test = f"{contract.TEST}_"
        ended.update({k: v for k, v in _reported(metrics).items() if not k.startswith(test)})
    # Ray's iteration as the run's epoch: ASHA's rungs and Optuna's steps then place it right.
    tune.report({**ended, "epoch": epoch, "training_iteration": epoch})


def _restore(state: TrainingState, device: torch.device) -> tuple[list, Best, Confusions]:
    """Load the trial's last checkpoint, if Ray restarted it; returns the epochs so far, the
    weights of the best epoch so far and its confusion matrices."""
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return [], None, {}
    with checkpoint.as_directory() as folder:
        saved = _read_checkpoint(Path(folder), device)
    history, best = _apply_checkpoint(saved, state)
    confusions = {k: v.cpu().numpy() for k, v in saved.get("confusions", {}).items()}
    return history, best, confusions


def load_checkpoint(
    folder: Path, state: TrainingState, device: torch.device
) -> tuple[list[dict[str, float]], Best]:
    """Load a checkpoint folder into ``state``; returns its history and best-epoch weights."""
    saved = _read_checkpoint(folder, device)
    return _apply_checkpoint(saved, state)


class CheckpointError(UserError):
    """A checkpoint holding more than tensors, numbers, strings and containers of them."""


def _read_checkpoint(folder: Path, device: torch.device) -> dict[str, Any]:
    """The checkpoint in ``folder``, unpickled with ``weights_only``: whoever can write to the
    storage path could otherwise run code in every trial restored from it and in the driver."""
    path = folder / CHECKPOINT_FILE
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message runs to many lines of advice on loading it anyway: the name only.
        found = re.search(r"GLOBAL (\S+)", str(err))
        needs = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"checkpoint {path} refused: it holds objects other than tensors and plain "
            f"values{needs}, and unpickling them could run code; an older version's "
            "checkpoint, or not this project's: start the trial afresh"
        ) from None


def _apply_checkpoint(saved: dict[str, Any], state: TrainingState) -> tuple[list, Best]:
    state.load_state_dict(saved["state"])
    return saved["history"], _best_of(saved)


def load_trained_model(folder: Path, trained: TrainedModel) -> Best:
    """Load a checkpoint folder's loss state and best epoch into ``trained`` (no optimizer
    needed); returns the best epoch's weights."""
    saved = _read_checkpoint(folder, torch.device("cpu"))
    trained.criterion.load_state_dict(saved["state"]["criterion"])
    trained.best_epoch = saved["state"]["best_epoch"]
    return _best_of(saved)


def _best_of(saved: dict[str, Any]) -> Best:
    """The best epoch's weights: kept apart unless the checkpoint's own epoch was the best."""
    state = saved["state"]
    best = saved.get("best")
    if best is None and state["best_epoch"] == state["epoch"] and state["epoch"] > 0:
        best = _cpu_copy(state["model"])
    return best


def copy_trained_state(state: TrainingState) -> dict[str, torch.Tensor]:
    """A copy of the trained weights, on the CPU, that further training leaves alone."""
    return _cpu_copy(state.model.trained_state_dict())


def _cpu_copy(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}


def _report(metrics: dict[str, Any], pacer: CheckpointPacer, seconds: float, **saved: Any) -> None:
    """The epoch's report to Ray, with a checkpoint of ``saved`` (what
    ``_report_with_checkpoint`` takes) when one is due; ``seconds``: the epoch's time since
    the last report."""
    checkpointed = pacer.due(metrics["epoch"], seconds)
    started = time.perf_counter()
    if checkpointed:
        _report_with_checkpoint(metrics, **saved)
    else:
        tune.report(metrics)
    pacer.reported(time.perf_counter() - started, checkpointed=checkpointed)


def _report_with_checkpoint(
    metrics: dict[str, Any],
    state: TrainingState,
    history: list[dict[str, float]],
    best: Best,
    confusions: Confusions,
) -> None:
    # The best epoch's weights go in only when they are not the checkpoint's own: a trial
    # restarted later (or the driver, for --confirm-seeds 0) logs the best epoch's model.
    # Its confusion matrices (C x C counts) let a restarted trial still draw them at the end;
    # as tensors, which a weights_only load reads (numpy arrays it refuses).
    tensors = {k: torch.from_numpy(v) for k, v in confusions.items()}
    saved = {"state": state.state_dict(), "history": history, "confusions": tensors}
    if state.best_epoch != state.epoch:
        saved["best"] = best
    with tempfile.TemporaryDirectory() as folder:
        torch.save(saved, Path(folder) / CHECKPOINT_FILE)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _end_diverged(
    run: TrialRun,
    cfg: TrialConfig,
    state: TrainingState,
    err: TrainingDiverged,
    cache_note: str | None,
) -> None:
    """A diverged trial ends as a finding, not an error: an error would be retried from the
    last checkpoint and diverge again. The run says when and why; Ray hears it once (with
    what the feature cache did, for the summary)."""
    run.set_tags(
        {
            OUTCOME_TAG: DIVERGED,
            contract.DIVERGED_EPOCH_TAG: str(err.epoch),
            contract.DIVERGED_REASON_TAG: err.reason,
        }
    )
    run.end("FAILED")
    tune.report(
        {
            # Ray insists on the searched metric in every result; the last finite best stands in.
            contract.best_metric(cfg.metric): state.best_value,
            "epoch": err.epoch,
            DIVERGED_KEY: 1,
            "mlflow_run_id": run.run_id,
            **({contract.FEATURE_CACHE_TAG: cache_note} if cache_note else {}),
        }
    )


def _tags(cfg: TrialConfig) -> dict[str, str]:
    import ray

    context = tune.get_context()
    return {
        contract.SPACE_TAG: cfg.space,
        contract.FACTOR_TAG: cfg.factor,
        contract.ARM_TAG: cfg.arm,
        contract.SEED_TAG: str(cfg.seed),
        contract.SPLIT_SEED_TAG: str(cfg.split_seed),
        contract.ROLE_TAG: cfg.role,
        contract.BACKBONE_TAG: cfg.backbone,
        contract.RAY_TRIAL_TAG: context.get_trial_id() or "",
        contract.RAY_NODE_TAG: ray.get_runtime_context().get_node_id(),
    }


def _ray_metrics(
    outcome: EpochOutcome, cfg: TrialConfig, run_id: str, cache_note: str | None
) -> dict[str, Any]:
    """What Ray hears of an epoch (and the sweep's summary of the trial's last one)."""
    metrics = _reported(outcome.metrics)
    if cache_note is not None:
        metrics[contract.FEATURE_CACHE_TAG] = cache_note
    return {**metrics, "epoch": outcome.epoch, "mlflow_run_id": run_id}


def _reported(metrics: dict[str, float]) -> dict[str, float]:
    """The metrics Ray hears (``REPORTED`` on each split, and the best values so far)."""
    return {
        key: value
        for key, value in metrics.items()
        if key.split("_", 1)[-1] in REPORTED or contract.is_best_metric(key)
    }


def _history_csv(history: list[dict[str, float]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[-1]))
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def best_epoch_files(outcome: EpochOutcome, data: ImageData) -> dict[str, str | bytes]:
    """The best epoch so far's data, rewritten on each improvement: a trial stopped early by
    the scheduler still leaves the artifacts of its best epoch."""
    val = outcome.val
    files: dict[str, str | bytes] = {
        contract.confusion_csv(split): _confusion_csv(matrix, data.classes)
        for split, matrix in outcome.confusions.items()
    }
    files[contract.VAL_PREDICTIONS_ARTIFACT] = npz_bytes(prediction_arrays(val))
    files[contract.MISCLASSIFIED_ARTIFACT] = npz_bytes(misclassified(data, val))
    files[contract.BEST_ARTIFACT] = json.dumps(
        {contract.BEST_EPOCH_METRIC: outcome.epoch, "value": outcome.best_value}
    )
    return files


def prediction_arrays(split: SplitEval) -> dict[str, np.ndarray]:
    """What ``predictions/{split}_predictions.npz`` holds."""
    return {
        "y_true": split.y_true,
        "y_prob": split.y_prob.astype(np.float32),
        "y_pred": split.y_pred,
        "embedding": split.embedding.astype(np.float32),
    }


def confusion_pictures(
    confusions: Confusions, classes: tuple[str, ...], epoch: int
) -> dict[str, bytes]:
    from trainables.figures import confusion_figure  # matplotlib: only where pictures are drawn

    return {
        contract.confusion_png(split): png_bytes(
            confusion_figure(matrix, classes, title=f"{split} (epoch {epoch})")
        )
        for split, matrix in confusions.items()
    }


def _confusion_csv(matrix: np.ndarray, classes: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true\\predicted", *classes])
    for name, row in zip(classes, matrix, strict=True):
        writer.writerow([name, *row.tolist()])
    return buffer.getvalue()
