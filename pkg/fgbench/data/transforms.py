"""Image tensors, augmentations (torchvision transforms v2) and the datasets the loops read.

Images reach the network as float (C, H, W) in [0, 1]; per-dataset mean/std normalisation is
the model's first layer (``fgbench.models.Normalize``), so augmentations such as colour jitter
see raw pixels and a saved model carries its own normalisation.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .images import is_in_memory


def seeded_uniforms(seeds, count: int) -> torch.Tensor:
    """(len(seeds), count) uniforms in [0, 1): draw k of seed s is splitmix64(s * 2^8 + k), a
    counter-based generator, so every image's draws are computed at once."""
    z = (np.asarray(seeds, dtype=np.uint64)[:, None] << np.uint64(8)) + np.arange(count, dtype=np.uint64)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) / 2.0**53).float()


class RandomResizedCropFlip(torch.nn.Module):
    """torchvision's RandomResizedCrop followed by a random horizontal flip, with per-image
    parameters, for one image (C, H, W) or a whole batch (B, C, H, W) at once.

    The crop box is drawn exactly as torchvision draws it (10 tries of area fraction and
    log-uniform aspect ratio, else the centre crop clamped to ``ratio``). Images no larger than
    the output (28x28, 32x32: every crop is enlarged) are resampled all at once in one bilinear
    ``grid_sample``: applied per image, torchvision costs about 60 us per 28x28 image, which
    dominated two-view training on Fashion-MNIST. Larger images (CUB, Cars, SOP, ImageNet files),
    whose crops are mostly shrunk, are resized crop by crop with torch's antialiased bilinear
    interpolation, as torchvision's ``RandomResizedCrop(antialias=True)`` and PIL do: an
    unfiltered shrink aliases fine detail, and the eval resize is antialiased.

    Without ``seeds`` the parameters come from the global torch RNG (training, seeded per
    epoch); with ``seeds`` (one per image) from a hash of each image's seed, so a support view
    depends on its seed alone, whether drawn in a batch or alone.
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip: bool = True):
        super().__init__()
        self.size, self.scale, self.ratio, self.flip = size, scale, ratio, flip

    def boxes(self, uniforms: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, 4) crop boxes (top, left, h, w) in pixels from (B, 22) uniforms in [0, 1)."""
        batch, area = len(uniforms), height * width
        lo, hi = self.scale
        target = area * (lo + (hi - lo) * uniforms[:, :10])
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * uniforms[:, 10:20])
        w = torch.sqrt(target * aspect).round()
        h = torch.sqrt(target / aspect).round()
        ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
        first = ok.int().argmax(1)
        rows = torch.arange(batch)
        w, h = w[rows, first], h[rows, first]
        # fallback of torchvision: the whole image, cut to the ratio range
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            fw, fh = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            fw, fh = round(height * self.ratio[1]), height
        else:
            fw, fh = width, height
        found = ok.any(1)
        w = torch.where(found, w, torch.full_like(w, fw))
        h = torch.where(found, h, torch.full_like(h, fh))
        top = torch.where(found, torch.floor(uniforms[:, 20] * (height - h + 1)), (height - h) // 2)
        left = torch.where(found, torch.floor(uniforms[:, 21] * (width - w + 1)), (width - w) // 2)
        return torch.stack([top, left, h, w], dim=1)

    def forward(self, images: torch.Tensor, seeds=None) -> torch.Tensor:
        single = images.ndim == 3
        x = images[None] if single else images
        b, c, height, width = x.shape
        uniforms = torch.rand(b, 23) if seeds is None else seeded_uniforms(seeds, 23)
        boxes = self.boxes(uniforms, height, width)
        flip = (uniforms[:, 22] < 0.5) & self.flip
        if max(height, width) > self.size:
            out = self.resize_each(x, boxes, flip)
        else:
            out = self.resample_batch(x, boxes, flip)
        out = as_dtype_of(out, images)
        return out[0] if single else out

    def resize_each(self, x, boxes, flip):
        """Each crop (B, C, H, W) resized with antialiasing (torchvision's resized_crop on tensors)."""
        out = []
        for image, (top, left, h, w), mirror in zip(x, boxes.long().tolist(), flip.tolist()):
            crop = F.interpolate(image[None, :, top : top + h, left : left + w].float(), size=(self.size, self.size),
                                 mode="bilinear", align_corners=False, antialias=True)
            out.append(crop.flip(-1) if mirror else crop)
        return torch.cat(out)

    def resample_batch(self, x, boxes, flip):
        """All crops (B, C, H, W) at once by bilinear sampling, no antialiasing (for enlargements)."""
        b, c, height, width = x.shape
        top, left, h, w = boxes.unbind(1)
        sx, sy = torch.where(flip, -w, w) / width, h / height
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0], theta[:, 1, 1] = sx, sy
        theta[:, 0, 2] = (left + w / 2) / width * 2 - 1
        theta[:, 1, 2] = (top + h / 2) / height * 2 - 1
        grid = F.affine_grid(theta.to(x.device), (b, c, self.size, self.size), align_corners=False)
        return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def as_dtype_of(out: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Float pixels ``out`` back in the dtype of ``images`` (uint8: rounded, as PIL stores them)."""
    if images.dtype != torch.uint8:
        return out
    return out.round_().clamp_(0, 255).to(torch.uint8)


# MoCo-v2's colour part, read by the per-image pipeline (_moco_v2) and the batch one (_moco_v2_split)
MOCO_V2_JITTER, MOCO_V2_JITTER_P, MOCO_V2_GRAY_P = (0.4, 0.4, 0.4, 0.1), 0.8, 0.2
MOCO_V2_BLUR_P, MOCO_V2_BLUR_SIGMA = 0.5, (0.1, 2.0)


def _moco_v2_blur_kernel(size: int) -> int:
    """About a tenth of the image, as in SimCLR (MoCo's PIL blur has no kernel size)."""
    return 2 * (size // 20) + 1


def _moco_v2(v2, size, blur=True):
    """MoCo-v2's augmentation as ANCOR/SCGM use it for BREEDS (tieredImageNet: no blur)."""
    steps = [
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomApply([v2.ColorJitter(*MOCO_V2_JITTER)], p=MOCO_V2_JITTER_P),
        v2.RandomGrayscale(p=MOCO_V2_GRAY_P),
    ]
    if blur:
        steps.append(v2.RandomApply([v2.GaussianBlur(_moco_v2_blur_kernel(size), sigma=MOCO_V2_BLUR_SIGMA)],
                                    p=MOCO_V2_BLUR_P))
    return v2.Compose([*steps, v2.RandomHorizontalFlip()])


def _reflect_crop_flip(v2, size):
    """vMF's CIFAR crop: RandomCrop(32, padding 4, reflect) and a horizontal flip."""
    return v2.Compose([v2.RandomCrop(size, padding=size // 8, padding_mode="reflect"), v2.RandomHorizontalFlip()])


class RandomOcclusion(torch.nn.Module):
    """vMF's CIFAR occlusion (``datasets/utils.py``, ``RandomOcclusion``): a ``size`` x ``size``
    square at a uniformly drawn position that lies wholly inside the image (top and left in
    0..H - size, no clipping), on every image. The release zeroes it after normalisation, so in
    raw pixels it is filled with the dataset's mean (``fill``, per channel; None: 0)."""

    def __init__(self, size: int, fill=None):
        super().__init__()
        self.size, self.fill = size, fill

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        _, height, width = image.shape
        left = int(torch.randint(0, width - self.size + 1, ()))
        top = int(torch.randint(0, height - self.size + 1, ()))
        out = image.clone()
        fill = torch.as_tensor(0.0 if self.fill is None else self.fill)
        fill = (fill * 255).round() if image.dtype == torch.uint8 else fill  # mean is in [0, 1]
        fill = fill.to(image.dtype)
        out[:, top : top + self.size, left : left + self.size] = fill.reshape(-1, 1, 1)
        return out


def _resize_size(size):
    return round(size * 256 / 224)  # ImageNet's Resize(256) before a 224 crop


def _squash(v2, size):
    """Resize to a square of 256 (for 224 crops), aspect ratio not kept: vMF's Cars and SOP."""
    return v2.Resize((_resize_size(size),) * 2, antialias=True)


# vMF's retrieval runs: CUB resize 256, jitter 0.25; Cars squash, jitter 0.3 (hue 0.1), square
# crops; SOP squash, no jitter. Read by the per-image (_vmf_retrieval) and split (_vmf_split) forms.
VMF_RETRIEVAL = {
    "vmf_cub": {"squash": False, "jitter": (0.25, 0.25, 0.25, 0.0), "ratio": (3 / 4, 4 / 3)},
    "vmf_cars": {"squash": True, "jitter": (0.3, 0.3, 0.3, 0.1), "ratio": (1.0, 1.0)},
    "vmf_sop": {"squash": True, "jitter": None, "ratio": (3 / 4, 4 / 3)},
}
VMF_CROP_SCALE = (0.16, 1.0)


def _vmf_resize(v2, size, squash):
    return _squash(v2, size) if squash else v2.Resize(_resize_size(size), antialias=True)


def _vmf_retrieval(v2, size, *, squash, jitter, ratio):
    """vMF's retrieval training (datasets/{cub200,cars196,sop}_dataset.py): resize to 256 (shorter
    side, or squashed), colour jitter, RandomResizedCrop(224, scale 0.16-1, ``ratio``), flip."""
    resize = _vmf_resize(v2, size, squash)
    steps = [resize, v2.ColorJitter(*jitter)] if jitter else [resize]
    return v2.Compose([*steps, v2.RandomResizedCrop(size, scale=VMF_CROP_SCALE, ratio=ratio, antialias=True),
                       v2.RandomHorizontalFlip()])


# name -> builder(v2, image_size, mean): the training augmentations, few-shot support views and
# eval transforms; mean is the dataset's per-channel mean (None: not normalised), the raw pixel
# value that normalisation maps to 0. v2 is torchvision.transforms.v2, imported only when a transform is built: the config
# check in the Snakemake process needs the names alone, and torchvision takes a second to import.
AUGMENTS = {
    "none": lambda v2, size, mean: None,
    # Mild crop and flip for 28x28 images (few-shot support views on Fashion-MNIST).
    "crop_flip": lambda v2, size, mean: RandomResizedCropFlip(size, scale=(0.7, 1.0)),
    # ANCOR's CIFAR pretraining: RandomResizedCrop(scale 0.2-1) and flip only.
    "rrc_flip": lambda v2, size, mean: RandomResizedCropFlip(size, scale=(0.2, 1.0)),
    # RevDML's training augmentation: torchvision's default scale (0.08-1) and flip.
    "random_resized_crop_flip": lambda v2, size, mean: RandomResizedCropFlip(size, scale=(0.08, 1.0)),
    # STML's training views (its dataset/utils.py): RandomResizedCrop(scale 0.16-1) and flip.
    "stml_crop_flip": lambda v2, size, mean: RandomResizedCropFlip(size, scale=(0.16, 1.0)),
    "flip": lambda v2, size, mean: v2.RandomHorizontalFlip(),  # CIFAR support views (RandomCrop(32) is a no-op)
    "moco_v2": lambda v2, size, mean: _moco_v2(v2, size),
    "moco_v2_noblur": lambda v2, size, mean: _moco_v2(v2, size, blur=False),
    "pad_crop_flip": lambda v2, size, mean: v2.Compose([v2.RandomCrop(size, padding=size // 10), v2.RandomHorizontalFlip()]),
    "reflect_crop_flip": lambda v2, size, mean: _reflect_crop_flip(v2, size),
    # vMF's CIFAR training: RandomCrop(32, padding 4, reflect), flip and an 8x8 occlusion.
    "reflect_crop_flip_occlude": lambda v2, size, mean: v2.Compose([
        _reflect_crop_flip(v2, size), RandomOcclusion(size // 4, fill=mean)]),
    # vMF's retrieval runs (VMF_RETRIEVAL). Their eval: resize_center_crop (CUB), squash_center_crop.
    "vmf_cub": lambda v2, size, mean: _vmf_retrieval(v2, size, **VMF_RETRIEVAL["vmf_cub"]),
    "vmf_cars": lambda v2, size, mean: _vmf_retrieval(v2, size, **VMF_RETRIEVAL["vmf_cars"]),
    "vmf_sop": lambda v2, size, mean: _vmf_retrieval(v2, size, **VMF_RETRIEVAL["vmf_sop"]),
    "squash_center_crop": lambda v2, size, mean: v2.Compose([_squash(v2, size), v2.CenterCrop(size)]),
    "squash_random_crop_flip": lambda v2, size, mean: v2.Compose([
        _squash(v2, size), v2.RandomCrop(size), v2.RandomHorizontalFlip()]),
    "resize_center_crop": lambda v2, size, mean: v2.Compose([v2.Resize(_resize_size(size), antialias=True), v2.CenterCrop(size)]),
    "resize_random_crop_flip": lambda v2, size, mean: v2.Compose([
        v2.Resize(_resize_size(size), antialias=True), v2.RandomCrop(size), v2.RandomHorizontalFlip()]),
}


def build_augment(name: str, image_size: int, mean=None):
    """The transform ``name`` (see AUGMENTS) for square images of ``image_size``; None for none.
    ``mean``: the dataset's per-channel mean (``NORMALIZE[0]``), the fill of an occlusion."""
    if name not in AUGMENTS:
        raise ConfigError(f"unknown augmentation '{name}'; valid: {', '.join(AUGMENTS)}")
    from torchvision.transforms import v2

    return AUGMENTS[name](v2, image_size, mean)


# --- batch augmentation on the training device ------------------------------------------------
# A training augmentation splits into a per-image part (crop, resize, flip: geometry, in DataLoader
# workers on uint8) and a batch part (colour jitter, grayscale, blur: pixel-wise or a small
# convolution, on the whole batch on the training device, with per-image parameters). Moving the
# flip ahead of the colour ops is exact (they commute with a mirror); see docs/deviations.md for
# what is not.

# parameter columns of one image: jitter on, the order of the four jitter ops (a rank per op),
# brightness, contrast, saturation and hue factors, grayscale on, blur on, blur sigma
_ON, _ORDER, _FACTORS, _GRAY, _BLUR, _SIGMA = 0, slice(1, 5), slice(5, 9), 9, 10, 11
_PARAMS = 12


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma of RGB (B, 3, H, W) as (B, 1, H, W), torchvision's rgb_to_grayscale."""
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x, other, factor):
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def _adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue with one factor per image (its own batched HSV conversions)."""
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

    h, s, v = _rgb_to_hsv(x).unbind(1)
    return _hsv_to_rgb(torch.stack([(h + factor[:, None, None]).remainder_(1.0), s, v], 1))


class BatchColour:
    """The colour part of a training augmentation, on a float batch (B, C, H, W) in [0, 1] on
    any device: ``RandomApply(ColorJitter(b, c, s, h), p=jitter_p)``, ``RandomGrayscale(gray_p)``
    and ``RandomApply(GaussianBlur(blur_kernel, sigma), p=blur_p)`` with torchvision v2's
    semantics, every image drawing its own parameters (and its own order of the four jitter
    operations, as ColorJitter draws a permutation per call).

    ``draw(n, generator)`` draws the (n, 12) parameters on the CPU (the same numbers on any
    device); ``apply(images, params)`` applies them on the images' device.
    """

    def __init__(self, jitter=(0.0, 0.0, 0.0, 0.0), jitter_p=1.0, gray_p=0.0, blur_kernel=0, blur_p=0.0,
                 blur_sigma=(0.1, 2.0)):
        b, c, s, h = jitter
        # torchvision's ColorJitter ranges: [max(0, 1 - v), 1 + v] for b, c, s; [-h, h] for hue;
        # a zero strength skips the operation
        self.ranges = [(max(0.0, 1 - v), 1 + v) if v else None for v in (b, c, s)] + [(-h, h) if h else None]
        self.jitter_p, self.gray_p, self.blur_p = jitter_p, gray_p, blur_p
        self.blur_kernel, self.blur_sigma = blur_kernel, blur_sigma

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, _PARAMS, generator=generator, dtype=torch.float64)
        params = torch.zeros(n, _PARAMS, dtype=torch.float64)
        params[:, _ON] = u[:, _ON] < self.jitter_p
        params[:, _ORDER] = u[:, _ORDER].argsort(1).argsort(1).double()  # a uniform random permutation
        for k, bounds in enumerate(self.ranges):
            if bounds is not None:
                params[:, 5 + k] = bounds[0] + (bounds[1] - bounds[0]) * u[:, 5 + k]
        params[:, _GRAY] = u[:, _GRAY] < self.gray_p
        params[:, _BLUR] = u[:, _BLUR] < self.blur_p
        lo, hi = self.blur_sigma
        params[:, _SIGMA] = lo + (hi - lo) * u[:, _SIGMA]
        return params.float()

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        params = params.to(x.device, non_blocking=True)
        x = self._jitter(x.clone(), params)
        if self.gray_p and x.shape[1] == 3:
            gray = params[:, _GRAY].bool()
            x[gray] = _gray(x[gray]).expand(-1, 3, -1, -1)
        if self.blur_p:
            blurred = params[:, _BLUR].nonzero().squeeze(1)
            if len(blurred):
                x[blurred] = self._blur(x[blurred], params[blurred, _SIGMA])
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(x, self.draw(len(x), generator))

    def _jitter(self, x, params):
        """The four operations in each image's own order (position by position, each on the
        images that take it there), on the images whose jitter is on."""
        on = params[:, _ON].bool()
        order = params[:, _ORDER].long()
        for position in range(4):
            for op, bounds in enumerate(self.ranges):
                if bounds is None:
                    continue
                chosen = (on & (order[:, op] == position)).nonzero().squeeze(1)
                if len(chosen):
                    x[chosen] = self._op(op, x[chosen], params[chosen, 5 + op])
        return x

    @staticmethod
    def _op(op: int, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        f = factor[:, None, None, None]
        rgb = x.shape[1] == 3
        if op == 0:  # brightness: blend with black
            return (f * x).clamp_(0, 1)
        if op == 1:  # contrast: blend with the mean grey level of the image
            return _blend(x, (_gray(x) if rgb else x).mean((1, 2, 3), keepdim=True), f)
        if not rgb:  # saturation and hue leave one-channel images alone (as PIL does)
            return x
        if op == 2:  # saturation: blend with the image's grey version
            return _blend(x, _gray(x), f)
        return _adjust_hue(x, factor)

    def _blur(self, x, sigma):
        """torchvision's GaussianBlur (kernel ``blur_kernel``, reflect padding), one sigma per
        image, as two 1-D convolutions over every (image, channel) at once."""
        b, c, height, width = x.shape
        k = self.blur_kernel
        lim = (k - 1) / (2.0 * math.sqrt(2.0))
        grid = torch.linspace(-lim, lim, k, device=x.device, dtype=x.dtype)
        kernel = torch.softmax(-(grid[None] / sigma[:, None].to(x.dtype)) ** 2, dim=1)  # (B, k), as torchvision
        kernel = kernel.repeat_interleave(c, 0)
        y = F.pad(x.reshape(1, b * c, height, width), [k // 2] * 4, mode="reflect")
        y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
        y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)
        return y.reshape(b, c, height, width)


def _crop_flip(v2, size, scale, ratio=(3 / 4, 4 / 3), resize=None):
    steps = [resize] if resize is not None else []
    return v2.Compose([*steps, v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True),
                       v2.RandomHorizontalFlip()])


def _moco_v2_split(v2, size, blur=True):
    colour = BatchColour(MOCO_V2_JITTER, jitter_p=MOCO_V2_JITTER_P, gray_p=MOCO_V2_GRAY_P,
                         blur_kernel=_moco_v2_blur_kernel(size), blur_p=MOCO_V2_BLUR_P if blur else 0.0,
                         blur_sigma=MOCO_V2_BLUR_SIGMA)
    return _crop_flip(v2, size, (0.2, 1.0)), colour


def _vmf_split(v2, size, *, squash, jitter, ratio):
    """vMF's retrieval augmentation (``_vmf_retrieval``) with its jitter moved after the crop."""
    return _crop_flip(v2, size, VMF_CROP_SCALE, ratio, _vmf_resize(v2, size, squash)), BatchColour(jitter)


# name -> builder(v2, image_size, mean) -> (per-image part, BatchColour) of the augmentations that
# have a colour part; every other augmentation is all per-image (its batch part: None)
SPLIT_AUGMENTS = {
    "moco_v2": lambda v2, size, mean: _moco_v2_split(v2, size),
    "moco_v2_noblur": lambda v2, size, mean: _moco_v2_split(v2, size, blur=False),
    "vmf_cub": lambda v2, size, mean: _vmf_split(v2, size, **VMF_RETRIEVAL["vmf_cub"]),
    "vmf_cars": lambda v2, size, mean: _vmf_split(v2, size, **VMF_RETRIEVAL["vmf_cars"]),
}


def split_augment(name: str, image_size: int, mean=None):
    """``(per_image, per_batch)`` halves of the training augmentation ``name``: ``per_image``
    maps a uint8 (C, H, W) image (or, for RandomResizedCropFlip, a uint8 batch) to uint8
    (C, size, size) crops in DataLoader workers; ``per_batch`` is the BatchColour to apply to
    the float batch on the training device, or None when the augmentation has no colour part."""
    if name not in SPLIT_AUGMENTS:
        return build_augment(name, image_size, mean), None
    from torchvision.transforms import v2

    return SPLIT_AUGMENTS[name](v2, image_size, mean)


def batch_seed(seed: int, epoch: int, stream: int, step: int) -> int:
    """The seed of one batch's colour parameters: a hash of (run seed, epoch, stream, step), so
    a resumed epoch draws exactly what the uninterrupted one drew. Stream 0 is the training
    pass, 1, 2, ... an epoch hook's passes over the training set."""
    return int(np.random.SeedSequence([seed, epoch, stream, step]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class BatchAugment:
    """The device side of batch augmentation for training batch dicts: ``draw`` adds each
    view's colour parameters to a (CPU) batch, seeded by ``batch_seed``; after sharing and the
    move to the device, ``apply`` turns the uint8 views into float in [0, 1] and applies the
    colour part, each view with its own parameters (MoCo's two views: independent draws)."""

    VIEWS = ("images", "view2")

    def __init__(self, colour: "BatchColour | None", channels_last: bool = False):
        self.colour, self.channels_last = colour, channels_last

    def draw(self, batch: dict, seed: int) -> dict:
        if self.colour is None:
            return batch
        generator = torch.Generator().manual_seed(seed)
        params = {f"{v}_colour": self.colour.draw(len(batch[v]), generator) for v in self.VIEWS if v in batch}
        return {**batch, **params}

    def apply(self, batch: dict) -> dict:
        batch = dict(batch)
        for view in self.VIEWS:
            if view not in batch:
                continue
            x, params = batch[view], batch.pop(f"{view}_colour", None)
            x = x.float().div_(255) if x.dtype == torch.uint8 else x
            if params is not None:
                x = self.colour.apply(x, params)
            if self.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            batch[view] = x
        return batch


def to_tensor(images: np.ndarray, uint8: bool = False) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [0, 1] (raw pixels / 255), or
    with ``uint8`` the uint8 pixels in that layout."""
    images = np.ascontiguousarray(images)
    # torch must not alias a read-only array (the store's memory map, a decoded image): the float
    # conversion makes the one copy; uint8 copies only such an array
    if not uint8:
        images = images.astype(np.float32)
    elif not images.flags.writeable:
        images = images.copy()
    x = torch.from_numpy(images)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x if uint8 else x.div_(255)


def image_tensor(image: np.ndarray, uint8: bool = False) -> torch.Tensor:
    """One uint8 (H, W) or (H, W, C) image -> float (C, H, W) in [0, 1] (``uint8``: uint8)."""
    return to_tensor(np.asarray(image)[None], uint8)[0]


class ImageDataset(Dataset):
    """Training images with labels; ``views`` independently augmented copies per item.

    In-memory arrays become one tensor and batches are fetched by one index (fast for MNIST and
    CIFAR); memmapped arrays and image files are read and decoded per item (in DataLoader
    workers). Augmentation draws from the global torch RNG, which the training loop seeds per
    epoch, so runs and resumes are reproducible.

    With ``uint8`` (batch augmentation: ``transform`` is the per-image half of
    ``split_augment``), images stay uint8 from decoding to the batch, a quarter of float's bytes
    through the workers' queues and the copy to the device, which converts them.
    """

    def __init__(self, images, labels: torch.Tensor, transform=None, views: int = 1, uint8: bool = False):
        self.tensor = to_tensor(images, uint8) if is_in_memory(images) else None
        self.images, self.labels, self.transform, self.views, self.uint8 = images, labels, transform, views, uint8

    def __len__(self):
        return len(self.labels)

    def _augment(self, images):
        if self.transform is None:
            return images
        if isinstance(self.transform, RandomResizedCropFlip) and torch.is_tensor(images):
            return self.transform(images)  # one batched call
        return torch.stack([self.transform(img) for img in images])

    def __getitems__(self, indices):
        idx = torch.as_tensor(indices)
        if self.tensor is not None:
            images = self.tensor[idx]
        else:
            images = [image_tensor(self.images[i], self.uint8) for i in indices]
            images = images if self.transform is not None else torch.stack(images)
        batch = {"images": self._augment(images), "labels": self.labels[idx], "index": idx}
        if self.views == 2:
            batch["view2"] = self._augment(images)
        return batch


def eval_batches(images, transform=None, seeds=None, batch_size=1024, num_workers=0):
    """Batches (B, C, H, W) of a split's images through ``transform``, for embedding; with
    ``seeds``, image i's random transform depends on ``seeds[i]`` alone.

    In-memory images with no transform or a RandomResizedCropFlip go by whole batches (the
    Fashion-MNIST/CIFAR support views); everything else per image in DataLoader workers.
    """
    if is_in_memory(images) and (transform is None or isinstance(transform, RandomResizedCropFlip)):
        for i in range(0, len(images), batch_size):
            x = to_tensor(images[i : i + batch_size])
            yield x if transform is None else transform(x, seeds=None if seeds is None else seeds[i : i + batch_size])
    else:
        yield from DataLoader(EvalImages(images, transform, seeds), batch_size=batch_size, num_workers=num_workers)


class EvalImages(Dataset):
    """Images of a split for embedding, through ``transform``; with ``seeds``, item i's transform
    depends on ``seeds[i]`` alone (the few-shot support views): RandomResizedCropFlip hashes it,
    any other transform runs under ``torch.manual_seed(seeds[i])``."""

    def __init__(self, images, transform=None, seeds=None):
        self.images, self.transform, self.seeds = images, transform, seeds

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = image_tensor(self.images[i])
        if self.transform is None or self.seeds is None:
            return img if self.transform is None else self.transform(img)
        if isinstance(self.transform, RandomResizedCropFlip):
            return self.transform(img, seeds=[self.seeds[i]])
        torch.manual_seed(int(self.seeds[i]))
        return self.transform(img)


def collate(batch):
    return batch  # ImageDataset.__getitems__ already returns the whole batch
