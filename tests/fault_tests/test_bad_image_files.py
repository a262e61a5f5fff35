"""Bad files met through the real command lines: a truncated JPEG, a decompression bomb,
macOS's ``._name.jpg`` files and a folder named ``album.jpg`` in an image folder or a CSV
manifest, and a foreign model handed to ``analysis predict``.

Before the fix each bad file ended ``tune.py`` (exit 1) or ``analysis predict`` with a
traceback, and ``predict`` ran a foreign model's code before finding it was not one of ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bad_images import add_bad_files, write_class_folders, write_image, write_truncated_jpeg
from tests.logged_models import log_classifier, log_marker_model

ROOT = Path(__file__).resolve().parents[2]
BOMB = (
    "(DecompressionBombError: Image size (10000000000 pixels) exceeds limit of 178956970 "
    "pixels, could ...)"
)
TINY_SWEEP = [
    "--space",
    "focal",
    "--arms",
    "ce",
    "--image-size",
    "8",
    "--num-samples",
    "1",
    "--max-epochs",
    "1",
    "--confirm-seeds",
    "0",
    "--log-models",
    "none",
    "--num-cpus",
    "2",
    "--quiet",
]


def _run(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )


def _tune(dataset: str, cwd: Path) -> subprocess.CompletedProcess:
    return _run([str(ROOT / "tune.py"), *TINY_SWEEP, "--dataset", dataset], cwd)


def _folder_with_bad_files(root: Path) -> Path:
    write_class_folders(root, ("cat", "dog"), per_class=6)
    add_bad_files(root / "cat")
    return root


@pytest.mark.slow
def test_a_sweep_on_an_image_folder_skips_unreadable_files_and_says_so(tmp_path):
    folder = _folder_with_bad_files(tmp_path / "images")
    result = _tune(f"imagefolder:{folder}", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "unreadable" in line] == [
        f"tune.py: warning: imagefolder:{folder}: skipped 2 unreadable image files of 14: "
        f"cat/bomb.png {BOMB}, cat/broken.jpg (OSError: Truncated File Read)"
    ]
    assert "loss=ce: 1 search trial" in result.stdout


@pytest.mark.slow
def test_a_sweep_on_a_manifest_skips_unreadable_files_and_says_so(tmp_path):
    folder = _folder_with_bad_files(tmp_path / "images")
    listed = sorted(p for p in folder.rglob("*") if p.is_file())  # ._0.jpg included
    rows = [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in listed]
    (tmp_path / "m.csv").write_text("\n".join(["path,label", *rows]) + "\n")
    result = _tune(f"csv:{tmp_path / 'm.csv'}", tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "unreadable" in line] == [
        f"tune.py: warning: csv:{tmp_path / 'm.csv'}: skipped 3 unreadable image files of 15: "
        "images/cat/._0.jpg (UnidentifiedImageError: cannot identify image file), "
        f"images/cat/bomb.png {BOMB}, images/cat/broken.jpg (OSError: Truncated File Read)"
    ]


@pytest.mark.slow  # tune.py starts Ray as it starts
def test_a_class_folder_with_nothing_readable_is_refused_in_one_line(tmp_path):
    write_class_folders(tmp_path / "images", ("cat", "dog"), per_class=3)
    write_truncated_jpeg(tmp_path / "images" / "emu" / "0.jpg")
    result = _tune(f"imagefolder:{tmp_path / 'images'}", tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"tune.py: error: imagefolder:{tmp_path / 'images'}: class folder 'emu' has no "
        "readable image (1 unreadable: emu/0.jpg (OSError: Truncated File Read))"
    ]
    assert not (tmp_path / "mlflow.db").exists()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str]:
    """A store holding a model as tune.py logs it: its URI and the model's."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, log_classifier(uri)


def _predict(store: tuple[str, str], model_uri: str, images: Path, cwd: Path):
    args = ["-m", "analysis", "predict", "--tracking-uri", store[0], "--model", model_uri]
    return _run([*args, str(images)], cwd, timeout=120)


def test_predict_skips_a_bomb_like_any_unreadable_file(store, tmp_path):
    for i in range(2):
        write_image(tmp_path / "in" / f"{i}.png", i, channels=1)
    add_bad_files(tmp_path / "in")
    result = _predict(store, store[1], tmp_path / "in", tmp_path)
    assert (result.returncode, result.stderr) == (0, "")
    assert (
        f"2 images from {tmp_path / 'in'}; skipped 2 unreadable image files of 4: "
        f"bomb.png {BOMB}, broken.jpg (OSError: Truncated File Read)\n"
    ) in result.stdout


def test_predict_refuses_a_foreign_model_before_any_of_its_code_runs(store, tmp_path):
    marker = tmp_path / "marker"
    model_uri = log_marker_model(store[0], marker)
    write_image(tmp_path / "in" / "0.png", 0, channels=1)
    result = _predict(store, model_uri, tmp_path / "in", tmp_path)
    assert not marker.exists()
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"analysis: error: model {model_uri} is not an image classifier logged by tune.py "
        "(flavours python_function, loader mlflow.pyfunc.model); not loaded, as loading a "
        "model runs its code"
    ]
    assert result.stdout == ""
