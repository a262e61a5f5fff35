"""Batched augmentation against torchvision's per-image functions, which stay the reference."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from trainables import augment
from trainables.augment import (
    BRIGHTNESS,
    CONTRAST,
    SATURATION,
    AugmentDraw,
    augment_batch,
    color_jitter,
    crop_and_flip,
    draw,
)
from trainables.config import TrialConfig
from trainables.data import DataOptions, load_dataset
from trainables.engine import build_training_state, fit, make_augment

TORCHVISION_OPS = {
    BRIGHTNESS: TF.adjust_brightness,
    CONTRAST: TF.adjust_contrast,
    SATURATION: TF.adjust_saturation,
}


def _images(n: int, channels: int, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, h, w), dtype=torch.uint8, generator=g)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_shape_and_dtype_are_kept(channels, dtype):
    images = _images(10, channels, 9, 9)
    if dtype.is_floating_point:
        images = images.to(dtype) / 255
    out = make_augment(9, generator=_seeded(0))(images)
    assert out.shape == images.shape and out.dtype == dtype
    if dtype.is_floating_point:
        assert out.min() >= 0 and out.max() <= 1


def test_identical_images_are_augmented_independently():
    batch = _images(1, 3).expand(64, -1, -1, -1).contiguous()
    out = make_augment(12, generator=_seeded(0))(batch)
    distinct = {tuple(image.flatten().tolist()) for image in out}
    assert len(distinct) == 64


def test_about_half_the_images_are_flipped():
    images = _images(1000, 1, 4, 4)
    choices = draw(1000, pad=1, generator=_seeded(0))
    centre = torch.ones(1000, dtype=torch.long)  # offset == pad: the crop is the image itself
    out = crop_and_flip(images, centre, centre, choices.flip, pad=1)
    flipped = (out == images.flip(-1)).flatten(1).all(dim=1)
    kept = (out == images).flatten(1).all(dim=1)
    assert torch.equal(flipped, choices.flip) and torch.equal(kept, ~choices.flip)
    assert 430 <= int(flipped.sum()) <= 570  # binomial(1000, 0.5): 4.4 standard deviations


@pytest.mark.parametrize(("h", "w", "pad"), [(12, 12, 1), (12, 12, 3), (6, 9, 2)])
def test_the_crop_is_a_window_of_the_reflect_padded_image(h, w, pad):
    images = _images(32, 3, h, w)
    choices = draw(32, pad, generator=_seeded(1))
    out = crop_and_flip(images, choices.top, choices.left, choices.flip, pad)
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    for i in range(32):
        top, left = int(choices.top[i]), int(choices.left[i])
        window = padded[i, :, top : top + h, left : left + w]
        expected = window.flip(-1) if choices.flip[i] else window
        assert torch.equal(out[i], expected), f"image {i}"


def test_crop_offsets_cover_the_whole_padding():
    choices = draw(2000, pad=2, generator=_seeded(0))
    for offsets in (choices.top, choices.left):
        assert torch.bincount(offsets, minlength=5).min() > 300  # 0..4, 400 each expected


def _torchvision_jitter(image: torch.Tensor, factors: torch.Tensor, order: torch.Tensor):
    for op in order.tolist():
        image = TORCHVISION_OPS[op](image, float(factors[op]))
    return image


def assert_uint8_close(out: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal but for a rare grey level where float rounding lands a value on the other side of
    an integer (truncated to uint8); a wrong formula or a missed floor changes far more."""
    diff = (out.float() - expected.float()).abs()
    assert diff.max() <= 1
    assert (diff > 0).float().mean() <= 1e-3


@pytest.mark.parametrize("channels", [1, 3])
def test_jitter_on_uint8_matches_torchvision_image_by_image(channels):
    images = _images(48, channels)
    choices = draw(48, pad=1, generator=_seeded(2))
    centre, unflipped = torch.ones(48, dtype=torch.long), torch.zeros(48, dtype=torch.bool)
    still = dataclasses.replace(choices, top=centre, left=centre, flip=unflipped)
    out = augment_batch(images, still, pad=1)
    expected = [
        _torchvision_jitter(images[i], choices.factors[i], choices.order[i]) for i in range(48)
    ]
    assert out.dtype == torch.uint8
    assert_uint8_close(out, torch.stack(expected))


@pytest.mark.parametrize("channels", [1, 3])
def test_jitter_on_floats_matches_torchvision_image_by_image(channels):
    images = _images(48, channels).float() / 255
    choices = draw(48, pad=1, generator=_seeded(3))
    out = color_jitter(images, choices.factors, choices.order, integral=False)
    for i in range(48):
        expected = _torchvision_jitter(images[i], choices.factors[i], choices.order[i])
        torch.testing.assert_close(out[i], expected, atol=1e-6, rtol=0)


def test_each_colour_operation_matches_torchvision_alone():
    images = _images(30, 3)
    factors = torch.linspace(0.8, 1.2, 30)[:, None].expand(30, 3).contiguous()
    for op, reference in TORCHVISION_OPS.items():
        # The op under test first; the others follow with factor 1, which leaves images as they are.
        order = torch.tensor([op] + [o for o in TORCHVISION_OPS if o != op]).expand(30, 3)
        alone = factors.clone()
        alone[:, [o for o in TORCHVISION_OPS if o != op]] = 1.0
        out = color_jitter(images.float(), alone, order, integral=True)
        expected = [reference(images[i], float(factors[i, op])) for i in range(30)]
        assert_uint8_close(out, torch.stack(expected))


def test_draws_cover_torchvisions_ranges_and_orders():
    choices = draw(3000, pad=1, generator=_seeded(0))
    assert choices.factors.min() >= 0.8 and choices.factors.max() <= 1.2
    assert choices.factors.std(dim=0).min() > 0.1  # uniform on 0.4: sd 0.115
    orders = {tuple(row) for row in choices.order.tolist()}
    assert len(orders) == 6


def test_the_same_seed_gives_the_same_augmentation():
    images = _images(16, 3)
    a = make_augment(12, generator=_seeded(5))(images)
    b = make_augment(12, generator=_seeded(5))(images)
    c = make_augment(12, generator=_seeded(6))(images)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_chunks_on_the_cpu_change_nothing(monkeypatch):
    images = _images(10, 3)
    choices = draw(10, pad=2, generator=_seeded(0))
    whole = augment_batch(images, choices, pad=2)
    monkeypatch.setattr(augment, "CPU_CHUNK_BYTES", 3 * images[0].numel() * 4)  # 3 per chunk
    assert torch.equal(augment_batch(images, choices, pad=2), whole)


def test_a_draw_moves_to_a_device_whole():
    choices = draw(4, pad=1, generator=_seeded(0))
    moved = choices.to(torch.device("cpu"))
    assert isinstance(moved, AugmentDraw)
    for field in dataclasses.fields(AugmentDraw):
        assert torch.equal(getattr(moved, field.name), getattr(choices, field.name))


@pytest.fixture(scope="module")
def digits():
    full = load_dataset("digits", DataOptions(split_seed=0))
    return dataclasses.replace(full, train_x=full.train_x[:200], train_y=full.train_y[:200])


def test_a_resumed_trial_draws_the_same_augmentation(digits):
    """The augmentation draws from the checkpointed generator, not torch's global one."""
    cfg = TrialConfig(backbone="smallcnn", lr=0.01, batch_size=16, max_epochs=2, augment=True)
    device = torch.device("cpu")
    straight = [o.metrics for o in fit(cfg, digits, device)]
    first = build_training_state(cfg.replace(max_epochs=1), digits, device)
    list(fit(cfg.replace(max_epochs=1), digits, device, first))
    resumed = build_training_state(cfg, digits, device)
    resumed.load_state_dict(first.state_dict())
    torch.manual_seed(12345)  # a fresh process's global generator is anywhere
    again = [o.metrics for o in fit(cfg, digits, device, resumed)]
    assert again[0]["train_running_loss"] == pytest.approx(
        straight[1]["train_running_loss"], rel=1e-6
    )
