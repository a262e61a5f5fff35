"""Training images per second: the project's loop against a plain PyTorch loop, side by side.

Both loops train the same model on the same uint8 images for the same number of steps; the
plain one is what a person writes by hand (normalise on the host, forward, cross-entropy,
step). Rounds alternate between the two so a noisy, shared machine slows both alike, and the
ratio is printed per round and as the median.

    python benchmarks/throughput.py                         # CPU, small CNN on digits size
    python benchmarks/throughput.py --device cuda --backbone resnet18 --image-size 224 \
        --batch-size 128 --amp --channels-last              # the GPU path
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from trainables.engine import train_one_epoch
from trainables.losses import LossContext, build_loss
from trainables.models import build_model


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--backbone", default="smallcnn")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per timed round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only)")
    p.add_argument("--channels-last", action="store_true", help="(CUDA only)")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU; 0 = default")
    return p


def _model(args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    model = build_model(
        backbone=args.backbone,
        weights="none",
        num_classes=10,
        in_channels=3,
        data_size=args.image_size,
        image_size=args.image_size,
        head_hidden=(128,),
    ).to(device)
    if device.type == "cuda" and args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_project_loop(args, device, images, targets) -> float:
    model = _model(args, device)
    criterion = build_loss(
        "ce", LossContext(num_classes=10, embedding_dim=128, class_counts=[1] * 10)
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = torch.Generator().manual_seed(0)
    _sync(device)
    start = time.perf_counter()
    train_one_epoch(
        model,
        criterion,
        optimizer,
        images,
        targets,
        device,
        batch_size=args.batch_size,
        rng=rng,
        amp=args.amp,
        channels_last=args.channels_last,
    )
    _sync(device)
    return len(images) / (time.perf_counter() - start)


def time_plain_loop(args, device, images, targets) -> float:
    model = _model(args, device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    mean = torch.tensor([0.5, 0.5, 0.5], device=device).view(1, 3, 1, 1)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    model.train()
    _sync(device)
    start = time.perf_counter()
    for first in range(0, len(order), args.batch_size):
        idx = order[first : first + args.batch_size]
        x = (images[idx].to(device).float() / 255 - mean) / 0.25
        if device.type == "cuda" and args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = targets[idx].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            # The model's own preprocessing is skipped: feed the backbone and head directly.
            logits = model.head(model.neck(model.backbone(x)))
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    n = args.batch_size * args.steps
    g = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (n, 3, args.image_size, args.image_size), dtype=torch.uint8, generator=g
    )
    targets = torch.randint(0, 10, (n,), generator=g)
    if device.type == "cuda":
        images = images.pin_memory()
    time_project_loop(args, device, images[: args.batch_size * 2], targets[: args.batch_size * 2])
    time_plain_loop(args, device, images[: args.batch_size * 2], targets[: args.batch_size * 2])
    print(
        f"{args.backbone} {args.image_size}px batch {args.batch_size} on {device}, "
        f"amp={args.amp} channels_last={args.channels_last}, {n} images per round"
    )
    print(f"{'round':>5} {'project img/s':>14} {'plain img/s':>12} {'ratio':>7}")
    ratios = []
    for r in range(1, args.rounds + 1):
        project = time_project_loop(args, device, images, targets)
        plain = time_plain_loop(args, device, images, targets)
        ratios.append(project / plain)
        print(f"{r:>5} {project:>14.1f} {plain:>12.1f} {ratios[-1]:>7.3f}")
    print(f"median ratio project/plain: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
