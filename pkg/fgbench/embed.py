"""Embeddings of a split -> .npz: features, fine and coarse labels, index, and augmented views.

The test split also gets ``views`` augmented copies of every image (``aug_features``, shape
(N, views, D)), so few-shot episodes read augmented support features from arrays and never run
the network: evaluation costs the same for every method. View j of image i is seeded by
(view_seed, j, the image's index in the official split), so every method sees the same views.
"""

import numpy as np
import torch

from .data import load_prepared
from .data.transforms import build_augment, to_tensor
from .io import atomic_path
from .train.loop import embed_tensor, load_model, pick_device


def view_seed(base: int, view: int, index: int) -> int:
    return (base * 1000 + view) * 100_000_000 + int(index)


def augmented_views(images: torch.Tensor, index: np.ndarray, views: int, augment, base_seed: int) -> torch.Tensor:
    """(N, C, H, W) -> (views, N, C, H, W), each image's view seeded on its own."""
    out = torch.empty((views, *images.shape), dtype=images.dtype)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        for j in range(views):
            for i, img in enumerate(images):
                torch.manual_seed(view_seed(base_seed, j, index[i]))
                out[j, i] = augment(img)
    return out


def embed_split(model_path, data_path, split: str, spec: dict, out_path, device="auto") -> None:
    """Write the embeddings of ``split`` (restricted to the setting's test classes for the test
    split) with the layer chosen in the run's config."""
    device = pick_device(device)
    method, run_spec = load_model(model_path, device)
    data = load_prepared(data_path)
    classes = run_spec["setting_def"]["test_classes" if split == "test" else "train_classes"]
    part = data.splits[split].with_classes(classes)
    images = to_tensor(part.images)
    layer = run_spec["embed_layer"]
    arrays = {
        "features": embed_tensor(method, images, layer, device, spec["batch_size"]),
        "fine": part.fine, "coarse": part.coarse, "index": part.index,
    }
    if split == "test" and spec["views"] > 0:
        augment = build_augment(spec["view_augment"], images.shape[-1])
        views = augmented_views(images, part.index, spec["views"], augment, spec["view_seed"])
        per_view = [embed_tensor(method, v, layer, device, spec["batch_size"]) for v in views]
        arrays["aug_features"] = np.stack(per_view, axis=1)
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
