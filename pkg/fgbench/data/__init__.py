"""Datasets: every one becomes images plus fine and coarse labels in train / val / test.

``prepare`` turns a dataset's official files into one ``data.npz`` (the validation split is
carved from train here, stratified and seeded, so every method and seed selects models on
the same images); ``load_prepared`` reads it back. Torch-free.
"""

import json
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from ..errors import ConfigError, DataError
from ..io import atomic_path
from . import cifar100, fashion_mnist

DATASETS = {fashion_mnist.NAME: fashion_mnist, cifar100.NAME: cifar100}
SPLITS = ("train", "val", "test")


def get_dataset(name):
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; valid datasets: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, H, W) or (N, H, W, C)
    fine: np.ndarray
    coarse: np.ndarray
    index: np.ndarray  # position in the official split, for traceability

    def __len__(self):
        return len(self.fine)

    def subset(self, keep):
        return Split(self.images[keep], self.fine[keep], self.coarse[keep], self.index[keep])

    def with_classes(self, classes):
        """Only the images whose fine class is in ``classes`` (all when None)."""
        return self if classes is None else self.subset(np.isin(self.fine, classes))


@dataclass
class PreparedData:
    splits: dict
    fine_names: list
    coarse_names: list
    fine_to_coarse: np.ndarray


def _cap_per_class(split: Split, cap, seed) -> Split:
    """Keep at most ``cap`` images per fine class (seeded): quick runs and tests."""
    if cap is None:
        return split
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(split.fine == c))[:cap] for c in np.unique(split.fine)])
    return split.subset(np.sort(keep))


def prepare(name: str, cfg: dict, out_path) -> None:
    """Read dataset ``name`` from disk (see its module) and write the prepared ``data.npz``."""
    module = get_dataset(name)
    folder = module.locate(cfg.get("root"), download_dir=cfg.get("download_dir") or f"resources/{name}")
    raw = module.load(folder)
    fine_to_coarse = module.FINE_TO_COARSE
    images, fine = raw["train"]
    try:
        train_idx, val_idx = train_test_split(
            np.arange(len(fine)), test_size=cfg["val_fraction"], stratify=fine, random_state=cfg["split_seed"]
        )
    except ValueError as e:  # too few images for a stratified split
        raise ConfigError(f"datasets.{name}.val_fraction = {cfg['val_fraction']} gives no stratified split: {e}") from e
    test_images, test_fine = raw["test"]
    splits = {
        "train": Split(images[train_idx], fine[train_idx], fine_to_coarse[fine[train_idx]], train_idx),
        "val": Split(images[val_idx], fine[val_idx], fine_to_coarse[fine[val_idx]], val_idx),
        "test": Split(test_images, test_fine, fine_to_coarse[test_fine], np.arange(len(test_fine))),
    }
    caps = cfg.get("max_images_per_class") or {}
    arrays = {}
    for split_name, split in splits.items():
        split = _cap_per_class(split, caps.get(split_name), cfg["split_seed"])
        for field in ("images", "fine", "coarse", "index"):
            arrays[f"{split_name}_{field}"] = getattr(split, field)
    names = {"fine": module.FINE_NAMES, "coarse": module.COARSE_NAMES}
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, fine_to_coarse=fine_to_coarse, names=json.dumps(names), **arrays)


def load_prepared(path) -> PreparedData:
    try:
        with np.load(path) as z:
            splits = {s: Split(*(z[f"{s}_{k}"] for k in ("images", "fine", "coarse", "index"))) for s in SPLITS}
            names = json.loads(str(z["names"]))
            fine_to_coarse = z["fine_to_coarse"]
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"prepared dataset {path} is unreadable ({e}); delete it and rerun `fgbench prepare`") from e
    return PreparedData(splits, names["fine"], names["coarse"], fine_to_coarse)
