"""Fashion-MNIST (Xiao et al. 2017) with fgbench's coarse hierarchy, read from IDX files.

Where the files are looked for, in order: the configured ``root``; Debian's
``dataset-fashion-mnist`` package; the official download (into ``download_dir``), whose
decompressed files are checked against the published md5s.

The functions ending in ``_idx`` are the IDX-dataset helpers that :mod:`fgbench.data.mnist`
shares (same four file names, other files, md5s and mirrors).
"""

import gzip
import hashlib
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_path, try_download
from .checksums import verify
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

# --------------------------------------------------------------------------- IDX-dataset helpers

# split -> (images, labels) file stems, as MNIST and Fashion-MNIST name them.
IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_STEMS = tuple(stem for pair in IDX_SPLITS.values() for stem in pair)
IDX_EXPECTED = ", ".join(s + "[.gz]" for s in IDX_STEMS)


def find_idx(folder: Path, stem: str):
    """``folder/stem`` or ``folder/stem.gz``, whichever exists; None if neither."""
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def has_idx(folder: Path) -> bool:
    return all(find_idx(Path(folder), stem) for stem in IDX_STEMS)


def download_idx(folder: Path, mirrors, md5s: dict, payload: bool) -> Path:
    """Fetch ``<stem>.gz`` for every stem of ``md5s`` into ``folder``, trying ``mirrors`` in turn.

    ``payload``: the md5s are of the decompressed files (Fashion-MNIST); else of the .gz files
    (MNIST, as published). A file whose md5 differs is not kept.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, md5 in md5s.items():
        target = folder / (stem + ".gz")
        if target.is_file():
            continue
        errors = []
        for mirror in mirrors:
            try:
                with atomic_path(target) as tmp:
                    urllib.request.urlretrieve(mirror + stem + ".gz", tmp)
                    data = Path(tmp).read_bytes()
                    digest = hashlib.md5(gzip.decompress(data) if payload else data).hexdigest()
                    if digest != md5:
                        what = " after decompression" if payload else ""
                        raise DataError(f"downloaded {mirror}{stem}.gz has md5 {digest}{what}, expected {md5}")
                break
            except (OSError, EOFError, DataError) as e:  # EOFError: a truncated .gz
                errors.append(e)
        else:
            if len(errors) == 1 and not isinstance(errors[0], EOFError):
                raise errors[0]
            raise DataError("; ".join(f"{type(e).__name__}: {e}" for e in errors))
    return folder


def locate_idx(title: str, name: str, root, search, download_dir, allow_download: bool, download) -> Path:
    """The folder holding the four IDX files: ``root`` when set (else an error naming it), else
    the first of ``search`` ((folder, hint) pairs) and ``download_dir`` that holds them, else
    ``download()``; stops with every path tried."""
    if root is not None:
        if has_idx(Path(root)):
            return Path(root)
        raise DataError(f"{title} not found in datasets.{name}.root = {root}: expected {IDX_EXPECTED} there")
    for folder, _ in (*search, (Path(download_dir), "")):
        if has_idx(folder):
            return Path(folder)
    found, reason = try_download(download, allow_download)
    if found is not None:
        return found
    tried = ", ".join(f"{folder}{hint}" for folder, hint in search)
    raise DataError(
        f"{title} not found: tried {tried + ', ' if tried else ''}{download_dir}, and the official download "
        f"({reason}); set datasets.{name}.root to a folder with the four IDX files"
    )


def verify_idx(folder, md5s: dict, name: str, cfg: dict) -> None:
    """Check the four files' payload md5s (a ``.gz`` file by its decompressed bytes)."""
    verify({find_idx(Path(folder), stem): md5 for stem, md5 in md5s.items()}, name, cfg, decompress=True)


def load_idx(folder, n_classes: int = 10) -> dict:
    """The official train and test splits of an IDX dataset: uint8 images (N, 28, 28) and labels."""
    folder = Path(folder)
    out = {}
    for split, (image_stem, label_stem) in IDX_SPLITS.items():
        images = read_idx(find_idx(folder, image_stem), IMAGES_MAGIC)
        labels = read_idx(find_idx(folder, label_stem), LABELS_MAGIC)
        if len(images) != len(labels):
            raise DataError(f"{folder}: {split} has {len(images)} images but {len(labels)} labels")
        if labels.max(initial=0) >= n_classes:
            raise DataError(f"{folder}: {split} labels go up to {labels.max()}, expected 0-{n_classes - 1}")
        out[split] = (images.astype(np.uint8), labels.astype(np.int64))
    return out


# --------------------------------------------------------------------------- Fashion-MNIST


def download(folder: Path) -> None:
    """Fetch the four official .gz files into ``folder``, checking the decompressed md5s."""
    download_idx(folder, (URL,), RAW_MD5, payload=True)


def locate(root=None, download_dir="resources/fashion_mnist", allow_download=True) -> Path:
    """Return the folder holding the four IDX files, or stop with the paths that were tried."""
    return locate_idx(
        "Fashion-MNIST", NAME, root, [(DEBIAN_DIR, " (apt-get install dataset-fashion-mnist)")],
        download_dir, allow_download, lambda: download(Path(download_dir)) or Path(download_dir),
    )


def load(folder) -> dict:
    """The official train and test splits: uint8 images (N, 28, 28) and fine labels."""
    return load_idx(folder, len(FINE_NAMES))


def read(cfg: dict) -> dict:
    """The dataset as ``fgbench.data.prepare`` needs it (see its docstring), from ``cfg``'s root / download_dir."""
    folder = locate(cfg.get("root"), download_dir=cfg.get("download_dir") or f"resources/{NAME}")
    verify_idx(folder, RAW_MD5, NAME, cfg)
    return {**load(folder), "fine_to_coarse": FINE_TO_COARSE, "fine_names": FINE_NAMES, "coarse_names": COARSE_NAMES}
