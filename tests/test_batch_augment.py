"""Batch augmentation on the training device (fgbench.data.transforms.BatchColour, BatchAugment,
split_augment): the batch colour part against torchvision v2 applied image by image with the same
drawn parameters, the split halves' types and shapes, and the seeding."""

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from fgbench.data.transforms import (AUGMENTS, BatchAugment, BatchColour, ImageDataset, batch_seed,
                                     split_augment)

OPS = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]


def torchvision_one(colour: BatchColour, image, p, kernel):
    """One image through torchvision's functional ops with the parameters row ``p``, in the
    order ColorJitter, RandomGrayscale, GaussianBlur (MoCo-v2's)."""
    p = p.tolist()
    if p[0]:
        order = sorted(range(4), key=lambda op: p[1 + op])  # the op ranked 0 first
        for op in order:
            if colour.ranges[op] is not None:
                image = OPS[op](image, p[5 + op])
    if p[9]:
        image = TF.rgb_to_grayscale(image, num_output_channels=len(image))  # as RandomGrayscale
    if p[10]:
        image = TF.gaussian_blur(image, [kernel, kernel], [p[11], p[11]])
    return image


@pytest.mark.parametrize("channels", [3, 1])
def test_batch_colour_matches_torchvision_image_by_image(channels):
    colour = BatchColour((0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_kernel=5, blur_p=0.5)
    images = torch.rand(64, channels, 20, 24, generator=torch.Generator().manual_seed(0))
    params = colour.draw(64, torch.Generator().manual_seed(1))
    out = colour.apply(images, params)
    expected = torch.stack([torchvision_one(colour, img, p, 5) for img, p in zip(images, params)])
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)
    assert not torch.equal(out, images)


def test_drawn_parameters_follow_the_probabilities_and_ranges():
    colour = BatchColour((0.4, 0.3, 0.2, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.5, blur_kernel=3)
    p = colour.draw(20_000, torch.Generator().manual_seed(0))
    assert abs(p[:, 0].mean() - 0.8) < 0.01 and abs(p[:, 9].mean() - 0.2) < 0.01 and abs(p[:, 10].mean() - 0.5) < 0.01
    assert torch.equal(p[:, 1:5].sort(1).values, torch.arange(4.0).expand(20_000, 4))  # a permutation each
    orders = {tuple(r) for r in p[:, 1:5].long().tolist()}
    assert len(orders) == 24  # every order of the four ops occurs
    for k, (lo, hi) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.8, 1.2), (-0.1, 0.1)]):
        assert lo <= p[:, 5 + k].min() and p[:, 5 + k].max() <= hi
        assert abs(p[:, 5 + k].mean() - (lo + hi) / 2) < 0.01
    assert 0.1 <= p[:, 11].min() and p[:, 11].max() <= 2.0


def test_a_batch_that_draws_no_operation_is_unchanged():
    colour = BatchColour((0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_kernel=3, blur_p=0.5)
    params = colour.draw(4, torch.Generator().manual_seed(0))
    params[:, [0, 9, 10]] = 0  # jitter, grayscale and blur all off
    images = torch.rand(4, 3, 8, 8)
    assert torch.equal(colour.apply(images, params), images)


def test_zero_strength_skips_the_operation():
    """ColorJitter(0.25, 0.25, 0.25, 0): no hue round trip (vMF's CUB)."""
    colour = BatchColour((0.25, 0.25, 0.25, 0.0))
    assert colour.ranges[3] is None
    images = torch.rand(8, 3, 6, 6)
    params = colour.draw(8, torch.Generator().manual_seed(0))
    expected = torch.stack([torchvision_one(colour, img, p, 0) for img, p in zip(images, params)])
    torch.testing.assert_close(colour.apply(images, params), expected, atol=2e-6, rtol=0)


@pytest.mark.parametrize("name", ["moco_v2", "moco_v2_noblur", "vmf_cub", "vmf_cars"])
def test_split_halves_ship_uint8_crops_and_a_colour_part(name):
    per_image, per_batch = split_augment(name, 32, None)
    image = torch.randint(0, 256, (3, 45, 60), dtype=torch.uint8)
    crop = per_image(image)
    assert crop.dtype == torch.uint8 and crop.shape == (3, 32, 32)
    assert isinstance(per_batch, BatchColour)


@pytest.mark.parametrize("name", sorted(set(AUGMENTS) - {"none", "moco_v2", "moco_v2_noblur", "vmf_cub", "vmf_cars"}))
def test_geometry_only_augmentations_keep_uint8(name):
    per_image, per_batch = split_augment(name, 28, [0.5])
    assert per_batch is None
    crop = per_image(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8))
    assert crop.dtype == torch.uint8 and crop.shape == (1, 28, 28)


def test_uint8_dataset_batch_converts_to_the_float_images_of_the_float_path():
    images = np.random.default_rng(0).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    labels = torch.arange(6)
    raw = ImageDataset(images, labels, None, uint8=True).__getitems__([4, 1, 2])
    assert raw["images"].dtype == torch.uint8
    converted = BatchAugment(None).apply(raw)["images"]
    assert torch.equal(converted, ImageDataset(images, labels, None).__getitems__([4, 1, 2])["images"])


def test_views_draw_independent_parameters_and_seeds_repeat():
    augment = BatchAugment(BatchColour((0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2))
    batch = {"images": torch.full((4, 3, 5, 5), 128, dtype=torch.uint8), "view2": torch.full((4, 3, 5, 5), 128, dtype=torch.uint8)}
    drawn = augment.draw(batch, batch_seed(0, 3, 0, 7))
    assert not torch.equal(drawn["images_colour"], drawn["view2_colour"])
    again = augment.draw(batch, batch_seed(0, 3, 0, 7))
    assert torch.equal(drawn["images_colour"], again["images_colour"])
    assert not torch.equal(drawn["images_colour"], augment.draw(batch, batch_seed(0, 3, 0, 8))["images_colour"])
    out = augment.apply(drawn)
    assert set(out) == {"images", "view2"} and out["images"].dtype == torch.float32
    assert not torch.equal(out["images"], out["view2"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batch_colour_on_cuda_matches_the_cpu():
    colour = BatchColour((0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_kernel=11, blur_p=0.5)
    images = torch.rand(128, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    params = colour.draw(128, torch.Generator().manual_seed(1))
    torch.testing.assert_close(colour.apply(images.cuda(), params).cpu(), colour.apply(images, params), atol=1e-5, rtol=0)
