"""The four BREEDS datasets (living17, nonliving26, entity13, entity30) from an ImageNet folder.

Classes come from the BREEDS hierarchy (:mod:`fgbench.data.breeds`, robustness's
``breeds_helpers`` reimplemented); images from an ImageNet-1k folder, read as files (never
decoded by ``prepare``, which only lists them and checks every selected class has images).

Layout: ``root`` holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``, or the Kaggle/ILSVRC
layout ``<root>/Data/CLS-LOC/{train,val}``. The official validation images come flat
(``val/ILSVRC2012_val_XXXXXXXX.JPEG``); :func:`rearrange_val` (``fgbench rearrange-val``, rule
``rearrange_imagenet_val``) sorts them into wnid folders of symlinks elsewhere, and the dataset's
``val_root`` points there.

Protocol (SCGM and ANCOR, ``breeds_split`` None, the default): every selected subclass; train
on their ImageNet *train* images with coarse labels, few-shot on their ImageNet *val* images
with fine labels. With ``breeds_split`` rand / good / bad, train uses the source subclasses and
test the target subclasses (novel fine classes; ANCOR's ``--split``).

Label ids as in the reference: coarse id = index of the superclass; fine id = position in the
flattened superclass-major list of (source) subclasses, in breeds_helpers' order (not sorted).
With a split, target subclasses follow the source ones (ids offset by their count), so one
``fine_to_coarse`` table covers both.
"""

import csv
import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..io import atomic_path, try_download
from . import breeds
from .images import ImageFiles

IMAGE_SIZE = 224
NORMALIZE = ((0.4717, 0.4499, 0.3837), (0.2600, 0.2516, 0.2575))  # ANCOR / SCGM BREEDS statistics
TRANSFORMS = {"train": "moco_v2", "view": "resize_random_crop_flip", "eval": "resize_center_crop"}
SETTINGS = {"coarse_to_fine": {"train_label": "coarse", "train_classes": None, "test_classes": None}}

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
KAGGLE_SUBDIR = Path("Data") / "CLS-LOC"
# The hierarchy files robustness's setup_breeds downloads (MadryLab/BREEDS-Benchmarks, folder
# imagenet_class_hierarchy/modified/, unchanged since 2020-08-11), pinned to master's commit of
# 2020-08-14 and checked against their sha256.
HIERARCHY_URL = (
    "https://raw.githubusercontent.com/MadryLab/BREEDS-Benchmarks/"
    "f83be509107e89f41dde0e4e8e7f8be051fbb891/imagenet_class_hierarchy/modified/"
)
HIERARCHY_SHA256 = {
    "class_hierarchy.txt": "039cfaddf9732855b93f7899ba4b5ba6d80f8dbe15cfaad566f575b6c8ce0216",
    "dataset_class_info.json": "be90503d57a001f95e094a81dc4de90772bfc58546ca58061d6474799829afd0",
    "node_names.txt": "322af45711ed69a7b199f11225bd964c7dae71df3c586498bef2f7c9e031dedb",
}
WNID = re.compile(r"^n\d{8}$")
REARRANGE_HINT = (
    "`fgbench rearrange-val --val-dir {val} --solution {solution} --out <folder>` "
    "(or the Snakemake rule rearrange_imagenet_val, config imagenet_val: {{flat_dir, solution, out}}) "
    "and set datasets.{name}.val_root to <folder>"
)


# --------------------------------------------------------------------------- hierarchy files


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download_hierarchy(folder: Path) -> None:
    """Fetch the three BREEDS hierarchy files into ``folder`` (as ``setup_breeds``), sha256-checked."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, digest in HIERARCHY_SHA256.items():
        target = folder / name
        if target.is_file() and _sha256(target) == digest:
            continue
        with atomic_path(target) as tmp:
            urllib.request.urlretrieve(HIERARCHY_URL + name, tmp)
            got = _sha256(tmp)
            if got != digest:
                raise DataError(f"downloaded {HIERARCHY_URL + name} has sha256 {got}, expected {digest}")


def locate_hierarchy(name: str, hierarchy_dir=None, download_dir="resources", allow_download=True) -> Path:
    """The folder with the BREEDS hierarchy files: ``hierarchy_dir``, else ``<download_dir>/breeds``
    (downloaded there when missing)."""
    files = ", ".join(breeds.REQUIRED_FILES)
    if hierarchy_dir is not None:
        folder = Path(hierarchy_dir)
        missing = [f for f in breeds.REQUIRED_FILES if not (folder / f).is_file()]
        if missing:
            raise DataError(
                f"BREEDS hierarchy file(s) {', '.join(missing)} missing in datasets.{name}.hierarchy_dir = {folder}: "
                f"expected {files} there (MadryLab/BREEDS-Benchmarks imagenet_class_hierarchy/modified/); "
                f"unset hierarchy_dir to download them into <download_dir>/breeds"
            )
        return folder
    folder = Path(download_dir) / "breeds"
    if all((folder / f).is_file() for f in breeds.REQUIRED_FILES):
        return folder
    found, reason = try_download(lambda: download_hierarchy(folder) or folder, allow_download)
    if found is not None:
        return found
    raise DataError(
        f"BREEDS hierarchy files not found in {folder} and not downloadable from {HIERARCHY_URL} ({reason}); "
        f"set datasets.{name}.hierarchy_dir to a folder holding {files}"
    )


# --------------------------------------------------------------------------- ImageNet folder


def locate_imagenet(name: str, root) -> tuple:
    """``(train_dir, default_val_dir)`` of the ImageNet folder ``root`` (plain or Kaggle layout)."""
    layout = (
        "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG (or the Kaggle/ILSVRC layout Data/CLS-LOC/{train,val})"
    )
    if root is None:
        raise DataError(f"{name} needs ImageNet-1k: set datasets.{name}.root to the folder holding {layout}")
    root = Path(root)
    for base in (root / KAGGLE_SUBDIR, root):
        if (base / "train").is_dir():
            return base / "train", base / "val"
    what = "does not exist" if not root.exists() else f"has no train/ folder (nor {KAGGLE_SUBDIR}/train/)"
    raise DataError(f"ImageNet folder datasets.{name}.root = {root} {what}; expected {layout} there")


def _image_names(folder: Path) -> list:
    with os.scandir(folder) as it:
        return sorted(e.name for e in it if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file())


def _has_flat_images(folder: Path) -> bool:
    with os.scandir(folder) as it:
        return any(e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file() for e in it)


def _solution_hint(folder: Path) -> str:
    """Where LOC_val_solution.csv probably is (Kaggle ships it at the dataset root)."""
    for parent in list(folder.parents)[:4]:
        if (parent / "LOC_val_solution.csv").is_file():
            return str(parent / "LOC_val_solution.csv")
    return "LOC_val_solution.csv"


def _first(items, n: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, d, e and 12 more``."""
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def list_images(name: str, folder: Path, wnids, key: str, what: str) -> tuple:
    """Relative paths ``<wnid>/<file>`` (sorted per class, classes in ``wnids`` order) and class positions.

    Every wnid needs a non-empty folder; a flat folder of images gets the rearrangement hint.
    """
    if not folder.is_dir():
        raise DataError(f"ImageNet {what} folder {folder} does not exist; set datasets.{name}.{key}")
    paths, labels, missing, empty = [], [], [], []
    for i, wnid in enumerate(wnids):
        d = folder / wnid
        if not d.is_dir():
            missing.append(wnid)
            continue
        names = _image_names(d)
        if not names:
            empty.append(wnid)
        paths.extend(f"{wnid}/{n}" for n in names)
        labels.extend([i] * len(names))
    if missing and _has_flat_images(folder):
        hint = REARRANGE_HINT.format(val=folder, solution=_solution_hint(folder), name=name)
        raise DataError(
            f"ImageNet {what} images in {folder} are flat (image files directly in the folder), but {name} needs "
            f"them sorted into one folder per class (<wnid>/*.JPEG): run {hint}"
        )
    if missing:
        shown = _first(missing)
        raise DataError(
            f"{len(missing)} ImageNet class folder(s) that {name} needs are missing in the {what} folder {folder}: "
            f"{shown} (expected {folder}/<wnid>/*.JPEG for all {len(wnids)} classes; check datasets.{name}.{key})"
        )
    if empty:
        shown = _first([str(folder / w) for w in empty])
        raise DataError(
            f"ImageNet class folder(s) with no images ({', '.join(e.upper() for e in IMAGE_EXTENSIONS)}) "
            f"in the {what} folder: {shown}; re-extract ImageNet there (datasets.{name}.{key})"
        )
    return np.asarray(paths, dtype=str), np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------- the datasets


def _leaf_names(info_dir: Path) -> dict:
    """wnid -> first synonym of its ImageNet class name (``dataset_class_info.json``)."""
    info = breeds._read_class_info(Path(info_dir) / "dataset_class_info.json")
    return {wnid: label.split(",")[0].strip() for _, wnid, label in info}


class BreedsDataset:
    """One BREEDS dataset: the fgbench dataset interface (see ``fgbench.data``)."""

    IMAGE_SIZE = IMAGE_SIZE
    NORMALIZE = NORMALIZE
    TRANSFORMS = TRANSFORMS
    SETTINGS = SETTINGS
    READS_FILES = True  # read as image files: can be decoded once into a store (fgbench.data.store)

    def __init__(self, name: str):
        if name not in breeds.BREEDS:
            raise ValueError(f"unknown BREEDS dataset {name!r}; valid: {', '.join(breeds.BREEDS)}")
        self.NAME = name

    def __repr__(self):
        return f"BreedsDataset({self.NAME!r})"

    def classes(self, cfg: dict, allow_download: bool = True) -> tuple:
        """``(BreedsClasses, hierarchy folder)`` for ``cfg`` (the hierarchy located or downloaded)."""
        split = cfg.get("breeds_split")
        if split not in breeds.SPLITS:
            raise ConfigError(
                f"config key 'datasets.{self.NAME}.breeds_split' is {split!r}; valid values: null, rand, good, bad"
            )
        info_dir = locate_hierarchy(
            self.NAME, cfg.get("hierarchy_dir"), cfg.get("download_dir") or f"resources/{self.NAME}", allow_download
        )
        return breeds.breeds_classes(self.NAME, info_dir, split), info_dir

    def read(self, cfg: dict, allow_download: bool = True) -> dict:
        """Train and test image files with global fine labels, the class table and names."""
        classes, info_dir = self.classes(cfg, allow_download)
        train_dir, default_val = locate_imagenet(self.NAME, cfg.get("root"))
        val_dir = Path(cfg["val_root"]) if cfg.get("val_root") else default_val
        source = [w for ws in classes.source_wnids for w in ws]
        source_coarse = [c for c, ws in enumerate(classes.source_wnids) for _ in ws]
        target = [w for ws in classes.target_wnids for w in ws]
        target_coarse = [c for c, ws in enumerate(classes.target_wnids) for _ in ws]
        if classes.split is None:  # SCGM / ANCOR: the val images of the same subclasses
            test_wnids, test_offset = source, 0
        else:  # novel subclasses, numbered after the source ones
            test_wnids, test_offset = target, len(source)
        train_paths, train_fine = list_images(self.NAME, train_dir, source, "root", "train")
        test_paths, test_fine = list_images(self.NAME, val_dir, test_wnids, "val_root", "validation")
        names = _leaf_names(info_dir)
        wnids = source + target
        return {
            "train": (ImageFiles(train_dir, train_paths), train_fine),
            "test": (ImageFiles(val_dir, test_paths), test_fine + test_offset),
            "fine_to_coarse": np.asarray(source_coarse + target_coarse, dtype=np.int64),
            "fine_names": [f"{w} {names.get(w, w)}" for w in wnids],
            "coarse_names": list(classes.superclass_names),
        }


DATASETS = {name: BreedsDataset(name) for name in ("living17", "nonliving26", "entity13", "entity30")}
LIVING17, NONLIVING26, ENTITY13, ENTITY30 = DATASETS.values()


# --------------------------------------------------------------------------- val rearrangement


def read_val_solution(solution) -> list:
    """``(image_id, wnid)`` rows of ``LOC_val_solution.csv`` (header ``ImageId,PredictionString``;
    the first token of PredictionString is the wnid)."""
    solution = Path(solution)
    try:
        with open(solution, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read the ImageNet validation labels {solution} ({e})") from e
    expected = (
        "expected LOC_val_solution.csv: header 'ImageId,PredictionString', rows 'ILSVRC2012_val_00000001,n01751748 ...'"
    )
    if not rows or [c.strip() for c in rows[0]] != ["ImageId", "PredictionString"]:
        raise DataError(f"{solution} does not start with the header 'ImageId,PredictionString'; {expected}")
    out, seen = [], set()
    for lineno, row in enumerate(rows[1:], 2):
        if not row or not "".join(row).strip():
            continue
        tokens = row[1].split() if len(row) == 2 else []
        if not tokens or not WNID.match(tokens[0]) or not row[0].strip():
            raise DataError(f"{solution} line {lineno}: {','.join(row)!r} is not 'ImageId,<wnid> ...'; {expected}")
        image_id = row[0].strip()
        if image_id in seen:
            raise DataError(f"{solution} line {lineno}: image {image_id} is listed twice")
        seen.add(image_id)
        out.append((image_id, tokens[0]))
    if not out:
        raise DataError(f"{solution} lists no images; {expected}")
    return out


def rearrange_val(val_dir, solution, out, copy: bool = False) -> dict:
    """Sort the flat ImageNet val images into ``<out>/<wnid>/<ImageId>.JPEG``; returns counts.

    Non-destructive: ``out`` gets symlinks to the (absolute) original files, or copies with
    ``copy``. Built in a temporary folder next to ``out`` and renamed into place, so ``out``
    is either complete or absent. Every image the CSV lists must be in ``val_dir``.
    """
    val_dir, out = Path(val_dir), Path(out)
    if not val_dir.is_dir():
        raise DataError(f"ImageNet validation folder {val_dir} does not exist (--val-dir)")
    rows = read_val_solution(solution)
    with os.scandir(val_dir) as it:
        files = {Path(e.name).stem: e.name for e in it if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()}
    missing = [image_id for image_id, _ in rows if image_id not in files]
    if missing:
        shown = _first(missing)
        already = " (it holds no images directly: is it already sorted into wnid folders?)" if not files else ""
        raise DataError(
            f"{len(missing)} of the {len(rows)} images listed in {solution} are missing in {val_dir}{already}: {shown}; "
            f"expected {val_dir}/<ImageId>.JPEG, the flat ILSVRC2012 validation images (re-extract them)"
        )
    if out.exists():
        raise DataError(f"{out} already exists; delete it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp"))
    try:
        source_root = val_dir.absolute()
        for wnid in sorted({w for _, w in rows}):
            (tmp / wnid).mkdir()
        for image_id, wnid in rows:
            name = files[image_id]
            if copy:
                shutil.copy2(source_root / name, tmp / wnid / name)
            else:
                os.symlink(source_root / name, tmp / wnid / name)
        os.chmod(tmp, 0o777 & ~_umask())
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"images": len(rows), "classes": len({w for _, w in rows})}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
