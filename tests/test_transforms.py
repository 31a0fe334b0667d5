"""Augmentations: the batched random-resized-crop against torchvision's rule, the registry."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.stats import chisquare
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from fgbench.cli import one_line
from fgbench.data.images import ImageFiles

from fgbench.data.transforms import AUGMENTS, EvalImages, ImageDataset, RandomResizedCropFlip, build_augment, eval_batches, seeded_uniforms
from fgbench.errors import ConfigError, DataError
from fgbench.train.loop import learning_rate


def test_full_crop_without_flip_is_the_identity():
    x = torch.rand(6, 3, 20, 20)
    out = RandomResizedCropFlip(20, scale=(1, 1), ratio=(1, 1), flip=False)(x)
    assert torch.allclose(out, x, atol=1e-5)


def test_flip_mirrors_about_half_of_the_images():
    torch.manual_seed(0)
    x = torch.rand(400, 1, 8, 8)
    out = RandomResizedCropFlip(8, scale=(1, 1), ratio=(1, 1))(x)
    same = [torch.allclose(o, i, atol=1e-5) for o, i in zip(out, x)]
    mirrored = [torch.allclose(o, i.flip(-1), atol=1e-5) for o, i in zip(out, x)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 150 < sum(mirrored) < 250


def test_crop_resamples_the_box_bilinearly():
    """A 2x enlargement of the top-left quarter: output pixel centres fall on input coordinates
    (u + 0.5) / 2 - 0.5, so a linear ramp stays a ramp with half the slope."""
    ramp = torch.arange(8.0).repeat(8, 1)[None, None]  # value = column
    crop = RandomResizedCropFlip(8, flip=False)
    crop.boxes = lambda uniforms, h, w: torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    out = crop(ramp)[0, 0, 0]
    expected = torch.clamp((torch.arange(8.0) + 0.5) / 2 - 0.5, 0, 7)
    assert torch.allclose(out, expected, atol=1e-5)


def test_boxes_follow_torchvisions_distribution():
    torch.manual_seed(0)
    ours = RandomResizedCropFlip(28, scale=(0.2, 1.0)).boxes(torch.rand(20000, 22), 28, 28).numpy()
    torch.manual_seed(1)
    theirs = np.array([v2.RandomResizedCrop.get_params(torch.zeros(1, 28, 28), (0.2, 1.0), (3 / 4, 4 / 3)) for _ in range(20000)], float)
    assert np.all(ours[:, 0] + ours[:, 2] <= 28) and np.all(ours[:, 1] + ours[:, 3] <= 28) and np.all(ours >= 0)
    assert np.allclose(ours.mean(0), theirs.mean(0), atol=0.15)
    assert np.allclose(ours.std(0), theirs.std(0), atol=0.15)
    area = ours[:, 2] * ours[:, 3] / 28**2
    assert area.min() >= 0.18 and area.max() <= 1.0


def test_two_view_batches_are_independent_augmentations():
    images = (np.random.default_rng(0).random((16, 28, 28)) * 255).astype(np.uint8)
    data = ImageDataset(images, torch.zeros(16, dtype=torch.long), build_augment("rrc_flip", 28), views=2)
    batch = data.__getitems__(list(range(16)))
    assert batch["images"].shape == batch["view2"].shape == (16, 1, 28, 28)
    assert not torch.allclose(batch["images"], batch["view2"])


@pytest.mark.parametrize("name", sorted(AUGMENTS))
def test_every_augmentation_keeps_the_image_size(name):
    transform = build_augment(name, 32)
    image = torch.rand(3, 32, 32)
    out = image if transform is None else transform(image)
    assert out.shape == (3, 32, 32)


def test_unknown_augmentation_is_named():
    with pytest.raises(ConfigError, match="unknown augmentation 'blurr'.*moco_v2"):
        build_augment("blurr", 28)


def test_cosine_restarts_as_ancor():
    train = {"lr": 0.03, "schedule": "cosine", "cycles": 10, "epochs": 200}
    assert learning_rate(train, 0) == pytest.approx(0.03)
    assert learning_rate(train, 10) == pytest.approx(0.015)
    assert learning_rate(train, 19) == pytest.approx(0.03 * 0.5 * (1 + math.cos(math.pi * 19 / 20)))
    assert learning_rate(train, 20) == pytest.approx(0.03)  # the restart
    assert learning_rate({**train, "schedule": "constant"}, 57) == 0.03


def test_seeded_batch_equals_seeded_single_images():
    """The batched support views equal one-image calls (the path of image files and memmaps):
    a view depends on its seed alone."""
    images = (np.random.default_rng(1).random((6, 28, 28)) * 255).astype(np.uint8)
    images[3] = images[0]
    crop = build_augment("crop_flip", 28)
    seeds = [11, 12, 13, 11, 99, 7]
    batched = next(eval_batches(images, crop, seeds))
    single = torch.stack([EvalImages(images, crop, seeds)[i] for i in range(6)])
    torch.testing.assert_close(batched, single)
    torch.testing.assert_close(batched[0], batched[3])  # same seed and image: same view
    assert not torch.allclose(batched[0], batched[1])


def test_seeded_uniforms_are_uniform_and_reproducible():
    u = seeded_uniforms(np.arange(20000), 23).numpy()
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03  # draws of one seed are not correlated
    assert np.array_equal(seeded_uniforms([5, 7], 23).numpy(), u[[5, 7]])


def test_a_corrupt_image_in_a_worker_is_reported_by_path(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.JPEG")
    (tmp_path / "bad.JPEG").write_bytes(b"not a jpeg at all")
    files = ImageFiles(tmp_path, ["good.JPEG", "bad.JPEG"])
    with pytest.raises(DataError) as err:
        list(DataLoader(EvalImages(files), batch_size=1, num_workers=1))
    message = one_line(err.value)
    assert "\n" not in message and message.startswith(f"image {tmp_path / 'bad.JPEG'} cannot be decoded")


def test_occlusion_rule_of_the_vmf_release():
    """google-research/vmf_embeddings, datasets/utils.py (RandomOcclusion(img_size=32, occ_size=8)):
    an 8x8 square on every image, top and left uniform over 0..24 (randint(0, 32 - 8 + 1)), always
    wholly inside the image, zeroed after normalisation: in raw pixels it holds the mean."""
    from fgbench.data.transforms import RandomOcclusion

    mean = (0.4914, 0.4822, 0.4465)
    occlude = RandomOcclusion(8, fill=mean)
    torch.manual_seed(0)
    image = torch.rand(3, 32, 32) * 0.1 + 0.9  # no pixel near the mean
    corners = []
    for _ in range(2000):
        out = occlude(image)
        changed = (out != image).any(0)
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert changed.sum() == 64 and rows.max() - rows.min() == 7 and cols.max() - cols.min() == 7
        corners.append((rows.min().item(), cols.min().item()))
        normalised = (out[:, changed] - torch.tensor(mean)[:, None]) / torch.tensor((0.247, 0.2435, 0.2616))[:, None]
        assert normalised.abs().max() < 1e-6
    tops, lefts = np.array(corners).T
    assert tops.min() == 0 and tops.max() == 24 and lefts.min() == 0 and lefts.max() == 24
    counts = np.bincount(tops, minlength=25)
    assert chisquare(counts).pvalue > 1e-3  # uniform over the 25 positions
    assert torch.equal(RandomOcclusion(8)(torch.ones(1, 32, 32)).sum(), torch.tensor(1024.0 - 64))  # no mean: 0


def test_vmf_cifar_augmentation_occludes_with_the_dataset_mean():
    """CIFAR-10's default training augmentation is the release's reflect-pad-4 crop, flip and
    occlusion; the training loop passes the dataset's mean as the fill."""
    from fgbench.data import cifar10

    assert cifar10.TRANSFORMS["train"] == "reflect_crop_flip_occlude"
    torch.manual_seed(1)
    out = build_augment("reflect_crop_flip_occlude", 32, cifar10.NORMALIZE[0])(torch.ones(3, 32, 32))
    at_mean = (out == torch.tensor(cifar10.NORMALIZE[0])[:, None, None]).all(0)
    assert at_mean.sum() == 64


@pytest.mark.parametrize("name, resize, squash, jitter, ratio", [
    ("vmf_cub", 256, False, (0.25, 0.25, 0.25, 0.0), (3 / 4, 4 / 3)),
    ("vmf_cars", (256, 256), True, (0.3, 0.3, 0.3, 0.1), (1.0, 1.0)),
    ("vmf_sop", (256, 256), True, None, (3 / 4, 4 / 3)),
])
def test_vmf_retrieval_augmentations_are_the_releases(name, resize, squash, jitter, ratio):
    """google-research/vmf_embeddings, datasets/{cub200,cars196,sop}_dataset.py: Resize(256) for CUB,
    Resize((256, 256)) for Cars and SOP; ColorJitter(0.25, 0.25, 0.25, 0) CUB, (0.3, 0.3, 0.3, 0.1)
    Cars, none SOP; RandomResizedCrop(224, scale (0.16, 1), ratio (3/4, 4/3), Cars (1, 1)); flip.
    The eval transforms: Resize then CenterCrop(224)."""
    steps = build_augment(name, 224).transforms
    assert isinstance(steps[0], v2.Resize) and steps[0].size == ([resize] if isinstance(resize, int) else list(resize))
    if jitter:
        cj = steps[1]
        assert isinstance(cj, v2.ColorJitter) and cj.brightness == (1 - jitter[0], 1 + jitter[0])
        assert cj.contrast == (1 - jitter[1], 1 + jitter[1]) and cj.saturation == (1 - jitter[2], 1 + jitter[2])
        assert cj.hue == ((-jitter[3], jitter[3]) if jitter[3] else None)
    else:
        assert not any(isinstance(t, v2.ColorJitter) for t in steps)
    crop = steps[-2]
    assert isinstance(crop, v2.RandomResizedCrop) and tuple(crop.size) == (224, 224) and crop.antialias
    assert crop.scale == (0.16, 1.0) and crop.ratio == pytest.approx(ratio)
    assert isinstance(steps[-1], v2.RandomHorizontalFlip)
    image = torch.rand(3, 300, 400)
    assert build_augment(name, 224)(image).shape == (3, 224, 224)
    eval_name = "squash_center_crop" if squash else "resize_center_crop"
    expected = v2.CenterCrop(224)(v2.Resize(resize, antialias=True)(image))
    torch.testing.assert_close(build_augment(eval_name, 224)(image), expected)


def _stripes(height=375, width=500):
    """A vertical pattern of period 2 pixels (the finest detail an image holds), RGB."""
    return (torch.arange(width) % 2).float().expand(3, height, width).clone()


def test_large_image_crop_equals_torchvisions_antialiased_crop():
    """For a full-resolution image, the same box gives torchvision's
    v2 RandomResizedCrop(antialias=True) pixels: resized_crop with antialiasing, then the flip."""
    crop = RandomResizedCropFlip(224, scale=(0.08, 1.0))
    image = torch.rand(3, 375, 500)
    image[:, :, ::3] = _stripes()[:, :, ::3]
    seeds = list(range(40))
    uniforms = seeded_uniforms(seeds, 23)
    boxes = crop.boxes(uniforms, 375, 500).long().tolist()
    out = crop(image.expand(40, 3, 375, 500), seeds=seeds)
    for i, (top, left, h, w) in enumerate(boxes):
        expected = v2.functional.resized_crop(image, top, left, h, w, [224, 224], antialias=True)
        expected = expected.flip(-1) if uniforms[i, 22] < 0.5 else expected
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_large_image_crop_does_not_alias():
    """Shrinking stripes of period 2 (500 -> 224 wide) must give a flat grey, as PIL and torchvision
    do; unfiltered bilinear sampling (the batched path) turns them into a beat pattern."""
    crop = RandomResizedCropFlip(224, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), flip=False)
    image = _stripes()[None]
    out = crop(image)
    reference = v2.RandomResizedCrop(224, scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), antialias=True)(image[0])
    assert (out - 0.5).abs().max() < 0.1 and (reference - 0.5).abs().max() < 0.1
    aliased = crop.resample_batch(image, torch.tensor([[0.0, 0.0, 375.0, 500.0]]), torch.tensor([False]))
    assert (aliased - 0.5).abs().max() > 0.3


def test_small_images_keep_the_batched_crop():
    """28x28 and 32x32 images (every crop enlarged) take the one-call bilinear path, unchanged."""
    crop = RandomResizedCropFlip(28, scale=(0.2, 1.0))
    x = torch.rand(16, 1, 28, 28)
    seeds = list(range(16))
    boxes = crop.boxes(seeded_uniforms(seeds, 23), 28, 28)
    flip = seeded_uniforms(seeds, 23)[:, 22] < 0.5
    torch.testing.assert_close(crop(x, seeds=seeds), crop.resample_batch(x, boxes, flip), rtol=0, atol=0)


def test_large_image_views_depend_on_their_seed_alone():
    crop = RandomResizedCropFlip(64, scale=(0.08, 1.0))
    images = torch.rand(5, 3, 120, 150)
    batch = crop(images, seeds=[7, 8, 9, 10, 11])
    for i in range(5):
        torch.testing.assert_close(crop(images[i], seeds=[7 + i]), batch[i], rtol=0, atol=0)
