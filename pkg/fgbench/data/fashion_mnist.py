"""Fashion-MNIST (Xiao et al. 2017) with fgbench's coarse hierarchy, read from IDX files.

Where the files are looked for, in order: the configured ``root``; Debian's
``dataset-fashion-mnist`` package; the official download (into ``download_dir``), whose
decompressed files are checked against the published md5s.
"""

import gzip
import hashlib
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_path, try_download
from .idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx

NAME = "fashion_mnist"
FINE_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
COARSE_NAMES = ["tops", "bottoms and dresses", "footwear", "bags"]
# fine class -> coarse class (DESIGN.md): tops 0 2 4 6, bottoms/dresses 1 3, footwear 5 7 9, bags 8.
FINE_TO_COARSE = np.array([0, 1, 0, 1, 0, 2, 0, 2, 3, 2])

SETTINGS = {
    "coarse_to_fine": {"train_label": "coarse", "train_classes": None, "test_classes": None},
    "open_set": {"train_label": "fine", "train_classes": [0, 1, 2, 3, 4], "test_classes": [5, 6, 7, 8, 9]},
    "closed_set": {"train_label": "fine", "train_classes": None, "test_classes": None},
}
IMAGE_SIZE = 28
NORMALIZE = None  # raw pixels / 255
TRANSFORMS = {"train": "none", "view": "crop_flip", "eval": "none"}

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# md5 of the decompressed files: Debian re-compressed the .gz wrappers, the payloads are upstream's.
RAW_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def _find(folder: Path, stem: str):
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_all(folder: Path) -> bool:
    return all(_find(folder, stem) for stem in RAW_MD5)


def download(folder: Path) -> None:
    """Fetch the four official .gz files into ``folder``, checking the decompressed md5s."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, md5 in RAW_MD5.items():
        target = folder / (stem + ".gz")
        if target.is_file():
            continue
        with atomic_path(target) as tmp:
            urllib.request.urlretrieve(URL + stem + ".gz", tmp)
            digest = hashlib.md5(gzip.decompress(Path(tmp).read_bytes())).hexdigest()
            if digest != md5:
                raise DataError(f"downloaded {stem}.gz has md5 {digest} after decompression, expected {md5}")


def locate(root=None, download_dir="resources/fashion_mnist", allow_download=True) -> Path:
    """Return the folder holding the four IDX files, or stop with the paths that were tried."""
    if root is not None:
        if _has_all(Path(root)):
            return Path(root)
        raise DataError(
            f"Fashion-MNIST not found in datasets.fashion_mnist.root = {root}: expected "
            f"{', '.join(s + '[.gz]' for s in RAW_MD5)} there"
        )
    for folder in (DEBIAN_DIR, Path(download_dir)):
        if _has_all(folder):
            return folder
    found, reason = try_download(lambda: download(Path(download_dir)) or Path(download_dir), allow_download)
    if found is not None:
        return found
    raise DataError(
        f"Fashion-MNIST not found: tried {DEBIAN_DIR} (apt-get install dataset-fashion-mnist), "
        f"{download_dir}, and the official download ({reason}); set datasets.fashion_mnist.root "
        "to a folder with the four IDX files"
    )


def load(folder) -> dict:
    """The official train and test splits: uint8 images (N, 28, 28) and fine labels."""
    folder = Path(folder)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"), IMAGES_MAGIC)
        labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"), LABELS_MAGIC)
        if len(images) != len(labels):
            raise DataError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
        if labels.max(initial=0) >= len(FINE_NAMES):
            raise DataError(f"{folder}: {split} labels go up to {labels.max()}, expected 0-9")
        out[split] = (images.astype(np.uint8), labels.astype(np.int64))
    return out


def read(cfg: dict) -> dict:
    """The dataset as ``fgbench.data.prepare`` needs it (see its docstring), from ``cfg``'s root / download_dir."""
    folder = locate(cfg.get("root"), download_dir=cfg.get("download_dir") or f"resources/{NAME}")
    return {**load(folder), "fine_to_coarse": FINE_TO_COARSE, "fine_names": FINE_NAMES, "coarse_names": COARSE_NAMES}
