"""CIFAR-10 (Krizhevsky 2009), python version: the vMF paper's closed-set benchmark.

The official ``cifar-10-batches-py/`` folder holds Python-2 pickles ``data_batch_1`` ..
``data_batch_5`` (10,000 training images each) and ``test_batch`` (``data`` (N, 3072) uint8 rows
of R, G and B 32x32 planes, ``labels`` 0-9), and ``batches.meta`` (``label_names``). The pickle
reading, checked download and folder lookup are CIFAR-100's (:mod:`fgbench.data.cifar100`).

Setting ``closed_set``: all ten classes in train and test; the validation split is 15% of
the training images, stratified (vMF: ``train_test_split(test_size=0.15, stratify=labels)``).
CIFAR-10 has no class hierarchy: the coarse labels are the fine ones (``FINE_TO_COARSE`` is
the identity table).

Where the files are looked for, in order: the configured ``root`` (a folder holding
``cifar-10-batches-py/`` or that folder itself); ``download_dir``; the official download (into
``download_dir``), whose archive is checked against the published md5.
"""

from pathlib import Path

import numpy as np

from ..errors import DataError
from .cifar100 import download_archive, int_labels, locate_folder, read_pickle, rows_to_images

NAME = "cifar10"
FINE_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
COARSE_NAMES = FINE_NAMES  # no hierarchy: coarse = fine
FINE_TO_COARSE = np.arange(10)

SETTINGS = {"closed_set": {"train_label": "fine", "train_classes": None, "test_classes": None}}
IMAGE_SIZE = 32
NORMALIZE = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))  # vMF (dml-methods.md 3.4)
# vMF trains with RandomCrop(32, padding 4, reflect), flip and an 8x8 occlusion (datasets/cifar10_dataset.py).
TRANSFORMS = {"train": "reflect_crop_flip_occlude", "view": "flip", "eval": "none"}
VAL_FRACTION = 0.15  # vMF

FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
FILES = (*TRAIN_FILES, "test_batch", "batches.meta")
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
ARCHIVE = "cifar-10-python.tar.gz"
ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"


def download(folder: Path) -> Path:
    """Fetch the official archive into ``folder``, check its md5, extract it; return the data folder."""
    return download_archive(folder, URL, ARCHIVE, ARCHIVE_MD5, FOLDER, FILES)


def locate(root=None, download_dir="resources/cifar10", allow_download=True) -> Path:
    """Return the ``cifar-10-batches-py`` folder holding the six batches and the meta file, or stop
    with the paths tried."""
    return locate_folder("CIFAR-10", NAME, root, download_dir, allow_download,
                         lambda: download(Path(download_dir)), FOLDER, FILES, URL, ARCHIVE)


def _batch(path: Path):
    raw = read_pickle(path, ("data", "labels"), "CIFAR-10")
    images, labels = rows_to_images(raw["data"], path), int_labels(raw, "labels", path)
    if labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {labels.size} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(FINE_NAMES)):
        raise DataError(f"{path}: labels range {labels.min()}-{labels.max()}, expected 0-9")
    return images, labels


def load(folder) -> dict:
    """The official train (the five data batches, in order) and test splits: uint8 images
    (N, 32, 32, 3) and labels."""
    folder = Path(folder)
    meta_path = folder / "batches.meta"
    names = list(read_pickle(meta_path, ("label_names",), "CIFAR-10")["label_names"])
    if names != FINE_NAMES:
        raise DataError(f"{meta_path}: label_names {names} differ from the official CIFAR-10 classes {FINE_NAMES}")
    batches = [_batch(folder / name) for name in TRAIN_FILES]
    train = (np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches]))
    return {"train": train, "test": _batch(folder / "test_batch")}


def read(cfg: dict) -> dict:
    """The dataset as ``fgbench.data.prepare`` needs it (see its docstring), from ``cfg``'s root / download_dir."""
    folder = locate(cfg.get("root"), download_dir=cfg.get("download_dir") or f"resources/{NAME}")
    return {**load(folder), "fine_to_coarse": FINE_TO_COARSE, "fine_names": FINE_NAMES, "coarse_names": COARSE_NAMES}
