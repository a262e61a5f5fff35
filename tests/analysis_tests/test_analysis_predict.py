"""``python -m analysis predict`` on a store holding a sweep whose confirmation run logged its
model: class folders scored against the in-memory model's own predictions, plain folders and
single files, unreadable files counted, and bad input refused with one line and no file."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from analysis.cli import main
from analysis.errors import AnalysisError
from analysis.predict import model_info
from analysis.store import Store
from tests.bad_images import add_bad_files, write_image
from tests.logged_models import log_marker_model
from trainables import contract
from trainables.config import TrialConfig
from trainables.data import DataOptions, limit_train, load_dataset, read_image
from trainables.edge import tracking
from trainables.edge.model_export import log_trial_model
from trainables.edge.trial import copy_trained_state
from trainables.engine import build_training_state, fit
from trainables.metrics import classification_metrics

CPU = torch.device("cpu")
EXPERIMENT = "predict"


class Sweep:
    def __init__(self, uri, parent, model_run, search_run, model_uri, state, data, folder):
        self.uri, self.parent, self.model_run, self.search_run = uri, parent, model_run, search_run
        self.model_uri, self.state, self.data, self.folder = model_uri, state, data, folder


def _child(uri, experiment_id, parent, name, role, value) -> tracking.TrialRun:
    run = tracking.TrialRun.open(
        uri,
        experiment_id=experiment_id,
        parent_run_id=parent,
        run_name=name,
        tags={"role": role, "arm": "ce", "seed": "0"},
        params={"loss": "ce"},
    )
    run.log_metrics({"best_val_macro_f1": value, "best_epoch": 1.0}, step=1)
    return run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Sweep:
    root = tmp_path_factory.mktemp("predict")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    torch.manual_seed(0)
    cfg = TrialConfig(dataset="digits-lt", max_epochs=1, batch_size=32)
    data = limit_train(load_dataset("digits-lt", DataOptions()), 150)
    state = build_training_state(cfg, data, CPU)
    list(fit(cfg, data, CPU, state))
    experiment_id = tracking.ensure_experiment(uri, EXPERIMENT)
    tags = {"space": "focal", "factor": "loss", "arms": "ce", "metric": "val_macro_f1"}
    parent = tracking.start_parent_run(uri, experiment_id, "focal-sweep-1", tags, {})
    # The search run scores higher but logged no model: 'best' must still find the model.
    search = _child(uri, experiment_id, parent, "search-trial", "search", 0.9)
    confirmation = _child(uri, experiment_id, parent, "confirm-trial", "confirmation", 0.5)
    model_uri = log_trial_model(
        uri, confirmation.run_id, cfg, data, state, copy_trained_state(state)
    )
    for run in (search, confirmation):
        run.end()
    tracking.set_tags(uri, parent, {contract.WINNER_RUN_TAG: confirmation.run_id})
    tracking.end_run(uri, parent)
    folder = root / "val"
    for i, (image, label) in enumerate(zip(data.val_x, data.val_y, strict=True)):
        (folder / str(int(label))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).resize((20, 20)).save(
            folder / str(int(label)) / f"{i}.png"
        )
    (folder / "3" / "broken.png").write_bytes(b"not an image")
    (folder / "3" / "notes.txt").write_text("not an image, not counted")
    return Sweep(uri, parent, confirmation.run_id, search.run_id, model_uri, state, data, folder)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _predict(capsys, sweep: Sweep, *args: str) -> tuple[int, str, str]:
    code = main(["predict", "--tracking-uri", sweep.uri, *args])
    out, err = capsys.readouterr()
    return code, out, err


def _expected(sweep: Sweep, paths: list[Path]) -> np.ndarray:
    """The in-memory model's probabilities on the files, read as the training loader reads."""
    images = torch.stack([read_image(p, 8, 1) for p in paths])
    sweep.state.model.eval()
    with torch.no_grad():
        return sweep.state.model(images).softmax(dim=1).numpy()


def test_class_folders_are_scored_and_every_readable_file_is_in_the_csv(sweep, workdir, capsys):
    code, out, err = _predict(
        capsys, sweep, "--experiment", EXPERIMENT, str(sweep.folder), "--output", "p.csv"
    )
    assert (code, err) == (0, "")
    table = pd.read_csv(workdir / "p.csv", dtype={"true": str, "predicted": str})
    classes = list(sweep.data.classes)
    assert list(table.columns) == ["path", "true", "predicted", *(f"prob_{c}" for c in classes)]
    files = sorted(p for p in sweep.folder.rglob("*.png") if p.name != "broken.png")
    assert sorted(table["path"]) == sorted(map(str, files))
    paths = [Path(p) for p in table["path"]]
    expected = _expected(sweep, paths)
    np.testing.assert_allclose(table.filter(like="prob_").to_numpy(), expected, atol=1e-6)
    assert list(table["true"]) == [p.parent.name for p in paths]
    y_true = np.array([int(p.parent.name) for p in paths])
    metrics = classification_metrics(y_true, expected.argmax(1), classes, "x")
    assert f"accuracy {metrics['x_accuracy']:.4f}, macro F1 {metrics['x_macro_f1']:.4f}" in out
    assert (
        f"{len(files)} images from {sweep.folder}; skipped 1 unreadable image file of "
        f"{len(files) + 1}: 3/broken.png (UnidentifiedImageError: cannot identify image file)\n"
    ) in out
    assert f"model {sweep.model_uri} (run confirm-trial)" in out
    assert "confusion (rows: folder, columns: predicted)" in out


def test_one_file_and_a_model_uri(sweep, workdir, capsys):
    image = next(sweep.folder.glob("0/*.png"))
    runs_uri = f"runs:/{sweep.model_run}/model"
    code, out, err = _predict(capsys, sweep, "--model", runs_uri, str(image))
    assert (code, err) == (0, "")
    written = next((workdir / "analysis-out").glob("predictions-*.csv"))
    table = pd.read_csv(written, dtype={"predicted": str})
    assert list(table["path"]) == [str(image)] and "true" not in table.columns
    expected = _expected(sweep, [image])
    assert table["predicted"][0] == sweep.data.classes[int(expected.argmax())]
    assert "accuracy" not in out and f"model {runs_uri}\n" in out


def test_rgb_and_rgba_files_for_a_grey_model_give_what_their_grey_images_give(
    sweep, workdir, capsys
):
    """Grey pictures sent as RGB JPEGs or RGBA PNGs: read converted to grey by Pillow, as
    the served model's predict(paths) and the training loader read them."""
    folder = workdir / "colour"
    rgb = [write_image(folder / f"{i}.png", i, size=20, channels=3) for i in range(2)]
    with Image.open(rgb[0]) as image:
        image.save(folder / "0.jpg", quality=80)
        image.putalpha(90)
        image.save(folder / "rgba.png")
    files = [folder / "0.jpg", *rgb, folder / "rgba.png"]
    code, _, err = _predict(
        capsys, sweep, "--model", sweep.model_uri, str(folder), "--output", "c.csv"
    )
    assert (code, err) == (0, "")
    table = pd.read_csv(workdir / "c.csv").sort_values("path")
    expected = _expected(sweep, sorted(files, key=str))
    np.testing.assert_allclose(table.filter(like="prob_").to_numpy(), expected, atol=1e-6)


def test_a_run_by_name_and_sub_folders_read_unlabelled(sweep, workdir, capsys):
    code, out, err = _predict(
        capsys,
        sweep,
        "--experiment",
        EXPERIMENT,
        "--run",
        "confirm-trial",
        "--unlabelled",
        str(sweep.folder),
        "--output",
        "u.csv",
    )
    assert (code, err) == (0, "")
    assert "true" not in pd.read_csv(workdir / "u.csv").columns and "accuracy" not in out


def test_a_multilabel_model_lists_its_labels_and_scores_no_folders(sweep, workdir, capsys):
    torch.manual_seed(0)
    cfg = TrialConfig(dataset="digits-multilabel", loss="bce", max_epochs=1, batch_size=32)
    data = limit_train(load_dataset("digits-multilabel", DataOptions()), 200)
    state = build_training_state(cfg, data, CPU)
    list(fit(cfg, data, CPU, state))
    experiment_id = tracking.ensure_experiment(sweep.uri, "multilabel")
    parent = tracking.start_parent_run(sweep.uri, experiment_id, "sweep", {}, {})
    run = _child(sweep.uri, experiment_id, parent, "multilabel-trial", "confirmation", 0.5)
    model_uri = log_trial_model(sweep.uri, run.run_id, cfg, data, state, copy_trained_state(state))
    folder = workdir / "tiles" / "3"
    folder.mkdir(parents=True)
    for i, image in enumerate(data.val_x[:5]):
        Image.fromarray(image[0].numpy()).save(folder / f"{i}.png")
    capsys.readouterr()  # MLflow's own log lines while logging the model
    code, out, err = _predict(capsys, sweep, "--model", model_uri, str(folder.parent))
    assert (code, err) == (0, "")
    assert "multi-label model: no scores against the class folders" in out
    table = pd.read_csv(next((workdir / "analysis-out").glob("*.csv")), keep_default_na=False)
    assert list(table.columns) == ["path", "labels", *(f"prob_{c}" for c in data.classes)]
    probs = table.filter(like="prob_").to_numpy()
    wanted = [";".join(data.classes[i] for i in np.flatnonzero(row >= 0.5)) for row in probs]
    assert list(table["labels"].astype(str)) == wanted


def test_a_bomb_is_skipped_and_hidden_files_ignored(sweep, workdir, capsys):
    # Before: the decompression bomb ended predict with a traceback.
    folder = workdir / "in"
    good = [write_image(folder / f"{i}.png", i, size=20, channels=1) for i in range(3)]
    add_bad_files(folder)
    code, out, err = _predict(
        capsys, sweep, "--model", sweep.model_uri, str(folder), "--output", "p.csv"
    )
    assert (code, err) == (0, "")
    table = pd.read_csv(workdir / "p.csv")
    assert list(table["path"]) == list(map(str, good))
    np.testing.assert_allclose(
        table.filter(like="prob_").to_numpy(), _expected(sweep, good), atol=1e-6
    )
    assert (
        f"3 images from {folder}; skipped 2 unreadable image files of 5: bomb.png "
        "(DecompressionBombError: Image size (10000000000 pixels) exceeds limit of 178956970 "
        "pixels, could ...), broken.jpg (OSError: Truncated File Read)\n"
    ) in out


def test_a_foreign_model_is_refused_before_any_of_its_code_runs(sweep, workdir, capsys):
    # Before: predict loaded the model (running its load_context), then found no metadata.
    marker = workdir / "marker"
    model_uri = log_marker_model(sweep.uri, marker)
    capsys.readouterr()  # MLflow's own log lines while logging the model
    code, out, err = _predict(capsys, sweep, "--model", model_uri, str(sweep.folder))
    assert not marker.exists()
    assert (code, out) == (2, "")
    assert err == (
        f"analysis: error: model {model_uri} is not an image classifier logged by tune.py "
        "(flavours python_function, loader mlflow.pyfunc.model); not loaded, as loading a "
        "model runs its code\n"
    )
    assert not (workdir / "analysis-out").exists()


def _described(sweep: Sweep, **changes) -> SimpleNamespace:
    """MLflow's description of the sweep's model, with ``changes`` to its flavour's config
    (``flavors=`` and ``metadata=`` replace those wholesale)."""
    logged = Store(sweep.uri).model_description(sweep.model_uri)
    flavors = changes.pop("flavors", None)
    metadata = changes.pop("metadata", logged.metadata)
    if flavors is None:
        flavors = {"python_function": {**logged.flavors["python_function"], **changes}}
    return SimpleNamespace(flavors=flavors, metadata=metadata)


def test_the_model_tune_py_logged_is_described_without_loading_it(sweep):
    info = model_info(_described(sweep), sweep.model_uri)
    assert (info.classes, info.multilabel) == (sweep.data.classes, False)
    assert (info.size, info.mode) == (8, "L")


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"flavors": {"sklearn": {}, "python_function": {}}}, "flavours python_function, sklearn"),
        ({"flavors": {}}, "flavours none, loader None"),
        ({"loader_module": "mlflow.pyfunc.model"}, "loader mlflow.pyfunc.model"),
        ({"model_code_path": "/tmp/agent.py"}, "(code agent.py)"),
        ({"code": "code"}, "(code served_model.py and extra code paths)"),
        ({"metadata": None}, "no image_classifier metadata with classes, data_channels"),
        ({"metadata": {"image_classifier": {"classes": ["a"]}}}, "no image_classifier metadata"),
    ],
)
def test_models_tune_py_did_not_log_are_refused_from_their_description(sweep, changes, reason):
    with pytest.raises(AnalysisError) as excinfo:
        model_info(_described(sweep, **changes), "models:/m-x")
    message = str(excinfo.value)
    assert message.startswith("model models:/m-x is not an image classifier logged by tune.py (")
    assert reason in message and "\n" not in message


def _empty(tmp: Path) -> Path:
    (tmp / "empty").mkdir()
    return tmp / "empty"


def _unknown_class(tmp: Path) -> Path:
    (tmp / "folders" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp / "folders" / "cat" / "a.png")
    return tmp / "folders"


def _all_unreadable(tmp: Path) -> Path:
    (tmp / "bad").mkdir()
    (tmp / "bad" / "a.png").write_bytes(b"nope")
    return tmp / "bad"


BAD = {
    "unknown run": (["--experiment", EXPERIMENT, "--run", "nope"], None, "no run 'nope'"),
    "run without a model": (
        ["--experiment", EXPERIMENT, "--run", "search-trial"],
        None,
        "run search-trial (",
    ),
    "unknown model": (["--model", "models:/nope/1"], None, "cannot load model models:/nope/1"),
    "unknown experiment": (["--experiment", "nope"], None, "no experiment 'nope'"),
    "missing input": (["--model", "models:/nope/1"], lambda t: t / "nowhere", "no file or folder"),
    "empty folder": (["--experiment", EXPERIMENT], _empty, "no image files in"),
    "unknown class folder": (
        ["--experiment", EXPERIMENT],
        _unknown_class,
        "class folders cat in",
    ),
    "no readable image": (["--experiment", EXPERIMENT], _all_unreadable, "no image file could be"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(sweep, workdir, capsys, case):
    args, make_input, message = BAD[case]
    target = make_input(workdir) if make_input else sweep.folder
    code, out, err = _predict(capsys, sweep, *args, str(target))
    assert code == 2 and out == ""
    assert err.startswith("analysis: error: ") and err.count("\n") == 1
    assert message in err
    assert not (workdir / "analysis-out").exists()
