"""CUB-200-2011 (Wah et al. 2011), with the deep-metric-learning split by class.

Layout (``CUB_200_2011.tgz``): ``CUB_200_2011/`` holds ``images.txt`` (``<image_id> <path>``,
relative to ``images/``), ``image_class_labels.txt`` (``<image_id> <class_id>``, 1-200),
``classes.txt`` (``<class_id> <NNN.Class_Name>``, also the folder names) and
``images/<NNN.Class_Name>/*.jpg``. ``root`` is the folder holding ``CUB_200_2011/`` or that
folder itself; there is no download (fetch ``CUB_200_2011.tgz`` from CaltechDATA).

Setting ``open_set`` (RevDML, vMF, STML): train on classes 1-100 (fine ids 0-99), test on the
unseen classes 101-200 (ids 100-199). The official ``train_test_split.txt`` is not used. Model
selection holds out ``VAL_CLASSES`` = 15 training classes (vMF; config ``val_classes``), drawn
by :func:`fgbench.data.prepare`. Images stay files (decoded on access).

CUB has no coarse labels: the coarse labels are the fine ones (``fine_to_coarse`` is the identity
table). The helpers below (root lookup, id files, image-file check) are shared with
:mod:`fgbench.data.cars` and :mod:`fgbench.data.sop`.
"""

import os
from collections import defaultdict
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError
from .images import ImageFiles

NAME = "cub200"
OPEN_SET = {"open_set": {"train_label": "fine", "train_classes": None, "test_classes": None}}
SETTINGS = OPEN_SET
IMAGE_SIZE = 224
NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # ImageNet (RevDML, vMF)
# RevDML: RandomResizedCrop(224) + flip; support views and plain features: ImageNet's resize 256 + crop 224.
TRANSFORMS = {"train": "random_resized_crop_flip", "view": "resize_random_crop_flip", "eval": "resize_center_crop"}
READS_FILES = True  # read as image files: can be decoded once into a store (fgbench.data.store)
VAL_CLASSES = 15  # vMF: 15 of the 100 training classes held out for model selection

FOLDER = "CUB_200_2011"
FILES = ("images.txt", "image_class_labels.txt", "classes.txt")
LAYOUT = f"{FOLDER}/{{{','.join(FILES)},images/<NNN.Class_Name>/*.jpg}}"
N_TRAIN_CLASSES = 100  # class ids 1-100 train, 101-200 test


# --------------------------------------------------------------------------- shared helpers


def find_root(title: str, name: str, root, folder: str, required, layout: str, source: str) -> Path:
    """``root/folder`` or ``root`` itself, whichever holds every file of ``required``; else one
    ``DataError`` naming the config key, the paths tried and the expected files."""
    if root is None:
        raise DataError(f"{title} is not downloaded automatically ({source}): set datasets.{name}.root "
                        f"to the folder holding {layout}")
    root = Path(root)
    for candidate in (root / folder, root):
        if all((candidate / f).is_file() for f in required):
            return candidate
    missing = [f for f in required if not (root / folder / f).is_file() and not (root / f).is_file()]
    raise DataError(
        f"{title} not found in datasets.{name}.root = {root}: tried {root / folder} and {root}, "
        f"expected {layout} ({source}); missing: {', '.join(missing)}"
    )


def read_columns(path: Path, columns: int, header=None) -> list:
    """The rows of a space-separated text file, each split into ``columns`` fields (the last one
    keeps any spaces); ``header``: the expected first line, checked and skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if header is not None:
        if not lines or lines[0].split() != header.split():
            first = lines[0] if lines else "nothing"
            raise DataError(f"{path}: the first line is {first!r}, expected the header {header!r}")
        lines, start = lines[1:], 2
    else:
        start = 1
    rows = []
    for number, line in enumerate(lines, start):
        if not line.strip():
            continue
        fields = line.split(maxsplit=columns - 1)
        if len(fields) != columns:
            raise DataError(f"{path}, line {number}: {line!r} has {len(fields)} field(s), expected {columns}")
        rows.append(fields)
    return rows


def to_int(value: str, path: Path, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DataError(f"{path}: {what} {value!r} is not an integer") from None


def check_image_files(root: Path, paths, title: str, fix: str) -> None:
    """Stop with a ``DataError`` when files of ``paths`` (relative to ``root``) are missing:
    each folder is listed once, so 100k images cost a dozen directory reads."""
    by_folder = defaultdict(list)
    for p in paths:
        parent, _, leaf = str(p).rpartition("/")
        by_folder[parent].append(leaf)
    missing = []
    for folder, names in by_folder.items():
        try:
            with os.scandir(root / folder) as it:
                present = {e.name for e in it}
        except OSError:
            present = set()
        missing += [f"{folder}/{n}" if folder else n for n in names if n not in present]
    if missing:
        shown = ", ".join(str(root / m) for m in missing[:3])
        raise DataError(f"{title}: {len(missing)} of {len(paths)} images are missing under {root}, e.g. {shown}; {fix}")


def identity_hierarchy(fine_names) -> dict:
    """No coarse labels: coarse = fine (identity table, coarse names = fine names)."""
    return {"fine_to_coarse": np.arange(len(fine_names)), "fine_names": list(fine_names),
            "coarse_names": list(fine_names)}


def split_by_class(images: ImageFiles, fine: np.ndarray, train_classes) -> dict:
    """``{"train": ..., "test": ...}``: the images of ``train_classes`` and of every other class."""
    is_train = np.isin(fine, train_classes)
    return {"train": (images[is_train], fine[is_train]), "test": (images[~is_train], fine[~is_train])}


# --------------------------------------------------------------------------- CUB-200-2011


def load(folder) -> dict:
    """The images (files under ``folder/images``) and fine labels (class id - 1), split by class."""
    folder = Path(folder)
    classes = {to_int(cid, folder / "classes.txt", "class id"): name
               for cid, name in read_columns(folder / "classes.txt", 2)}
    if sorted(classes) != list(range(1, len(classes) + 1)) or len(classes) <= N_TRAIN_CLASSES:
        raise DataError(f"{folder / 'classes.txt'}: class ids {min(classes, default=None)}-{max(classes, default=None)} "
                        f"({len(classes)} classes), expected 1-200")
    paths = {to_int(i, folder / "images.txt", "image id"): p for i, p in read_columns(folder / "images.txt", 2)}
    labels = {to_int(i, folder / "image_class_labels.txt", "image id"): to_int(c, folder / "image_class_labels.txt", "class id")
              for i, c in read_columns(folder / "image_class_labels.txt", 2)}
    if set(paths) != set(labels):
        odd = sorted(set(paths) ^ set(labels))
        raise DataError(f"{folder}: images.txt and image_class_labels.txt list different image ids, e.g. {odd[:3]}")
    ids = sorted(paths)
    fine = np.array([labels[i] - 1 for i in ids], dtype=np.int64)
    for i in ids:
        if labels[i] not in classes:
            raise DataError(f"{folder / 'image_class_labels.txt'}: image {i} has class {labels[i]}, not in classes.txt")
        if PurePosixPath(paths[i]).parts[0] != classes[labels[i]]:
            raise DataError(f"{folder}: image {i} ({paths[i]}) has class {labels[i]} = {classes[labels[i]]}, "
                            "but lies in another class folder")
    rel = [paths[i] for i in ids]
    check_image_files(folder / "images", rel, "CUB-200-2011", f"re-extract CUB_200_2011.tgz (expected {LAYOUT})")
    names = [classes[c].split(".", 1)[-1] for c in range(1, len(classes) + 1)]
    return {**split_by_class(ImageFiles(folder / "images", rel), fine, np.arange(N_TRAIN_CLASSES)),
            **identity_hierarchy(names)}


def locate(root) -> Path:
    return find_root("CUB-200-2011", NAME, root, FOLDER, FILES, LAYOUT, "the extracted CUB_200_2011.tgz")


def read(cfg: dict) -> dict:
    """The dataset as ``fgbench.data.prepare`` needs it (see its docstring), from ``cfg``'s root."""
    return load(locate(cfg.get("root")))
