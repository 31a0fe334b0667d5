"""MNIST (LeCun et al. 1998) from its four IDX files: the vMF paper's closed-set digits.

The same file names and IDX format as Fashion-MNIST (the helpers live in
:mod:`fgbench.data.fashion_mnist`). Debian ships no MNIST package, so the files are looked for
in the configured ``root``, then in ``download_dir``, then downloaded there (torchvision's
mirrors, in turn), each ``.gz`` checked against the published md5.

MNIST has no class hierarchy: the coarse labels are the fine ones (``FINE_TO_COARSE`` is the
identity table), so it offers no ``coarse_to_fine`` setting. Settings: ``closed_set`` (all ten
digits in train and test; vMF: 15% of train, stratified, is the validation split) and
``open_set`` (train on 0-4, test on the unseen 5-9, as Fashion-MNIST).
"""

from pathlib import Path

import numpy as np

from .fashion_mnist import download_idx, load_idx, locate_idx, verify_idx

NAME = "mnist"
FINE_NAMES = [str(d) for d in range(10)]
COARSE_NAMES = FINE_NAMES  # no hierarchy: coarse = fine
FINE_TO_COARSE = np.arange(10)

SETTINGS = {
    "closed_set": {"train_label": "fine", "train_classes": None, "test_classes": None},
    "open_set": {"train_label": "fine", "train_classes": [0, 1, 2, 3, 4], "test_classes": [5, 6, 7, 8, 9]},
}
IMAGE_SIZE = 28
NORMALIZE = None  # raw pixels / 255, as Fashion-MNIST
TRANSFORMS = {"train": "none", "view": "crop_flip", "eval": "none"}
VAL_FRACTION = 0.15  # vMF: train_test_split(test_size=0.15, stratify=labels)

# torchvision's mirrors (yann.lecun.com often refuses downloads).
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
GZ_MD5 = {  # md5 of the published .gz files (shared/reference/datasets.md, torchvision)
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}

RAW_MD5 = {  # md5 of the decompressed files: what the files found under root are checked against
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def download(folder: Path) -> Path:
    """Fetch the four official .gz files into ``folder``, each checked against its md5."""
    return download_idx(folder, MIRRORS, GZ_MD5, payload=False)


def locate(root=None, download_dir="resources/mnist", allow_download=True) -> Path:
    """Return the folder holding the four IDX files, or stop with the paths that were tried."""
    return locate_idx("MNIST", NAME, root, [], download_dir, allow_download, lambda: download(Path(download_dir)))


def load(folder) -> dict:
    """The official train and test splits: uint8 images (N, 28, 28) and digit labels."""
    return load_idx(folder, len(FINE_NAMES))


def read(cfg: dict) -> dict:
    """The dataset as ``fgbench.data.prepare`` needs it (see its docstring), from ``cfg``'s root / download_dir."""
    folder = locate(cfg.get("root"), download_dir=cfg.get("download_dir") or f"resources/{NAME}")
    verify_idx(folder, RAW_MD5, NAME, cfg)
    return {**load(folder), "fine_to_coarse": FINE_TO_COARSE, "fine_names": FINE_NAMES, "coarse_names": COARSE_NAMES}
