"""tieredImageNet (Ren et al. 2018, "Meta-Learning for Semi-Supervised Few-Shot Classification").

608 ImageNet classes (84x84 RGB) in 34 categories, split by category: train 351 fine / 20 coarse
(448,695 images), val 97 / 6, test 160 / 8 (206,209 images). Files as few-shot-ssl-public
distributes them (``tiered-imagenet.tar``; learn2learn's layout): ``{split}_images_png.pkl``
(a pickled list of PNG-encoded images) and ``{split}_labels.pkl`` (a dict: ``label_specific``,
``label_general`` and their names ``label_specific_str``, ``label_general_str``), labels local
to each split.

Protocol (ANCOR, SCGM loaders) ``coarse_to_fine``: train on the train split's 20 coarse
categories (``label_general``); few-shot on the test split's 160 novel fine classes (8 novel
categories). The val pickles are not read: the validation split is carved from train by
:func:`fgbench.data.prepare` (ANCOR validates on the val pickle; SCGM has no tiered script).
Fine and coarse ids are global: the test split's ids follow the train split's, so one
``fine_to_coarse`` table covers both. ``prepare`` decodes the PNGs once (PIL, RGB) into
``.npy`` files that ``load_prepared`` memory-maps.
"""

import pickle
from pathlib import Path

import numpy as np

from ..errors import DataError
from .images import EncodedImages, LazyBlobs

NAME = "tiered_imagenet"
IMAGE_SIZE = 84
NORMALIZE = ((0.4783, 0.4564, 0.4102), (0.2795, 0.2736, 0.2859))  # ANCOR / SCGM
TRANSFORMS = {"train": "moco_v2_noblur", "view": "pad_crop_flip", "eval": "none"}
SETTINGS = {"coarse_to_fine": {"train_label": "coarse", "train_classes": None, "test_classes": None}}

FOLDER = "tiered-imagenet"
SPLITS = ("train", "test")  # the val pickles are not needed
FILES = tuple(f"{s}_{kind}.pkl" for s in SPLITS for kind in ("images_png", "labels"))
LABEL_KEYS = ("label_specific", "label_general", "label_specific_str", "label_general_str")
SHAPE = (84, 84, 3)
SOURCE = (
    "the extracted tiered-imagenet.tar of few-shot-ssl-public (Ren et al. 2018; Google Drive id "
    "1g1aIDy2Ar_MViF2gDXFYDBTR-HYecV07, also Zenodo record 7978538)"
)
LAYOUT = f"{{train,test}}_images_png.pkl and {{train,test}}_labels.pkl ({SOURCE})"
FIX = "the pickle is damaged: re-extract it from tiered-imagenet.tar"


def _resolve(folder: Path):
    for candidate in (folder / FOLDER, folder):
        if all((candidate / f).is_file() for f in FILES):
            return candidate
    return None


def locate(root=None, download_dir="resources/tiered_imagenet") -> Path:
    """The folder holding the pickles: ``root`` or ``root/tiered-imagenet`` (else ``download_dir``
    or its ``tiered-imagenet/``). Not downloaded (12.9 GB from Google Drive)."""
    tried = [Path(root)] if root is not None else [Path(download_dir)]
    for folder in tried:
        found = _resolve(folder)
        if found is not None:
            return found
    folder = tried[0]
    lacking = [f for f in FILES if not (folder / f).is_file() and not (folder / FOLDER / f).is_file()]
    where = f"datasets.{NAME}.root = {folder}" if root is not None else f"{folder} (datasets.{NAME}.root is unset)"
    raise DataError(
        f"tieredImageNet not found in {where}: tried {folder / FOLDER} and {folder}, missing "
        f"{', '.join(lacking) or 'a complete set'}; expected {LAYOUT}; set datasets.{NAME}.root to that folder"
    )


def _unpickle(path: Path):
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")  # works for both the Python-2 and Python-3 pickles
    except Exception as e:  # truncated or corrupt: EOFError, UnpicklingError, ValueError, ...
        raise DataError(f"{path} is not a readable tieredImageNet pickle ({type(e).__name__}: {e}); {FIX}") from e


def _text(x) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


def _names(value, path: Path, key: str) -> list:
    """A ``*_str`` field as a list indexed by label: a list, or a dict from int to name."""
    if isinstance(value, dict):
        keys = sorted(value)
        if keys != list(range(len(keys))):
            raise DataError(f"{path}: {key} is a dict whose keys are not 0..{len(keys) - 1}")
        return [_text(value[k]) for k in keys]
    try:
        return [_text(v) for v in value]
    except TypeError as e:
        raise DataError(f"{path}: {key} is a {type(value).__name__}, expected a list of names") from e


def read_labels(path: Path) -> dict:
    """``{split}_labels.pkl``: fine and coarse labels (int64) and their names."""
    obj = _unpickle(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict with keys {', '.join(LABEL_KEYS)}")
    obj = {_text(k): v for k, v in obj.items()}
    missing = [k for k in LABEL_KEYS if k not in obj]
    if missing:
        raise DataError(f"{path} lacks the key(s) {', '.join(missing)}; expected {', '.join(LABEL_KEYS)}")
    out = {}
    for key, names_key in (("label_specific", "label_specific_str"), ("label_general", "label_general_str")):
        try:
            labels = np.asarray(obj[key], dtype=np.int64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: {key} is not a list of integers ({e})") from e
        names = _names(obj[names_key], path, names_key)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
            raise DataError(
                f"{path}: {key} ranges {labels.min()}-{labels.max()} but {names_key} has {len(names)} names"
            )
        out[key], out[names_key] = labels, names
    if len(out["label_specific"]) != len(out["label_general"]):
        raise DataError(
            f"{path}: {len(out['label_specific'])} label_specific but {len(out['label_general'])} label_general entries"
        )
    return out


def _fine_to_coarse(fine, coarse, n_fine: int, path: Path) -> np.ndarray:
    """Each fine class's category, from the images; a class in two categories or none is an error."""
    table = np.full(n_fine, -1, dtype=np.int64)
    table[fine] = coarse
    bad = np.flatnonzero(table[fine] != coarse)
    if len(bad):
        f = fine[bad[0]]
        raise DataError(f"{path}: fine class {f} has images in categories {sorted(set(coarse[fine == f].tolist()))}")
    if (table < 0).any():
        raise DataError(f"{path}: fine class(es) {np.flatnonzero(table < 0)[:5].tolist()} have no images")
    return table


def _png_list(path: Path):
    obj = _unpickle(path)
    if not isinstance(obj, (list, tuple, np.ndarray)):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a list of PNG-encoded images")
    return obj


def read(cfg: dict) -> dict:
    """Train and test images (PNG bytes, decoded by ``prepare``) with global labels and names."""
    folder = locate(cfg.get("root"), download_dir=cfg.get("download_dir") or f"resources/{NAME}")
    out, fine_names, coarse_names, tables = {}, [], [], []
    for split in SPLITS:
        labels_path = folder / f"{split}_labels.pkl"
        labels = read_labels(labels_path)
        fine = labels["label_specific"] + len(fine_names)  # global ids: test follows train
        coarse = labels["label_general"] + len(coarse_names)
        tables.append(_fine_to_coarse(labels["label_specific"], coarse, len(labels["label_specific_str"]), labels_path))
        fine_names += labels["label_specific_str"]
        coarse_names += labels["label_general_str"]
        images_path = folder / f"{split}_images_png.pkl"
        source = f"the tieredImageNet {split} split ({images_path})"
        blobs = LazyBlobs(lambda p=images_path: _png_list(p), expected=len(fine), source=str(images_path))
        out[split] = (EncodedImages(blobs, SHAPE, source, fix=FIX), fine)
    return {**out, "fine_to_coarse": np.concatenate(tables), "fine_names": fine_names, "coarse_names": coarse_names}
