"""Training augmentation on whole batches: random crop of a reflect-padded image, horizontal
flip and colour jitter, every image drawn independently.

The distribution is torchvision's ``RandomCrop(size, padding, padding_mode="reflect")``,
``RandomHorizontalFlip()`` and ``ColorJitter(0.2, 0.2, 0.2)`` applied image by image (colour
operations in a random order per image, uint8 arithmetic as its kernels do it), but a batch
costs a few tensor operations on its own device instead of a Python loop over its images.
The random draws are made on the CPU, so one seed gives the same augmentation on any device.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2  # columns of AugmentDraw.factors
JITTER = 0.2  # each factor is uniform in [1 - JITTER, 1 + JITTER]
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
CPU_CHUNK_BYTES = 512 * 1024  # float32 images per chunk on the CPU: see augment_batch


@dataclass(frozen=True)
class AugmentDraw:
    """The random choices for one batch, one row per image."""

    top: torch.Tensor  # (B,) int64: the crop's offset in the padded image, 0..2*pad
    left: torch.Tensor
    flip: torch.Tensor  # (B,) bool
    factors: torch.Tensor  # (B, 3) float32: brightness, contrast, saturation
    order: torch.Tensor  # (B, 3) int64: the colour operations' order, a permutation of 0, 1, 2

    def to(self, device: torch.device) -> AugmentDraw:
        return AugmentDraw(*(getattr(self, f.name).to(device) for f in fields(self)))

    def __getitem__(self, rows: slice) -> AugmentDraw:
        return AugmentDraw(*(getattr(self, f.name)[rows] for f in fields(self)))


def draw(batch: int, pad: int, generator: torch.Generator | None = None) -> AugmentDraw:
    """Independent choices for ``batch`` images from ``generator`` (a CPU one; None: torch's
    global generator)."""
    offsets = torch.randint(0, 2 * pad + 1, (2, batch), generator=generator)
    flip = torch.rand(batch, generator=generator) < 0.5
    factors = torch.empty(batch, 3).uniform_(1 - JITTER, 1 + JITTER, generator=generator)
    order = torch.rand(batch, 3, generator=generator).argsort(dim=1)
    return AugmentDraw(offsets[0], offsets[1], flip, factors, order)


def crop_and_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, pad: int
) -> torch.Tensor:
    """Each image's window at (``top``, ``left``) of itself reflect-padded by ``pad``, mirrored
    where ``flip``: one gather from the unpadded batch, whose index does the reflection."""
    b, c, h, w = images.shape
    device = images.device
    rows = _reflect(top[:, None] - pad + torch.arange(h, device=device), h)  # (B, H)
    across = torch.arange(w, device=device).expand(b, w)
    across = torch.where(flip[:, None], w - 1 - across, across)
    cols = _reflect(left[:, None] - pad + across, w)  # (B, W)
    index = (rows[:, :, None] * w + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return images.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Positions outside 0..size-1 mirrored back in, edge not repeated (``mode="reflect"``)."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def color_jitter(
    images: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, *, integral: bool
) -> torch.Tensor:
    """Brightness, contrast and saturation, per image with its own factors and order.

    ``images`` are floats in 0..255 when ``integral`` (uint8 images: like torchvision's kernels,
    the grey image is floored and each step's result truncated) and in 0..1 otherwise. Every
    operation blends the image with a reference (black, its grey mean, its grey image), so a step
    is one blend whose reference and factor are picked per image.
    """
    bound = 255.0 if integral else 1.0
    rows = torch.arange(len(images), device=images.device)
    x = images
    for step in range(order.shape[1]):
        op = order[:, step]
        factor = factors[rows, op]
        if x.shape[1] == 1:  # saturation leaves a grey image as it is
            factor = torch.where(op == SATURATION, 1.0, factor)
        factor = factor.view(-1, 1, 1, 1).to(x.dtype)
        reference = _reference(x, op, integral=integral)
        # The first step writes into a copy (``images`` are the caller's), the others in place.
        x = x.mul(factor) if x is images else x.mul_(factor)
        # One rounding for the reference's share, as torchvision's add_(alpha=) does.
        x.addcmul_(reference, 1 - factor).clamp_(0, bound)
        if integral:
            x.floor_()
    return x


def _reference(images: torch.Tensor, op: torch.Tensor, *, integral: bool) -> torch.Tensor:
    """What each image is blended with: black (brightness), the mean of its grey image
    (contrast) or, with 3 channels, its grey image (saturation)."""
    grey = _grey(images, floor=integral)
    op = op.view(-1, 1, 1, 1)
    reference = grey.mean(dim=(1, 2, 3), keepdim=True) * (op == CONTRAST)
    if images.shape[1] == 1:
        return reference
    return grey.mul_(op == SATURATION).add_(reference)


def _grey(images: torch.Tensor, *, floor: bool) -> torch.Tensor:
    """torchvision's grey image, in its order of operations; one channel is its own grey."""
    channels = images.shape[1]
    if channels == 1:
        return images
    if channels != 3:
        raise ValueError(f"colour jitter needs 1 or 3 channels, got {channels}")
    r, g, b = images.unbind(dim=1)
    w = GREY_WEIGHTS
    grey = r.mul(w[0]).add_(g, alpha=w[1]).add_(b, alpha=w[2]).unsqueeze(1)
    return grey.floor_() if floor else grey


def augment_batch(images: torch.Tensor, choices: AugmentDraw, pad: int) -> torch.Tensor:
    """Crop, flip, then colour jitter; uint8 in, uint8 out; floats (0..1) keep their dtype.

    On the CPU the batch goes in chunks whose float copy stays in a core's cache: the colour
    steps pass over it a dozen times, and from main memory large images would run slower
    than torchvision's image-by-image loop."""
    step = len(images)
    if images.device.type == "cpu":
        step = max(1, CPU_CHUNK_BYTES // (images[0].numel() * 4))
    if step >= len(images):
        return _augment(images, choices, pad)
    out = torch.empty_like(images)
    for start in range(0, len(images), step):
        rows = slice(start, start + step)
        out[rows] = _augment(images[rows], choices[rows], pad)
    return out


def _augment(images: torch.Tensor, choices: AugmentDraw, pad: int) -> torch.Tensor:
    x = crop_and_flip(images, choices.top, choices.left, choices.flip, pad)
    integral = not x.is_floating_point()
    x = color_jitter(
        x.float() if integral else x, choices.factors, choices.order, integral=integral
    )
    return x.to(images.dtype)


class BatchAugment(nn.Module):
    """Moves a batch to ``device`` (None: where it is) and augments it there."""

    def __init__(
        self,
        pad: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | None = None,
    ):
        super().__init__()
        self.pad = pad
        self.generator = generator
        self.device = device

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device is not None:
            batch = batch.to(self.device, non_blocking=True)
        choices = draw(len(batch), self.pad, self.generator).to(batch.device)
        return augment_batch(batch, choices, self.pad)
