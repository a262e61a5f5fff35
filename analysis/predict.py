"""``python -m analysis predict``: a logged model on image files, and how it scores against
folder labels.

The model is the MLflow pyfunc model the sweep logged (``trainables.served_model``): it reads
the files itself, exactly as a user's ``mlflow.pyfunc.load_model(...).predict(paths)`` would.
This module finds the files, runs the model and scores its predictions; it writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.confusion import confusion_matrix, matrix_frame
from analysis.errors import AnalysisError
from trainables.data import IMAGE_SUFFIXES
from trainables.metrics import classification_metrics
from trainables.served_model import ERROR, LABELS, METADATA_KEY, PREDICTED, PROB_PREFIX

PATH = "path"
TRUE = "true"  # the class folder an image came from


@dataclass(frozen=True)
class ImageInputs:
    root: Path
    paths: list[Path]
    labels: list[str] | None  # the class folder of each image, for a folder of class folders


@dataclass(frozen=True)
class ModelInfo:
    classes: tuple[str, ...]
    multilabel: bool


@dataclass(frozen=True)
class Predictions:
    table: pd.DataFrame  # one row per image read: path, [true,] predicted or labels, prob_*
    skipped: pd.DataFrame  # path and error of each file that could not be read


@dataclass(frozen=True)
class Scores:
    accuracy: float
    macro_f1: float
    confusion: pd.DataFrame  # rows true, columns predicted, the classes seen in either


def collect_inputs(path: Path, *, unlabelled: bool = False) -> ImageInputs:
    """An image file; a folder of images (searched recursively); or a folder holding only
    sub-folders of images, read as class folders unless ``unlabelled``."""
    path = path.expanduser()
    if path.is_file():
        return ImageInputs(path.parent, [path], None)
    if not path.is_dir():
        raise AnalysisError(f"no file or folder {str(path)!r}")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise AnalysisError(f"no image files in {str(path)!r} (looked for {suffixes})")
    if unlabelled or any(p.parent == path for p in files):
        return ImageInputs(path, files, None)
    return ImageInputs(path, files, [p.relative_to(path).parts[0] for p in files])


def model_info(model: Any, uri: str) -> ModelInfo:
    """The classes a loaded pyfunc model predicts, from its MLmodel metadata."""
    spec = (model.metadata.metadata or {}).get(METADATA_KEY)
    if not spec:
        raise AnalysisError(f"model {uri} is not an image classifier logged by tune.py")
    return ModelInfo(tuple(spec["classes"]), bool(spec["multilabel"]))


def check_labels(inputs: ImageInputs, info: ModelInfo) -> None:
    """Refuse class folders the model has no class for."""
    if inputs.labels is None or info.multilabel:
        return
    unknown = sorted(set(inputs.labels) - set(info.classes))
    if unknown:
        raise AnalysisError(
            f"class folders {', '.join(unknown[:5])} in {str(inputs.root)!r} are not classes "
            f"of the model (its classes: {', '.join(info.classes[:20])}); pass --unlabelled to "
            "read sub-folders as plain folders"
        )


def predict(model: Any, inputs: ImageInputs, info: ModelInfo, batch_size: int) -> Predictions:
    """The model's predictions on every readable file; unreadable ones are set apart."""
    params = {"batch_size": batch_size, "on_unreadable": "skip"}
    frame = model.predict([str(p) for p in inputs.paths], params=params)
    errors = frame.pop(ERROR).to_numpy()
    frame.insert(0, PATH, [str(p) for p in inputs.paths])
    if inputs.labels is not None and not info.multilabel:
        frame.insert(1, TRUE, inputs.labels)
    read = errors == ""
    skipped = pd.DataFrame({PATH: frame[PATH][~read], ERROR: errors[~read]})
    if not read.any():
        first = f"{skipped[PATH].iloc[0]}: {skipped[ERROR].iloc[0]}"
        raise AnalysisError(f"no image file could be read ({len(frame)} tried; first: {first})")
    return Predictions(frame[read].reset_index(drop=True), skipped.reset_index(drop=True))


def score(table: pd.DataFrame, classes: tuple[str, ...]) -> Scores:
    """Accuracy and macro F1 over the model's classes, as the runs' val metrics are computed,
    and the confusion matrix of the classes seen."""
    index = {name: i for i, name in enumerate(classes)}
    y_true = table[TRUE].map(index).to_numpy(dtype=int)
    y_pred = table[PREDICTED].map(index).to_numpy(dtype=int)
    metrics = classification_metrics(y_true, y_pred, classes, "predict")
    seen = np.union1d(y_true, y_pred)
    matrix = confusion_matrix(y_true, y_pred, len(classes))[np.ix_(seen, seen)]
    frame = matrix_frame(matrix, [classes[i] for i in seen])
    return Scores(metrics["predict_accuracy"], metrics["predict_macro_f1"], frame)


def preview(predictions: Predictions, root: Path, rows: int = 10) -> pd.DataFrame:
    """The first rows, paths relative to the input, with the top probability."""
    table = predictions.table.head(rows)
    probs = table.filter(like=PROB_PREFIX)
    label = LABELS if LABELS in table.columns else PREDICTED
    shown = pd.DataFrame({PATH: [_relative(p, root) for p in table[PATH]]})
    if TRUE in table.columns:
        shown[TRUE] = table[TRUE].to_numpy()
    shown[label] = table[label].to_numpy()
    shown["probability"] = probs.max(axis=1).to_numpy()
    return shown


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path
