"""Augmented images per second: torchvision's transforms image by image (the project's former
pipeline) against the project's batched augmentation, side by side.

Both draw the same kinds of random crop (reflect padding), flip and colour jitter for every
image of a uint8 batch. Rounds alternate between the two so a noisy, shared machine slows both
alike; each line reports the median over the rounds and the ratio batched/per-image.

    python benchmarks/augment.py                              # CPU, 64 at 32 px and 128 at 64 px
    python benchmarks/augment.py --device cuda --cases 256x32 512x64
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from trainables.engine import make_augment


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda (the batched pipeline only)")
    p.add_argument(
        "--cases",
        nargs="+",
        default=["64x32", "128x64"],
        help="BATCHxSIZE of 3-channel uint8 images (default 64x32 128x64)",
    )
    p.add_argument("--batches", type=int, default=5, help="batches per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU; 0 = default")
    return p


def per_image_pipeline(image_size: int) -> nn.Module:
    """The pipeline the batched one replaced: torchvision v2 transforms in a loop over images."""
    from torchvision.transforms import v2

    pipeline = v2.Compose(
        [
            v2.RandomCrop(image_size, padding=max(1, image_size // 8), padding_mode="reflect"),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    )

    class PerImage(nn.Module):
        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return torch.stack([pipeline(img) for img in batch])

    return PerImage()


def images_per_second(
    augment: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor, batches: int
) -> float:
    _sync(batch.device)
    start = time.perf_counter()
    for _ in range(batches):
        augment(batch)
    _sync(batch.device)
    return batches * len(batch) / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_case(args: argparse.Namespace, batch_size: int, size: int) -> tuple[float, float]:
    """Median images/s over the rounds: (per image on the CPU, batched on ``args.device``)."""
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=g)
    device = torch.device(args.device)
    old = per_image_pipeline(size)
    new = make_augment(size, generator=torch.Generator().manual_seed(0), device=device)
    on_device = batch.to(device)
    old(batch[:2]), new(on_device)  # warm-up: imports, allocator, kernels
    per_image, batched = [], []
    for _ in range(args.rounds):
        per_image.append(images_per_second(old, batch, args.batches))
        batched.append(images_per_second(new, on_device, args.batches))
    return statistics.median(per_image), statistics.median(batched)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"per image: torchvision v2 on the CPU; batched: on {args.device}; "
        f"{torch.get_num_threads()} torch threads, median of {args.rounds} rounds"
    )
    print(f"{'batch':>5} {'size':>5} {'per-image img/s':>16} {'batched img/s':>14} {'ratio':>7}")
    for case in args.cases:
        batch_size, size = (int(v) for v in case.lower().split("x"))
        per_image, batched = run_case(args, batch_size, size)
        print(
            f"{batch_size:>5} {size:>5} {per_image:>16.0f} {batched:>14.0f} "
            f"{batched / per_image:>7.1f}"
        )


if __name__ == "__main__":
    main()
