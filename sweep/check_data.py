"""``tune.py --check-data``: load the dataset as a sweep would (decode it, or open its image
cache), print what a sweep would train on, and stop before Ray.

What it prints: the images per class in each split, the files skipped and why, the decoded
size, and where the decoded images live (the image cache's file, or memory and why).
"""

from __future__ import annotations

import argparse

from trainables.data import SPLITS, ImageData

CLASS_COLUMNS = 12  # wider tables name the first classes and sum the rest


def check_data_text(args: argparse.Namespace) -> str:
    """The report of the dataset the command line names, loaded as ``build_plan`` loads it."""
    from sweep.plan import load_plan_data

    dataset, data = load_plan_data(args)
    return data_report(dataset, data)


def data_report(dataset: str, data: ImageData) -> str:
    total = sum(len(getattr(data, f"{split}_y")) for split in SPLITS)
    decoded = total * data.channels * data.image_size**2
    lines = [
        f"dataset {dataset}: {data.num_classes} classes, {total} images decoded at "
        f"{data.image_size} px, {data.channels} channels: {_size(decoded)}",
        *_count_table(data),
    ]
    uncached = [note for note in data.notes if ": uncached: " in note]
    lines += [note for note in data.notes if note not in uncached]
    if data.backing is not None:
        lines.append(f"image cache: {data.backing.path}")
    elif uncached:
        lines += uncached
    else:
        lines.append("in memory: not decoded from image files, nothing to cache")
    return "\n".join(lines)


def _count_table(data: ImageData) -> list[str]:
    classes = list(data.classes[:CLASS_COLUMNS])
    rest = data.num_classes - len(classes)
    names = [*classes, f"+{rest} more"] if rest > 0 else classes
    width = max(6, *(len(name) + 1 for name in names))
    rows = [f"{'split':<6}" + "".join(f"{name:>{width}}" for name in names) + f"{'total':>8}"]
    for split in SPLITS:
        counts = data.class_counts(split)
        shown = [*counts[:CLASS_COLUMNS], *([counts[CLASS_COLUMNS:].sum()] if rest > 0 else [])]
        cells = "".join(f"{int(c):>{width}}" for c in shown)
        rows.append(f"{split:<6}{cells}{len(getattr(data, f'{split}_y')):>8}")
    return rows


def _size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"
