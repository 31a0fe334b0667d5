"""Cars196 (Stanford Cars, Krause et al. 2013), "car_ims" release, with the metric-learning split.

Layout: one folder holding ``cars_annos.mat`` and ``car_ims/000001.jpg`` .. ``016185.jpg``
(``car_ims.tgz`` extracted next to the annotation file); ``root`` is that folder or its parent
when the folder is called ``cars196``. ``cars_annos.mat`` (``scipy.io.loadmat``) holds
``annotations``, a 1 x N struct array with ``relative_im_path`` (``car_ims/000001.jpg``,
relative to the folder), ``bbox_x1`` .. ``bbox_y2``, ``class`` (1-196) and ``test``, and
``class_names`` (1 x 196 cell, index class - 1). No download (the official URLs are gone).

Setting ``open_set`` (RevDML, vMF, STML): class ids from the annotations, 1-98 train (fine ids
0-97), 99-196 test; the official ``test`` flag is ignored (the split is by class). Model
selection holds out ``VAL_CLASSES`` = 15 training classes (vMF; config ``val_classes``).

Cars196 has no coarse labels: the coarse labels are the fine ones (identity table).
"""

from pathlib import Path

import numpy as np

from ..errors import DataError
from .cub import IMAGE_SIZE, NORMALIZE, OPEN_SET, READS_FILES, TRANSFORMS, check_image_files, find_root, identity_hierarchy, split_by_class
from .images import ImageFiles

__all__ = ["NAME", "SETTINGS", "IMAGE_SIZE", "NORMALIZE", "TRANSFORMS", "READS_FILES", "VAL_CLASSES", "read", "load", "locate"]

NAME = "cars196"
SETTINGS = OPEN_SET
VAL_CLASSES = 15  # vMF
ANNOTATIONS = "cars_annos.mat"
LAYOUT = f"{ANNOTATIONS} and car_ims/*.jpg (relative_im_path of the annotations)"
N_CLASSES, N_TRAIN_CLASSES = 196, 98  # class ids 1-98 train, 99-196 test


def _value(cell):
    """The one value inside a loadmat cell (nested 1x1 arrays)."""
    arr = np.asarray(cell)
    while arr.dtype == object and arr.size == 1:
        arr = np.asarray(arr.reshape(-1)[0])
    if arr.size != 1:
        raise ValueError(f"expected one value, got an array of shape {arr.shape}")
    return arr.reshape(-1)[0]


def load(folder) -> dict:
    """The images (files under ``folder``) and fine labels (class - 1), split by class id."""
    import scipy.io

    folder = Path(folder)
    path = folder / ANNOTATIONS
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises ValueError, TypeError, MatReadError, ... on a bad file
        raise DataError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {e})") from e
    if "annotations" not in mat:
        raise DataError(f"{path} has no 'annotations' variable (variables: {', '.join(k for k in mat if not k.startswith('__'))})")
    ann = np.asarray(mat["annotations"]).reshape(-1)
    fields = ann.dtype.names or ()
    missing = [f for f in ("relative_im_path", "class") if f not in fields]
    if missing:
        raise DataError(f"{path}: the annotations lack the field(s) {', '.join(missing)} (fields: {', '.join(fields)})")
    try:
        paths = [str(_value(a)) for a in ann["relative_im_path"]]
        classes = np.array([int(_value(a)) for a in ann["class"]], dtype=np.int64)
    except (ValueError, TypeError, IndexError) as e:
        raise DataError(f"{path}: malformed annotation ({e})") from e
    if len(classes) and (classes.min() < 1 or classes.max() > N_CLASSES):
        raise DataError(f"{path}: class ids range {classes.min()}-{classes.max()}, expected 1-{N_CLASSES}")
    names = [f"class {c}" for c in range(1, N_CLASSES + 1)]
    if "class_names" in mat:
        try:
            got = [str(_value(n)) for n in np.asarray(mat["class_names"]).reshape(-1)]
        except (ValueError, TypeError, IndexError) as e:
            raise DataError(f"{path}: malformed class_names ({e})") from e
        if len(got) != N_CLASSES:
            raise DataError(f"{path}: {len(got)} class_names, expected {N_CLASSES}")
        names = got
    check_image_files(folder, paths, "Cars196", f"extract car_ims.tgz next to {ANNOTATIONS} (expected {LAYOUT})")
    return {**split_by_class(ImageFiles(folder, paths), classes - 1, np.arange(N_TRAIN_CLASSES)),
            **identity_hierarchy(names)}


def locate(root) -> Path:
    return find_root("Cars196", NAME, root, "cars196", (ANNOTATIONS,), LAYOUT,
                     "cars_annos.mat and the extracted car_ims.tgz")


def read(cfg: dict) -> dict:
    """The dataset as ``fgbench.data.prepare`` needs it (see its docstring), from ``cfg``'s root."""
    return load(locate(cfg.get("root")))
