"""``tune.py --check-data``: the dataset loaded as a sweep loads it, reported, and no Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.bad_images import write_image, write_truncated_jpeg

ROOT = Path(__file__).resolve().parents[2]
CHECK = """
import sys
import tune
status = tune.main_with_early_ray(sys.argv[1:])
ray = sys.modules.get("ray")
print("ray started:", bool(ray is not None and ray.is_initialized()))
sys.exit(status)
"""


def _check_data(args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FINETUNE_SWEEPS_IMAGE_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-c", CHECK, "--space", "focal", "--check-data", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_check_data_reports_splits_skipped_files_size_and_cache_without_ray(tmp_path):
    root = tmp_path / "data"
    for c, name in enumerate(("cat", "dog", "eel")):
        for i in range(8):
            write_image(root / name / f"{i}.png", 100 * c + i)
    write_truncated_jpeg(root / "dog" / "broken.jpg")
    cache = tmp_path / "cache"
    args = ["--dataset", f"imagefolder:{root}", "--image-size", "16"]
    first = _check_data(args, cache, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    lines = first.stdout.splitlines()
    assert lines[0] == (
        f"dataset imagefolder:{root}: 3 classes, 24 images decoded at 16 px, 3 channels: 0.0176 MiB"
    )
    assert lines[1].split() == ["split", "cat", "dog", "eel", "total"]
    assert [line.split() for line in lines[2:5]] == [
        ["train", "4", "5", "5", "14"],
        ["val", "2", "1", "2", "5"],
        ["test", "2", "2", "1", "5"],
    ]
    assert lines[5] == (
        f"imagefolder:{root}: skipped 1 unreadable image file of 25: dog/broken.jpg "
        "(OSError: Truncated File Read)"
    )
    [entry] = cache.glob("images-*.npy")
    assert lines[6] == f"image cache: {entry}"
    assert lines[7] == "ray started: False"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    second = _check_data(args, cache, tmp_path)
    assert second.returncode == 0 and second.stdout == first.stdout


def test_check_data_says_why_it_is_uncached_and_refuses_bad_data_in_one_line(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for c, name in enumerate(("cat", "dog")):
        for i in range(4):
            write_image(root / name / f"{i}.png", 10 * c + i)
    args = ["--dataset", f"imagefolder:{root}", "--image-size", "8"]
    cached = _check_data(args, tmp_path / "cache", tmp_path)
    assert cached.returncode == 0, cached.stderr[-3000:]
    assert "uncached" not in cached.stdout
    monkeypatch.setenv("FINETUNE_SWEEPS_IMAGE_CACHE_GIB", "0")
    uncached = _check_data(args, tmp_path / "cache", tmp_path)
    assert uncached.returncode == 0, uncached.stderr[-3000:]
    assert uncached.stdout.splitlines()[-2] == (
        f"imagefolder:{root}: uncached: the image cache is off ($FINETUNE_SWEEPS_IMAGE_CACHE_GIB=0)"
    )
    missing = _check_data(["--dataset", f"imagefolder:{tmp_path / 'none'}"], tmp_path, tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "does not exist" in missing.stderr
