"""The batched augmentation: whole-pixel shifts copy pixels, the affine warp resamples, the
flip mirrors."""

from __future__ import annotations

from dataclasses import replace

import kornia
import kornia.augmentation as K
import pytest
import torch

from bmdbench.config import AugmentConfig
from bmdbench.data.augment import BatchAugment, RandomFlip, shift


def test_a_shift_moves_whole_pixels_and_repeats_the_border():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # by hand: shifted down by 1 and left by 1 (row 0 repeated, column 3 repeated)
    down_left = torch.tensor([[1.0, 2, 3, 3], [1, 2, 3, 3], [5, 6, 7, 7], [9, 10, 11, 11]])
    candidates = {}
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            rows = (torch.arange(4) - dy).clamp(0, 3)
            cols = (torch.arange(4) - dx).clamp(0, 3)
            candidates[(dy, dx)] = x[0, 0][rows][:, cols]
    assert torch.equal(candidates[(1, -1)], down_left)
    torch.manual_seed(0)
    seen = set()
    for _ in range(60):
        y = shift(x, 0.25)[0, 0]  # up to one pixel per axis
        match = [k for k, v in candidates.items() if torch.equal(y, v)]
        assert len(match) == 1
        seen.add(match[0])
    assert seen == set(candidates)  # every shift of ±1 pixel occurs


def test_shift_geometry_keeps_every_pixel_value_of_the_image():
    torch.manual_seed(1)
    x = torch.rand(8, 1, 32, 32)
    cfg = AugmentConfig(geometry="shift", brightness=0.0, contrast=0.0, hflip=0.0)
    y = BatchAugment(cfg)(x)
    affine = BatchAugment(AugmentConfig(brightness=0.0, contrast=0.0, hflip=0.0))(x)

    def distance_to_nearest_input_value(out: torch.Tensor, image: torch.Tensor) -> float:
        return float((out.flatten()[:, None] - image.flatten()[None, :]).abs().min(1)[0].max())

    for image, out in zip(x, y, strict=True):  # float rounding of (x − mean) + mean aside
        assert distance_to_nearest_input_value(out, image) < 1e-6
    assert distance_to_nearest_input_value(affine[0], x[0]) > 1e-3  # resampled


def test_shifts_differ_between_the_images_of_a_batch():
    torch.manual_seed(2)
    x = torch.rand(1, 1, 32, 32).expand(16, 1, 32, 32)
    y = shift(x, 0.1)
    assert len({tuple(img.flatten()[:40].tolist()) for img in y}) > 1


def test_a_shifted_batch_has_the_standard_layout():
    x = torch.rand(4, 1, 8, 8)
    # a view whose strides also read as channels_last made CPU convolutions 20 % slower
    assert shift(x, 0.25).stride() == x.stride()


def test_the_flip_mirrors_the_images_whose_number_falls_below_p():
    x = torch.rand(64, 1, 8, 8)
    torch.manual_seed(3)
    flipped = torch.rand(64) < 0.3
    torch.manual_seed(3)
    y = RandomFlip(0.3)(x)
    assert torch.equal(y[flipped], x[flipped].flip(-1))
    assert torch.equal(y[~flipped], x[~flipped])
    assert torch.equal(RandomFlip(0.0)(x), x) and torch.equal(RandomFlip(1.0)(x), x.flip(-1))


@pytest.mark.skipif(not kornia.__version__.startswith("0.9"), reason="kornia 0.9's draws")
def test_the_flip_draws_and_flips_as_kornias_did():
    # runs published before the flip moved here used kornia's RandomHorizontalFlip
    for p in (0.5, 0.3, 1.0, 0.0):
        x = torch.rand(16, 1, 8, 8)
        torch.manual_seed(0)
        theirs, after_theirs = K.RandomHorizontalFlip(p=p)(x), torch.rand(3)
        torch.manual_seed(0)
        ours, after_ours = RandomFlip(p)(x), torch.rand(3)
        assert torch.equal(ours, theirs) and torch.equal(after_ours, after_theirs)


@pytest.mark.parametrize(
    ("brightness", "contrast"), [(0.0, 0.0), (0.1, 0.0), (0.0, 0.2), (0.1, 0.2)]
)
def test_brightness_and_contrast_draw_and_compute_as_written_out(brightness, contrast):
    # a zero range leaves its arithmetic out: the same bits, the same later random numbers
    cfg = AugmentConfig(geometry="shift", translate=0.0, hflip=0.0)
    cfg = replace(cfg, brightness=brightness, contrast=contrast)
    x = torch.rand(8, 1, 16, 16)
    torch.manual_seed(0)
    ours, after_ours = BatchAugment(cfg)(x), torch.rand(3)
    torch.manual_seed(0)
    offset = (torch.rand(8, 1, 1, 1) * 2 - 1) * brightness
    factor = 1 + (torch.rand(8, 1, 1, 1) * 2 - 1) * contrast
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    written_out, after = (x - mean) * factor + mean + offset, torch.rand(3)
    assert torch.equal(ours, written_out) and torch.equal(after_ours, after)
