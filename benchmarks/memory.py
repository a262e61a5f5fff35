"""Private memory each Ray worker spends on the dataset it gets from the object store: torch
tensors pickled as tensors (how ImageData travelled before) against ImageData (numpy arrays,
out of band), side by side.

A synthetic uint8 dataset is put in a local object store once per style; then 1, then 4,
concurrent actors each get it, wrap it as a trial does (an ImageData of tensors) and read every
page of it. Each actor reports its USS (memory no other process shares) before and after; the
growth is what one more trial on a node costs.

    python benchmarks/memory.py                 # 300 MB, 1 and 4 workers
    python benchmarks/memory.py --mb 1000 --workers 1 2 8
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import ray
import torch

from trainables.data import TENSOR_FIELDS, ImageData

MB = 2**20
PAGE = 4096


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=int, default=300, help="dataset size in MB (default 300)")
    p.add_argument(
        "--workers", type=int, nargs="+", default=[1, 4], help="concurrent readers (default 1 4)"
    )
    p.add_argument("--image-size", type=int, default=64, help="3-channel images of this size")
    return p


def synthetic_data(megabytes: int, size: int) -> ImageData:
    n = max(4, megabytes * MB // (3 * size * size))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    cut = n * 4 // 5
    classes = tuple(str(c) for c in range(10))
    return ImageData("synthetic", classes, x[:cut], y[:cut], x[cut:], y[cut:])


def as_plain_tensors(data: ImageData) -> dict[str, Any]:
    """The same fields in a dict: pickled by torch's own reducer, bytes in band."""
    fields = {f: getattr(data, f) for f in TENSOR_FIELDS}
    return {"name": data.name, "classes": data.classes, "multilabel": data.multilabel, **fields}


def touch(data: ImageData) -> int:
    """Read one byte of every page of every tensor, so all of it is mapped or copied in."""
    total = 0
    for field in TENSOR_FIELDS:
        flat = getattr(data, field).reshape(-1).view(torch.uint8)
        total += int(flat[::PAGE].sum())
    return total


@ray.remote(num_cpus=0)
class Reader:
    """One worker process, as a trial would be."""

    def uss(self) -> int:
        # Ray ships psutil (ray/thirdparty_files, on the path once ray is imported).
        import psutil

        return psutil.Process().memory_full_info().uss

    def read(self, boxed: list[ray.ObjectRef]) -> dict[str, int]:
        # The reference comes boxed so that the get happens here, between the two readings.
        before = self.uss()
        got = ray.get(boxed[0])
        data = got if isinstance(got, ImageData) else ImageData(**got)
        checksum = touch(data)
        return {"before": before, "after": self.uss(), "checksum": checksum}


def measure(ref: ray.ObjectRef, workers: int) -> list[dict[str, int]]:
    readers = [Reader.remote() for _ in range(workers)]
    ray.get([r.uss.remote() for r in readers])  # all started before any reads
    try:
        return ray.get([r.read.remote([ref]) for r in readers])
    finally:
        for r in readers:
            ray.kill(r)


def growth_mb(results: list[dict[str, int]]) -> list[float]:
    return [(r["after"] - r["before"]) / MB for r in results]


def print_table(size_mb: float, rows: list[tuple[int, list[float], list[float]]]) -> None:
    print(f"dataset {size_mb:.0f} MB; USS growth of each worker after get + wrap + read, MB")
    header = (
        f"{'workers':>7} {'tensors/worker':>15} {'ImageData/worker':>17} "
        f"{'tensors total':>14} {'ImageData total':>16} {'ratio':>8}"
    )
    print(header)
    for workers, old, new in rows:
        old_mean, new_mean = statistics.mean(old), statistics.mean(new)
        print(
            f"{workers:>7} {old_mean:>15.1f} {new_mean:>17.1f} "
            f"{sum(old):>14.1f} {sum(new):>16.1f} {_ratio(old_mean, new_mean):>8}"
        )


def _ratio(old: float, new: float) -> str:
    # Under 1 MB the growth is page-table and allocator noise: the ratio is a lower bound.
    return f"{old / new:.1f}" if new >= 1 else f">{old:.0f}"


def main(argv: list[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    data = synthetic_data(args.mb, args.image_size)
    size_mb = sum(getattr(data, f).nbytes for f in TENSOR_FIELDS) / MB
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        old_ref, new_ref = ray.put(as_plain_tensors(data)), ray.put(data)
        rows = []
        for workers in args.workers:
            old, new = measure(old_ref, workers), measure(new_ref, workers)
            if {r["checksum"] for r in old + new} != {touch(data)}:
                raise RuntimeError("a worker read different data")
            rows.append((workers, growth_mb(old), growth_mb(new)))
    finally:
        ray.shutdown()
    print_table(size_mb, rows)


if __name__ == "__main__":
    main()
