"""CIFAR-100 (Krizhevsky 2009, "Learning Multiple Layers of Features from Tiny Images"), python version.

100 fine classes grouped into 20 coarse classes of exactly 5 each; 32x32 colour images, 500 train
and 100 test images per fine class. The official ``cifar-100-python/`` folder holds three
Python-2 pickles: ``train`` and ``test`` (``data`` (N, 3072) uint8, each row the R, G and B planes
of 32x32 in turn, plus ``fine_labels`` and ``coarse_labels``) and ``meta`` (the class names).

Protocol (ANCOR, Bukchin et al. 2021; SCGM, Ni et al. 2022): coarse-to-fine trains on all train
images with their *coarse* labels and runs the few-shot episodes on the *test* split's fine labels
(all 100 classes); closed-set trains on the fine labels of all classes. The validation split is
carved from train by :func:`fgbench.data.prepare`, stratified and seeded.

Where the files are looked for, in order: the configured ``root`` (a folder holding
``cifar-100-python/`` or that folder itself); ``download_dir``; the official download (into
``download_dir``), whose archive is checked against the published md5.
"""

import pickle
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import atomic_path, try_download
from .checksums import file_md5, verify

NAME = "cifar100"
# The official ``meta`` file's order (alphabetical).
FINE_NAMES = [
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
]
COARSE_NAMES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
]
# fine class -> coarse class: the official fixed mapping (the pickles' coarse_labels), checked by load.
FINE_TO_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
])

SETTINGS = {
    # ANCOR / SCGM: train on the train split's coarse labels, few-shot on the test split's fine labels.
    "coarse_to_fine": {"train_label": "coarse", "train_classes": None, "test_classes": None},
    "closed_set": {"train_label": "fine", "train_classes": None, "test_classes": None},
}
IMAGE_SIZE = 32
NORMALIZE = ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))  # ANCOR / SCGM
# ANCOR's CIFAR pretraining (RandomResizedCrop 0.2-1, flip); support views: flip (RandomCrop(32) is a no-op).
TRANSFORMS = {"train": "rrc_flip", "view": "flip", "eval": "none"}

FOLDER = "cifar-100-python"
FILES = ("train", "test", "meta")
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
ARCHIVE = "cifar-100-python.tar.gz"
ARCHIVE_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"
# md5 of the extracted pickles (the same as torchvision's CIFAR100.train_list / test_list / meta).
FILE_MD5 = {"train": "16019d7e3df5f24257cddd939b257f8d", "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48"}
LAYOUT = f"{FOLDER}/{{{','.join(FILES)}}}"


# --------------------------------------------------------------------------- CIFAR helpers
# Shared with fgbench.data.cifar10: an archive extracting to one folder of Python-2 pickles.


def resolve_folder(folder: Path, name: str, files) -> Path:
    """``folder/name`` or ``folder`` itself, whichever holds every one of ``files``; None if neither."""
    for candidate in (Path(folder) / name, Path(folder)):
        if all((candidate / f).is_file() for f in files):
            return candidate
    return None


def md5_file(path: Path) -> str:
    return file_md5(path)


def download_archive(folder: Path, url: str, archive_name: str, md5: str, name: str, files) -> Path:
    """Fetch ``url`` into ``folder/archive_name``, check its md5, extract it; return ``folder/name``."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / archive_name
    if not archive.is_file() or md5_file(archive) != md5:
        with atomic_path(archive) as tmp:
            urllib.request.urlretrieve(url, tmp)
            digest = md5_file(tmp)
            if digest != md5:
                raise DataError(f"downloaded {archive_name} has md5 {digest}, expected {md5}")
    layout = f"{name}/{{{','.join(files)}}}"
    # Extract next to the target, then move the finished folder into place.
    with tempfile.TemporaryDirectory(dir=folder, prefix=".extract.") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise DataError(f"{archive} could not be extracted: {e}") from e
        extracted = resolve_folder(Path(tmp), name, files)
        if extracted is None:
            raise DataError(f"{archive} does not contain {layout}")
        target = folder / name
        if resolve_folder(target, name, files) is None:
            if target.exists():
                raise DataError(f"{target} exists but lacks some of {', '.join(files)}; remove it and retry")
            extracted.rename(target)
    return target


def locate_folder(title: str, key: str, root, download_dir, allow_download: bool, download,
                  name: str, files, url: str, archive_name: str) -> Path:
    """The folder holding ``files``: under ``root`` when set (else an error naming it), else under
    ``download_dir``, else ``download()``; stops with every path tried."""
    layout = f"{name}/{{{','.join(files)}}}"
    if root is not None:
        found = resolve_folder(Path(root), name, files)
        if found is not None:
            return found
        raise DataError(
            f"{title} not found in datasets.{key}.root = {root}: tried {Path(root) / name} and {root}, "
            f"expected {layout} (the extracted {archive_name}) in the first or {', '.join(files)} in the second"
        )
    found = resolve_folder(Path(download_dir), name, files)
    if found is not None:
        return found
    found, reason = try_download(download, allow_download)
    if found is not None:
        return found
    raise DataError(
        f"{title} not found: tried {Path(download_dir) / name}, {download_dir}, and the official "
        f"download of {url} ({reason}); set datasets.{key}.root to a folder holding {layout}"
    )


def read_pickle(path: Path, keys, what: str = "CIFAR-100") -> dict:
    """A Python-2 pickle of a dict holding ``keys``; ``DataError`` naming ``path`` otherwise."""
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:  # truncated or corrupt: EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"{path} is not a readable {what} pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict with keys {', '.join(keys)}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise DataError(f"{path} lacks the key(s) {', '.join(missing)}")
    return obj


def int_labels(raw: dict, key: str, path: Path) -> np.ndarray:
    try:
        return np.asarray(raw[key], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: labels are not integers ({e})") from e


def rows_to_images(data, path: Path) -> np.ndarray:
    """(N, 3072) uint8 rows (the R, G and B 32x32 planes in turn) -> (N, 32, 32, 3) HWC images."""
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))  # CHW -> HWC


# --------------------------------------------------------------------------- CIFAR-100


def _resolve(folder: Path):
    """``folder`` itself or its ``cifar-100-python/`` child, whichever holds the three pickles."""
    return resolve_folder(folder, FOLDER, FILES)


_md5 = md5_file


def download(folder: Path) -> Path:
    """Fetch the official archive into ``folder``, check its md5, extract it; return the data folder."""
    return download_archive(folder, URL, ARCHIVE, ARCHIVE_MD5, FOLDER, FILES)


def locate(root=None, download_dir="resources/cifar100", allow_download=True) -> Path:
    """Return the ``cifar-100-python`` folder holding train, test and meta, or stop with the paths tried."""
    return locate_folder("CIFAR-100", NAME, root, download_dir, allow_download,
                         lambda: download(Path(download_dir)), FOLDER, FILES, URL, ARCHIVE)


def _read_pickle(path: Path, keys) -> dict:
    return read_pickle(path, keys, "CIFAR-100")


def load(folder) -> dict:
    """The official train and test splits: uint8 images (N, 32, 32, 3) and fine labels.

    Checks the pickles' coarse labels (and the meta file's names) against the fixed hierarchy.
    """
    folder = Path(folder)
    meta_path = folder / "meta"
    meta = _read_pickle(meta_path, ("fine_label_names", "coarse_label_names"))
    for key, expected in (("fine_label_names", FINE_NAMES), ("coarse_label_names", COARSE_NAMES)):
        if list(meta[key]) != expected:
            raise DataError(f"{meta_path}: {key} differ from the official CIFAR-100 class names")
    out = {}
    for split in ("train", "test"):
        path = folder / split
        raw = _read_pickle(path, ("data", "fine_labels", "coarse_labels"))
        images = rows_to_images(raw["data"], path)
        fine = int_labels(raw, "fine_labels", path)
        coarse = int_labels(raw, "coarse_labels", path)
        if not len(images) == len(fine) == len(coarse) or fine.ndim != 1 or coarse.ndim != 1:
            raise DataError(
                f"{path}: {len(images)} images but {len(fine)} fine and {len(coarse)} coarse labels"
            )
        if len(fine) and (fine.min() < 0 or fine.max() >= len(FINE_NAMES)):
            raise DataError(f"{path}: fine labels range {fine.min()}-{fine.max()}, expected 0-99")
        bad = np.flatnonzero(FINE_TO_COARSE[fine] != coarse)
        if len(bad):
            i = bad[0]
            raise DataError(
                f"{path}: coarse_labels disagree with the official CIFAR-100 hierarchy at {len(bad)} image(s), "
                f"e.g. image {i}: fine {fine[i]} ({FINE_NAMES[fine[i]]}) has coarse {coarse[i]}, "
                f"expected {FINE_TO_COARSE[fine[i]]} ({COARSE_NAMES[FINE_TO_COARSE[fine[i]]]})"
            )
        out[split] = (images, fine)
    return out


def read(cfg: dict) -> dict:
    """The dataset as ``fgbench.data.prepare`` needs it (see its docstring), from ``cfg``'s root / download_dir."""
    folder = locate(cfg.get("root"), download_dir=cfg.get("download_dir") or f"resources/{NAME}")
    verify({folder / name: md5 for name, md5 in FILE_MD5.items()}, NAME, cfg)
    return {**load(folder), "fine_to_coarse": FINE_TO_COARSE, "fine_names": FINE_NAMES, "coarse_names": COARSE_NAMES}
