"""Datasets: every one becomes images plus fine and coarse labels in train / val / test.

``prepare`` turns a dataset's official files into one ``data.npz`` (the validation split is
carved from train here, seeded, so every method and seed selects models on the same images);
``load_prepared`` reads it back. Torch-free.

The validation split is one of two kinds (config ``datasets.<name>.val_fraction`` /
``val_classes``; :func:`split_defaults` gives a dataset's own defaults):

- ``val_classes`` None (the dataset's default, ``VAL_CLASSES``) or 0, and ``val_fraction``: that
  fraction of the official training images, stratified by fine class (Fashion-MNIST, CIFAR,
  BREEDS, tieredImageNet: 0.1; MNIST and CIFAR-10: ``VAL_FRACTION`` 0.15, as vMF). The seed
  codebases differ: ANCOR trains on 100% of the training images (and selects on the test
  partition); SCGM shuffles them with ``sklearn.utils.shuffle(random_state=1000)`` and trains on
  the first 90%.
- ``val_classes`` n > 0: n training classes held out (a draw seeded by ``split_seed``), all
  their images in ``val`` and none in ``train`` (vMF's open-set protocol: CUB 15, Cars 15, SOP
  1,698 classes, the defaults of those datasets; set 0 to use ``val_fraction`` instead). Only
  for datasets whose official train split holds nothing but training classes (every setting's
  ``train_classes`` None), so the ``test`` split holds only the test classes.

A dataset object (a module, or an object in ``DATASETS``) exposes ``NAME``, ``SETTINGS``
(setting -> {train_label, train_classes, test_classes}), ``IMAGE_SIZE``, ``NORMALIZE``
((mean, std) or None), ``TRANSFORMS`` ({train, view, eval}: augmentation names of
``fgbench.data.transforms``), optionally ``VAL_FRACTION`` / ``VAL_CLASSES`` (its validation
split defaults) and ``read(cfg)``, which returns a dict::

    {"train": (images, fine), "test": (images, fine),
     "fine_to_coarse": int array, "fine_names": [...], "coarse_names": [...]}

where ``images`` is a uint8 array, an ``ImageFiles`` (kept as paths, or decoded once into an
image store with ``store: resized``) or an ``EncodedImages`` (decoded once into ``.npy``
files), see ``fgbench.data.images`` and ``fgbench.data.store``.

Prepared format (``data.npz``; ``<s>`` is train, val or test):

- ``<s>_fine``, ``<s>_coarse``, ``<s>_index`` (position in the official split), int64;
- the images, in one of four forms: ``<s>_images`` (uint8 array in the npz); or
  ``<s>_images_npy`` (the name of a uint8 ``.npy`` file in the same folder, opened memory-mapped);
  or ``<s>_paths`` (str, relative to ``<s>_image_root``, an absolute folder: decoded on access);
  or, besides the paths, ``<s>_store`` (an image store's file name in the same folder) with
  ``<s>_store_offsets``, ``<s>_store_shapes`` and ``<s>_store_list_hash`` (``fgbench.data.store``);
- ``fine_to_coarse`` (int64, one entry per fine class) and ``names`` (JSON: {fine, coarse});
- ``data_hash``: the prepared data's identity (``fgbench.provenance``): a hash of the prepare
  spec and of the arrays above, computed once here; checkpoints and metric rows carry it.
"""

import json
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import plugins
from ..errors import ConfigError, DataError
from ..io import atomic_path
from ..provenance import arrays_hash, digest, file_hash
from . import cars, cifar10, cifar100, cub, fashion_mnist, imagenet, mnist, sop, tiered
from .images import EncodedImages, ImageFiles, MappedRows, is_in_memory, join_images, write_npy
from .store import build_store, open_store
from .store import default_size as default_store_size

__all__ = [
    "DATASETS", "SPLITS", "Split", "PreparedData", "get_dataset", "list_datasets", "split_defaults", "prepare", "load_prepared",
    "ImageFiles", "is_in_memory",
]

DATASETS = {
    fashion_mnist.NAME: fashion_mnist,
    cifar100.NAME: cifar100,
    **imagenet.DATASETS,
    tiered.NAME: tiered,
    mnist.NAME: mnist,
    cifar10.NAME: cifar10,
    cub.NAME: cub,
    cars.NAME: cars,
    sop.NAME: sop,
}
SPLITS = ("train", "val", "test")
FIELDS = ("fine", "coarse", "index")


DATASET_FIELDS = ("SETTINGS", "IMAGE_SIZE", "NORMALIZE", "TRANSFORMS", "read")


def _adopt(name: str, dataset):
    """A plug-in's dataset (entry point group ``fgbench.datasets``): a module or object with the
    fields of the module docstring."""
    missing = [field for field in DATASET_FIELDS if not hasattr(dataset, field)]
    if missing:
        raise TypeError(f"{dataset!r}, which lacks {', '.join(missing)} (a dataset has {', '.join(DATASET_FIELDS)})")
    return dataset


def list_datasets() -> list:
    """Every dataset name: the built-ins and the installed plug-ins' (``fgbench.plugins``)."""
    plugins.extend(plugins.DATASETS, DATASETS, _adopt)
    return sorted(DATASETS)


def get_dataset(name):
    if name not in list_datasets():
        raise ConfigError(f"unknown dataset '{name}'; valid datasets: {', '.join(list_datasets())}")
    return DATASETS[name]


def split_defaults(name: str) -> dict:
    """The validation-split defaults dataset ``name`` sets itself (``val_fraction`` from its
    ``VAL_FRACTION``, ``val_classes`` from its ``VAL_CLASSES``); the keys it does not set are absent."""
    module = get_dataset(name)
    own = {"val_fraction": getattr(module, "VAL_FRACTION", None), "val_classes": getattr(module, "VAL_CLASSES", None)}
    return {k: v for k, v in own.items() if v is not None}


@dataclass
class Split:
    images: object  # uint8 ndarray (N, H, W[, C]), np.memmap / MappedRows, or ImageFiles (images.py)
    fine: np.ndarray
    coarse: np.ndarray
    index: np.ndarray  # position in the official split, for traceability

    def __len__(self):
        return len(self.fine)

    def subset(self, keep):
        # A memmap indexed by an array would be read into memory: keep the subset on disk.
        images = MappedRows(self.images) if isinstance(self.images, np.memmap) else self.images
        return Split(images[keep], self.fine[keep], self.coarse[keep], self.index[keep])

    def join(self, other):
        """This split's images followed by ``other``'s (e.g. train + val)."""
        fields = (np.concatenate([getattr(self, k), getattr(other, k)]) for k in FIELDS)
        return Split(join_images(self.images, other.images), *fields)

    def with_classes(self, classes):
        """Only the images whose fine class is in ``classes`` (all when None)."""
        return self if classes is None else self.subset(np.isin(self.fine, classes))


@dataclass
class PreparedData:
    splits: dict
    fine_names: list
    coarse_names: list
    fine_to_coarse: np.ndarray
    data_hash: str = ""


def _cap_per_class(split: Split, cap, seed) -> Split:
    """Keep at most ``cap`` images per fine class (seeded): quick runs and tests."""
    if cap is None:
        return split
    rng = np.random.default_rng(seed)
    keep = np.concatenate([rng.permutation(np.flatnonzero(split.fine == c))[:cap] for c in np.unique(split.fine)])
    return split.subset(np.sort(keep))


def side_name(out_path, split: str, suffix: str = "images.npy") -> str:
    """File name of a split's decoded images next to ``out_path``: ``<split>_<suffix>`` for
    ``data.npz`` (the workflow's name), ``<stem>.<split>_<suffix>`` for any other name
    (``images.npy``: tieredImageNet's arrays; ``store.u8``: an image store)."""
    stem = Path(out_path).stem
    return f"{split}_{suffix}" if stem == "data" else f"{stem}.{split}_{suffix}"


def _check_raw(name: str, raw: dict) -> np.ndarray:
    fine_to_coarse = np.asarray(raw["fine_to_coarse"], dtype=np.int64)
    if len(raw["fine_names"]) != len(fine_to_coarse):
        raise DataError(f"{name}: {len(raw['fine_names'])} fine names for {len(fine_to_coarse)} fine classes")
    for split in ("train", "test"):
        images, fine = raw[split]
        if len(images) != len(fine):
            raise DataError(f"{name}: the {split} split has {len(images)} images but {len(fine)} labels")
        if len(fine) and (fine.min() < 0 or fine.max() >= len(fine_to_coarse)):
            raise DataError(
                f"{name}: {split} fine labels range {fine.min()}-{fine.max()}, expected 0-{len(fine_to_coarse) - 1}"
            )
    return fine_to_coarse


def _held_out_classes(fine: np.ndarray, count: int, seed) -> tuple:
    """``(train_idx, val_idx)``: every image of ``count`` classes drawn with ``seed`` goes to val."""
    held = np.random.default_rng(seed).choice(np.unique(fine), size=count, replace=False)
    is_val = np.isin(fine, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _validation_split(name: str, module, cfg: dict, fine: np.ndarray) -> tuple:
    """``(train_idx, val_idx)`` into the official training images (see the module docstring)."""
    own = split_defaults(name)
    val_classes = cfg.get("val_classes")
    val_classes = own.get("val_classes") if val_classes is None else val_classes
    if val_classes:
        key = f"datasets.{name}.val_classes"
        n_classes = len(np.unique(fine))
        if isinstance(val_classes, bool) or not isinstance(val_classes, (int, np.integer)) or val_classes < 0:
            raise ConfigError(f"config key '{key}' must be a non-negative integer, got {val_classes!r}")
        if val_classes >= n_classes:
            raise ConfigError(f"config key '{key}' = {val_classes} holds out every one of the {n_classes} training "
                              "classes; use fewer")
        mixed = [s for s, d in module.SETTINGS.items() if d["train_classes"] is not None]
        if mixed:
            raise ConfigError(f"config key '{key}' = {val_classes}: setting(s) {', '.join(mixed)} of '{name}' pick "
                              "training classes from the train split, so held-out classes would mix with them; "
                              f"set {key}: 0 and use val_fraction")
        return _held_out_classes(fine, int(val_classes), cfg["split_seed"])
    val_fraction = cfg.get("val_fraction")
    val_fraction = own.get("val_fraction") if val_fraction is None else val_fraction
    if val_fraction is None:
        raise ConfigError(f"config key 'datasets.{name}.val_fraction' is not set (nor val_classes)")
    from sklearn.model_selection import train_test_split  # here: the config check imports this module

    try:
        return train_test_split(
            np.arange(len(fine)), test_size=val_fraction, stratify=fine, random_state=cfg["split_seed"]
        )
    except ValueError as e:  # too few images for a stratified split
        raise ConfigError(f"datasets.{name}.val_fraction = {val_fraction} gives no stratified split: {e}") from e


def prepare(name: str, cfg: dict, out_path, threads: int = 1) -> None:
    """Read dataset ``name`` from disk (see its module) and write the prepared ``data.npz``.

    Images kept as files are stored as paths and, with ``cfg["store"] == "resized"``, also
    decoded once into an image store per split (``fgbench.data.store``, ``threads`` images at
    once); encoded images (tieredImageNet) are decoded once into ``.npy`` files. Both go next to
    ``out_path``, each written atomically before ``data.npz``.
    """
    module = get_dataset(name)
    raw = module.read({**cfg, "download_dir": cfg.get("download_dir") or f"resources/{name}"})
    fine_to_coarse = _check_raw(name, raw)
    images, fine = raw["train"]
    fine = np.asarray(fine, dtype=np.int64)
    train_idx, val_idx = _validation_split(name, module, cfg, fine)
    test_images, test_fine = raw["test"]
    test_fine = np.asarray(test_fine, dtype=np.int64)
    splits = {
        "train": Split(images[train_idx], fine[train_idx], fine_to_coarse[fine[train_idx]], train_idx),
        "val": Split(images[val_idx], fine[val_idx], fine_to_coarse[fine[val_idx]], val_idx),
        "test": Split(test_images, test_fine, fine_to_coarse[test_fine], np.arange(len(test_fine))),
    }
    caps = cfg.get("max_images_per_class") or {}
    splits = {s: _cap_per_class(split, caps.get(s), cfg["split_seed"]) for s, split in splits.items()}
    arrays = {}
    for k, (split_name, split) in enumerate(splits.items()):
        for field in FIELDS:
            arrays[f"{split_name}_{field}"] = np.asarray(getattr(split, field), dtype=np.int64)
        images = split.images
        if isinstance(images, ImageFiles):
            arrays[f"{split_name}_paths"] = images.paths
            arrays[f"{split_name}_image_root"] = np.str_(str(images.root.absolute()))
            if cfg.get("store", "files") == "resized":
                arrays.update(write_store(images, out_path, split_name, cfg.get("store_size") or
                                           default_store_size(module.IMAGE_SIZE), threads))
        elif isinstance(images, EncodedImages):
            write_npy(images, Path(out_path).parent / side_name(out_path, split_name))
            arrays[f"{split_name}_images_npy"] = np.str_(side_name(out_path, split_name))
            later = [s.images for s in list(splits.values())[k + 1 :]]
            if not any(isinstance(o, EncodedImages) and o.blobs is images.blobs for o in later):
                images.release()  # no later split reads these bytes: free them before the next pickle
        else:
            arrays[f"{split_name}_images"] = np.asarray(images)
    names = {"fine": list(raw["fine_names"]), "coarse": list(raw["coarse_names"])}
    arrays.update(fine_to_coarse=fine_to_coarse, names=np.str_(json.dumps(names)))
    arrays["data_hash"] = np.str_(data_hash(cfg, arrays))
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)


def write_store(images: ImageFiles, out_path, split: str, size: int, threads: int) -> dict:
    """Build a split's image store next to ``out_path``; the ``data.npz`` entries that find and check it."""
    name = side_name(out_path, split, "store.u8")
    meta = build_store(images, Path(out_path).parent / name, size, threads)
    return {f"{split}_store": np.str_(name), **{f"{split}_store_{k}": v for k, v in meta.items()}}


def data_hash(cfg: dict, arrays: dict) -> str:
    """The prepared data's identity: what was asked (the prepare spec, less what cannot change
    the data) and what was written (the arrays' contents)."""
    asked = {k: v for k, v in cfg.items() if k not in ("verify", "download_dir")}
    return digest(asked, arrays_hash(arrays))


def _images(z, split: str, folder: Path):
    if f"{split}_store" in z:  # before the paths, which a store keeps for traceability
        return open_store(folder / str(z[f"{split}_store"]), z[f"{split}_store_offsets"],
                          z[f"{split}_store_shapes"], str(z[f"{split}_store_list_hash"]))
    if f"{split}_images" in z:
        return z[f"{split}_images"]
    if f"{split}_images_npy" in z:
        path = folder / str(z[f"{split}_images_npy"])
        if not path.is_file():
            raise DataError(f"decoded images {path} are missing")
        return np.load(path, mmap_mode="r")
    if f"{split}_paths" in z:
        return ImageFiles(str(z[f"{split}_image_root"]), z[f"{split}_paths"])
    raise KeyError(f"no images for split {split}")


def prepared_identity(z, path) -> str:
    """The prepared data's identity: its ``data_hash`` (``z``: the open data.npz), or for older
    files their bytes' hash."""
    return str(z["data_hash"]) if "data_hash" in z else file_hash(path)


def load_prepared(path) -> PreparedData:
    fix = "delete it and rerun `fgbench prepare` (snakemake: delete it and rerun the workflow)"
    try:
        with np.load(path) as z:
            splits = {}
            for s in SPLITS:
                images = _images(z, s, Path(path).parent)
                split = Split(images, *(z[f"{s}_{k}"] for k in FIELDS))
                if len(images) != len(split.fine):
                    raise ValueError(f"the {s} split has {len(images)} images but {len(split.fine)} labels")
                splits[s] = split
            names = json.loads(str(z["names"]))
            fine_to_coarse = z["fine_to_coarse"]
            identity = prepared_identity(z, path)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, DataError) as e:
        raise DataError(f"prepared dataset {path} is unreadable ({e}); {fix}") from e
    return PreparedData(splits, names["fine"], names["coarse"], fine_to_coarse, identity)
