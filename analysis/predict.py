"""``python -m analysis predict``: a logged model on image files, and how it scores against
folder labels.

The model is the MLflow pyfunc model the sweep logged (``trainables.edge.served_model``). Loading
it runs the model's own code, so its MLmodel file is read first and a model this project did
not log is refused before any of its code runs (``model_info``). The files are read by
``trainables.data.image_files``, as the model's ``predict(paths)`` reads them (the same pixels, the
same files unreadable: tests hold the two equal), and handed to the model at its dataset's size,
so a model logged before a file could be skipped skips it too. This module finds the files,
runs the model and scores its predictions; it writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.confusion import confusion_matrix, matrix_frame
from analysis.errors import AnalysisError
from trainables.data import image_files
from trainables.data.image_files import IMAGE_SUFFIXES, UnreadableImage
from trainables.edge import served_model
from trainables.edge.served_model import LABELS, METADATA_KEY, PREDICTED, PROB_PREFIX
from trainables.metrics import classification_metrics

PATH = "path"
TRUE = "true"  # the class folder an image came from
# How MLflow describes a model logged by tune.py: one flavour, python_function, loaded from
# the code file served_model.py ("models from code"), without extra code paths.
PYFUNC = "python_function"
CODE_LOADER = "mlflow.pyfunc.loaders.code_model"
CODE_FILE = Path(served_model.__file__).name
SPEC_KEYS = {"classes", "multilabel", "data_size", "data_channels"}  # of its ModelSpec, read here


@dataclass(frozen=True)
class ImageInputs:
    root: Path
    paths: list[Path]
    labels: list[str] | None  # the class folder of each image, for a folder of class folders


@dataclass(frozen=True)
class ModelInfo:
    classes: tuple[str, ...]
    multilabel: bool
    size: int  # the dataset's image size: files are read at it, as the model reads them
    mode: str  # Pillow's mode files are converted to ("RGB" or "L")


@dataclass(frozen=True)
class Predictions:
    table: pd.DataFrame  # one row per image read: path, [true,] predicted or labels, prob_*
    skipped: tuple[UnreadableImage, ...]  # the files that could not be read, in order


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
    files = image_files.image_files(path)  # hidden files left out
    if not files:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise AnalysisError(f"no image files in {str(path)!r} (looked for {suffixes})")
    if unlabelled or any(p.parent == path for p in files):
        return ImageInputs(path, files, None)
    return ImageInputs(path, files, [p.relative_to(path).parts[0] for p in files])


def model_info(logged: Any, uri: str) -> ModelInfo:
    """The classes and input of a model tune.py logged, from ``logged``, MLflow's description
    of it (``mlflow.models.get_model_info``: its MLmodel file, no code run). Any other model is
    refused: loading it would run its code. This keeps a foreign model from running by mistake;
    it is no signature, and a model made to look like ours passes."""
    flavours = logged.flavors or {}
    pyfunc = flavours.get(PYFUNC, {})
    code = Path(pyfunc.get("model_code_path") or "").name
    spec = (logged.metadata or {}).get(METADATA_KEY)
    if set(flavours) != {PYFUNC} or pyfunc.get("loader_module") != CODE_LOADER:
        what = f"flavours {', '.join(sorted(flavours)) or 'none'}, loader "
        what += str(pyfunc.get("loader_module"))
    elif code != CODE_FILE or pyfunc.get("code"):
        what = f"code {code or 'none'}" + (" and extra code paths" if pyfunc.get("code") else "")
    elif not isinstance(spec, dict) or not SPEC_KEYS.issubset(spec):
        what = f"no {METADATA_KEY} metadata with {', '.join(sorted(SPEC_KEYS))}"
    else:
        mode = "L" if spec["data_channels"] == 1 else "RGB"  # as ModelSpec.image_mode
        return ModelInfo(tuple(spec["classes"]), bool(spec["multilabel"]), spec["data_size"], mode)
    raise AnalysisError(
        f"model {uri} is not an image classifier logged by tune.py ({what}); not loaded, "
        "as loading a model runs its code"
    )


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
    frames, read, skipped = [], [], []
    for start in range(0, len(inputs.paths), batch_size):
        batch = image_files.read_images(
            inputs.paths[start : start + batch_size], info.size, info.mode
        )
        skipped += batch.skipped
        if len(batch.read):
            frames.append(model.predict(batch.images, params={"batch_size": batch_size}))
            read += [start + i for i in batch.read]
    if not read:
        first = f"{skipped[0].path}: {skipped[0].reason}"
        raise AnalysisError(f"no image file could be read ({len(skipped)} tried; first: {first})")
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, PATH, [str(inputs.paths[i]) for i in read])
    if inputs.labels is not None and not info.multilabel:
        frame.insert(1, TRUE, [inputs.labels[i] for i in read])
    return Predictions(frame, tuple(skipped))


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
