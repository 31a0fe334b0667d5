"""Image tensors and augmentations (torchvision transforms v2)."""

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ..errors import ConfigError


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> float (N, C, H, W) in [0, 1] (raw pixels / 255)."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255)


def build_augment(name: str, image_size: int):
    """``none``, or ``crop_flip``: a random resized crop (scale 0.7-1) and a horizontal flip,
    mild enough for 28x28 images (the few-shot support views and optional training aug)."""
    if name == "none":
        return None
    if name == "crop_flip":
        return v2.Compose([
            v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
        ])
    raise ConfigError(f"unknown augmentation '{name}'; valid: none, crop_flip")


class ImageDataset(Dataset):
    """Images held in memory as one tensor; per-image augmentation from the global torch RNG,
    which the training loop seeds per epoch (so runs and resumes are reproducible)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitems__(self, indices):
        # Batched fetch: one tensor index instead of len(indices) calls and a collate.
        idx = torch.as_tensor(indices)
        images = self.images[idx]
        if self.transform is not None:
            images = torch.stack([self.transform(img) for img in images])
        return {"images": images, "labels": self.labels[idx], "index": idx}


def collate(batch):
    return batch  # ImageDataset.__getitems__ already returns the whole batch
