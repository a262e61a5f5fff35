"""A trial's model at its best epoch, logged as the MLflow model ``trainables.edge.served_model``
serves: the whole network's weights (the frozen backbone's too: a user loads one thing, while
checkpoints leave them out), the class names, the input size and normalisation.

No Ray here: the trial logs its own model, and the driver logs one from a checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from trainables.config import TrialConfig
from trainables.data import ImageData
from trainables.edge import served_model, tracking
from trainables.edge.served_model import LinearSVM, ModelSpec
from trainables.engine import TrainedModel, TrainingState, evaluate
from trainables.models import ImageClassifier
from trainables.svm import fit_svm

WEIGHTS_FILE = "weights.pt"
SPEC_FILE = "spec.json"
REQUIREMENTS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow")


def log_trial_model(
    uri: str,
    run_id: str,
    cfg: TrialConfig,
    data: ImageData,
    state: TrainingState | TrainedModel,
    best: dict[str, torch.Tensor],
) -> str:
    """Log the model with the weights ``best`` (a ``trained_state_dict`` of the best epoch,
    ``state.best_epoch``) to the run; returns the model's URI. Loads ``best`` into
    ``state.model``."""
    state.model.load_trained_state_dict(best)
    svm = refit_svm(state, cfg, data) if cfg.classifier == "svm" else None
    spec = served_spec(state.model, cfg, data)
    with tempfile.TemporaryDirectory() as folder:
        weights, spec_file = Path(folder) / WEIGHTS_FILE, Path(folder) / SPEC_FILE
        torch.save(served_weights(state.model, svm), weights)
        spec_file.write_text(json.dumps(spec.to_config(), indent=2))
        first, *probs = served_model.output_columns(spec)
        artifacts = {served_model.WEIGHTS_ARTIFACT: weights, served_model.SPEC_ARTIFACT: spec_file}
        return tracking.log_python_model(
            uri,
            run_id,
            code_path=Path(served_model.__file__),
            artifacts={name: str(path) for name, path in artifacts.items()},
            metadata={served_model.METADATA_KEY: spec.to_config()},
            outputs={first: "string", **dict.fromkeys(probs, "double")},
            optional_outputs={served_model.ERROR: "string"},
            params=served_model.PARAMS,
            input_example=input_example(spec),
            requirements=requirements(spec),
            step=state.best_epoch,
        )


def served_spec(model: ImageClassifier, cfg: TrialConfig, data: ImageData) -> ModelSpec:
    """What ``served_model`` needs to rebuild ``model`` and read images as ``data`` held them."""
    trunk = model.served_trunk  # how the backbone was built, as served_model rebuilds it
    linears = [m for m in model.neck if isinstance(m, torch.nn.Linear)]
    preprocess = model.preprocess
    return ModelSpec(
        classes=tuple(data.classes),
        multilabel=data.multilabel,
        backbone=cfg.backbone,
        trunk=trunk["trunk"],
        classifier_attr=trunk.get("classifier_attr", ""),
        classifier_keep=tuple(trunk.get("classifier_keep", ())),
        build_kwargs=dict(trunk.get("build_kwargs", {})),
        feature_dim=(linears[0] if linears else model.head).in_features,
        head_hidden=tuple(m.out_features for m in linears),
        data_channels=data.channels,
        data_size=data.image_size,
        input_channels=preprocess.channels,
        input_size=preprocess.size,
        mean=tuple(preprocess.mean.flatten().tolist()),
        std=tuple(preprocess.std.flatten().tolist()),
        svm=cfg.classifier == "svm",
        smallcnn_width=trunk.get("smallcnn_width", 32),
    )


def served_weights(model: ImageClassifier, svm: LinearSVM | None = None) -> dict:
    """Every weight of the network, frozen ones included, on the CPU."""
    network = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {"network": network, **({"svm": svm.to_tensors()} if svm is not None else {})}


def refit_svm(state: TrainingState | TrainedModel, cfg: TrialConfig, data: ImageData) -> LinearSVM:
    """The SVM the run fitted at its best epoch, fitted again on the same train embeddings
    (the same weights, the same seed: the same SVM)."""
    device = next(state.model.parameters()).device
    train = evaluate(
        state.model,
        state.criterion,
        data.train_x,
        data.train_y,
        device,
        task=data.task,
        amp=cfg.amp,
        channels_last=cfg.channels_last,
    )
    scaler, svm = fit_svm(train.embedding, train.y_true, cfg.seed)
    return LinearSVM(
        mean=np.asarray(scaler.mean_),
        scale=np.asarray(scaler.scale_),
        coef=np.asarray(svm.coef_),
        intercept=np.asarray(svm.intercept_),
        classes=np.asarray(svm.classes_, dtype=np.int64),
    )


def input_example(spec: ModelSpec) -> np.ndarray:
    """One mid-grey image of the dataset's shape: the format, without shipping a real image
    of the data inside the model."""
    return np.full((1, spec.data_channels, spec.data_size, spec.data_size), 128, np.uint8)


def requirements(spec: ModelSpec | None = None) -> list[str]:
    """What loading the model needs, at the versions that logged it (without local labels
    such as ``+cu130``, which no index serves); timm too for a timm backbone."""
    pins = []
    extra = ("timm",) if spec is not None and spec.trunk == "timm" else ()
    for name in (*REQUIREMENTS, *extra):
        try:
            pins.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(name)
    return pins
