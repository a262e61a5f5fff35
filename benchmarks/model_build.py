"""What building a backbone with weights costs a trial (and loading a served model costs its
user): the project's build, whose skeleton takes the weights as they are, against torchvision's
model built as usual (random values drawn) and then loaded with the same file, side by side in
one run, on one thread as a trial of one CPU has.

    python benchmarks/model_build.py                          # five backbones (~1 min)
    python benchmarks/model_build.py --backbones vgg16,resnet50 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbones", default="resnet18,resnet50,vgg16,densenet121,efficientnet_b0")
    p.add_argument("--repeats", type=int, default=3, help="builds of each, alternating (3)")
    return p


def seconds(build: Callable[[], object]) -> float:
    start = time.perf_counter()
    build()
    return time.perf_counter() - start


def plain(arch: str, path: Path) -> None:
    """torchvision's model, built as usual, then loaded with the file (the classifier's keys
    too: the file is the whole model's)."""
    import torch
    import torchvision

    model = torchvision.models.get_model(arch, weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))


def project(arch: str, path: Path) -> None:
    """The trial's build: trunk, weights, preprocessing and head."""
    from trainables.models import build_model

    build_model(backbone=arch, weights=str(path), num_classes=10, in_channels=3, data_size=32)


def compare(arch: str, folder: Path, repeats: int) -> str:
    import torch
    import torchvision

    path = folder / f"{arch}.pth"
    torch.save(torchvision.models.get_model(arch, weights=None).state_dict(), path)
    project(arch, path)  # the first build reads the file from disk and imports: warm both
    plain_s, project_s = [], []
    for _ in range(repeats):
        plain_s.append(seconds(lambda: plain(arch, path)))
        project_s.append(seconds(lambda: project(arch, path)))
    a, b = statistics.median(plain_s), statistics.median(project_s)
    return f"{arch:>16} {a:8.3f} {b:9.3f} {a / b:6.1f}x"


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    import torch

    torch.set_num_threads(1)
    print(
        f"{'backbone':>16} {'plain s':>8} {'project s':>9} {'ratio':>7}  (median of {args.repeats})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.backbones.split(","):
            print(compare(arch, Path(tmp), args.repeats), flush=True)


if __name__ == "__main__":
    main()
