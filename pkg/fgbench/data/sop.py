"""Stanford Online Products (Song et al. 2016), with the metric-learning split.

Layout (``Stanford_Online_Products.zip``): ``Stanford_Online_Products/`` holds ``Ebay_train.txt``,
``Ebay_test.txt`` and the twelve ``<category>_final/`` image folders. Each Ebay file has the header
``image_id class_id super_class_id path`` and space-separated, 1-based rows, ``path`` relative to
the folder. ``root`` is the folder holding ``Stanford_Online_Products/`` or that folder itself;
no download.

Setting ``open_set``: train on Ebay_train's 11,318 classes, test on Ebay_test's 11,316 (disjoint).
``coarse_to_fine``: train on the same images with the 12 super-class labels, test on Ebay_test's
fine classes. Model selection holds out ``VAL_CLASSES`` = 1,698 training classes (vMF; config
``val_classes``). Fine ids are the class ids re-indexed 0..C-1 in order (``class_id - 1`` on the
official files); coarse ids are ``super_class_id - 1``, in the alphabetical order of the folders,
checked against each path's folder. Fine names: ``<category>/<product id>``.
"""

from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError
from .cub import IMAGE_SIZE, NORMALIZE, OPEN_SET, READS_FILES, TRANSFORMS, check_image_files, find_root, read_columns, to_int
from .images import ImageFiles

__all__ = ["NAME", "SETTINGS", "IMAGE_SIZE", "NORMALIZE", "TRANSFORMS", "READS_FILES", "VAL_CLASSES", "read", "load", "locate"]

NAME = "sop"
SETTINGS = {
    **OPEN_SET,
    "coarse_to_fine": {"train_label": "coarse", "train_classes": None, "test_classes": None},
}
VAL_CLASSES = 1698  # vMF: 11,318 training classes -> 9,620 train + 1,698 validation
FOLDER = "Stanford_Online_Products"
FILES = ("Ebay_train.txt", "Ebay_test.txt")
HEADER = "image_id class_id super_class_id path"
COARSE_NAMES = ["bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle",
                "lamp", "mug", "sofa", "stapler", "table", "toaster"]
LAYOUT = f"{FOLDER}/{{{','.join(FILES)},<category>_final/*.JPG}}"


def _read_ebay(path: Path):
    """``(class ids, super-class ids, paths)`` of one Ebay file."""
    rows = read_columns(path, 4, header=HEADER)
    classes = np.array([to_int(r[1], path, "class_id") for r in rows], dtype=np.int64)
    supers = np.array([to_int(r[2], path, "super_class_id") for r in rows], dtype=np.int64)
    paths = [r[3].strip() for r in rows]
    for c, s, p in zip(classes, supers, paths):
        if not 1 <= s <= len(COARSE_NAMES):
            raise DataError(f"{path}: super_class_id {s} of {p}, expected 1-{len(COARSE_NAMES)}")
        if PurePosixPath(p).parts[0] != f"{COARSE_NAMES[s - 1]}_final":
            raise DataError(f"{path}: {p} has super_class_id {s} ({COARSE_NAMES[s - 1]}) but lies in another folder")
    return classes, supers, paths


def load(folder) -> dict:
    folder = Path(folder)
    train, test = (_read_ebay(folder / name) for name in FILES)
    overlap = np.intersect1d(train[0], test[0])
    if len(overlap):
        raise DataError(f"{folder}: Ebay_train.txt and Ebay_test.txt share {len(overlap)} class id(s), e.g. "
                        f"{overlap[:3].tolist()}; the metric-learning split needs disjoint classes")
    class_ids = np.concatenate([train[0], test[0]])
    super_ids = np.concatenate([train[1], test[1]])
    paths = train[2] + test[2]
    classes, first, fine = np.unique(class_ids, return_index=True, return_inverse=True)
    fine_to_coarse = super_ids[first] - 1
    bad = np.flatnonzero(fine_to_coarse[fine] != super_ids - 1)
    if len(bad):
        raise DataError(f"{folder}: class {class_ids[bad[0]]} has images in more than one super-class "
                        f"(e.g. {paths[bad[0]]})")
    check_image_files(folder, paths, "Stanford Online Products",
                      f"re-extract Stanford_Online_Products.zip (expected {LAYOUT})")
    fine_names = [f"{COARSE_NAMES[fine_to_coarse[k]]}/{PurePosixPath(paths[i]).stem.rsplit('_', 1)[0]}"
                  for k, i in enumerate(first)]
    images = ImageFiles(folder, paths)
    n = len(train[0])
    return {"train": (images[np.arange(n)], fine[:n]), "test": (images[np.arange(n, len(paths))], fine[n:]),
            "fine_to_coarse": fine_to_coarse, "fine_names": fine_names, "coarse_names": list(COARSE_NAMES)}


def locate(root) -> Path:
    return find_root("Stanford Online Products", NAME, root, FOLDER, FILES, LAYOUT,
                     "the extracted Stanford_Online_Products.zip")


def read(cfg: dict) -> dict:
    """The dataset as ``fgbench.data.prepare`` needs it (see its docstring), from ``cfg``'s root."""
    return load(locate(cfg.get("root")))
