"""Decode once: a split's image files decoded and resized once by ``prepare`` into one
memory-mapped uint8 file (the *store*), which every method and seed then reads.

Config ``datasets.<name>.store: resized`` (the default ``files`` decodes the JPEGs in every epoch
of every run). Each image is decoded with PIL, converted to RGB and, if its shorter side is
longer than ``store_size`` (default: the dataset's eval resize, 256 for 224 crops), shrunk with
PIL's antialiased bilinear filter so that side is ``store_size`` and the longer one
``int(store_size * long / short)``, torchvision's ``Resize(int)`` rule; smaller images are kept
as they are. So the eval transform ``resize_center_crop`` (Resize(256), CentreCrop(224)) finds
the size it asks for and resizes nothing: the plain features are those of the file path within
one grey level (PIL's rounding to uint8 vs torchvision's float resize). Random resized crops
are cut from the shrunk image instead of the original: the resampling deviation of
docs/deviations.md.

Why raw pixels and not re-encoded JPEGs: ``benchmarks/input_pipeline.py`` measures both; reading
a 256-pixel JPEG again still costs a decode per view-pair, while a memmap read is a copy.

File layout (``<split>_store.u8`` next to ``data.npz``): ``MAGIC``, the 64-hex SHA-256 of the
image list (:func:`list_hash`: root, relative paths, store size, shapes), a newline, then the
images back to back, each (H, W, 3) row-major. ``data.npz`` records per split the file name,
the offsets and shapes and the list hash; :func:`open_store` refuses a file whose length or
header does not match them (a partial or foreign ``prepare``), so a store is never read wrong.
"""

import hashlib
import operator
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..io import atomic_path
from .images import ImageFiles, _is_subset_key, _subset_index, decode_image, image_errors

MAGIC = b"FGBSTORE1\n"
HEADER_BYTES = len(MAGIC) + 64 + 1
KINDS = ("files", "resized")
FIX = "delete results/data/<dataset>/ (or the --out folder of `fgbench prepare`) and prepare again"


def default_size(image_size: int) -> int:
    """The shorter side the store keeps: the eval transforms' Resize before a centre crop
    (256 for 224 crops, as ``fgbench.data.transforms._resize_size``)."""
    return round(image_size * 256 / 224)


def resized_shape(height: int, width: int, short: int) -> tuple:
    """(H, W) after shrinking the shorter side to ``short`` (torchvision's Resize(int) rule);
    an image whose shorter side is ``short`` or less keeps its size."""
    if min(height, width) <= short:
        return height, width
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def shrink(image: np.ndarray, short: int) -> np.ndarray:
    """uint8 (H, W, 3) -> the stored image: PIL's antialiased bilinear resize to
    :func:`resized_shape`, or the image itself when it is already small enough."""
    height, width = resized_shape(*image.shape[:2], short)
    if (height, width) == image.shape[:2]:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def list_hash(files: ImageFiles, short: int, shapes: np.ndarray) -> str:
    """The identity of the image list a store holds: where the images come from and their stored shapes."""
    h = hashlib.sha256(f"{files.root.absolute()}\n{short}\n".encode())
    h.update("\n".join(files.paths.tolist()).encode())
    h.update(np.ascontiguousarray(shapes, dtype=np.int64).tobytes())
    return h.hexdigest()


def _source_size(files: ImageFiles, i: int) -> tuple:
    """(H, W) of image file ``i`` from its header alone (no decoding)."""
    path = files.path(i)
    with image_errors(str(path), ImageFiles.FIX), Image.open(path) as img:
        width, height = img.size
    return height, width


def build_store(files: ImageFiles, path, short: int, threads: int = 1) -> dict:
    """Decode and shrink every image of ``files`` into a store at ``path`` (written under a
    temporary name, renamed when complete). Returns the arrays ``data.npz`` records for it:
    ``offsets``, ``shapes`` and ``list_hash``. A file that cannot be decoded raises ``DataError``
    naming it. ``threads``: images decoded at once (PIL releases the GIL while decoding)."""
    shapes = np.array([(*resized_shape(*_source_size(files, i), short), 3) for i in range(len(files))],
                      dtype=np.int64).reshape(-1, 3)
    sizes = shapes.prod(axis=1)
    offsets = HEADER_BYTES + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    identity = list_hash(files, short, shapes)

    def write_one(out, i):
        image = shrink(decode_image(files.path(i), str(files.path(i)), ImageFiles.FIX), short)
        if image.shape != tuple(shapes[i]):  # the header said one size, the pixels another
            raise DataError(f"image {files.path(i)} decodes to {image.shape[:2]} but its header says "
                            f"{_source_size(files, i)}; {ImageFiles.FIX}")
        out[offsets[i] : offsets[i] + sizes[i]] = image.reshape(-1)

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(MAGIC + identity.encode() + b"\n")
            f.truncate(HEADER_BYTES + int(sizes.sum()))
        if len(files):
            out = np.memmap(tmp, dtype=np.uint8, mode="r+")
            with ThreadPoolExecutor(max(1, threads)) as pool:
                list(pool.map(lambda i: write_one(out, i), range(len(files))))
            out.flush()
            del out
    return {"offsets": offsets, "shapes": shapes, "list_hash": np.str_(identity)}


def open_store(path, offsets, shapes, identity: str) -> "StoredImages":
    """The store at ``path`` as :class:`StoredImages`, after checking that its length and header
    match what ``data.npz`` recorded (``offsets``, ``shapes``, ``identity``); ``DataError`` else."""
    path = Path(path)
    shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 3)
    expected = HEADER_BYTES + int(shapes.prod(axis=1).sum())
    if not path.is_file():
        raise DataError(f"image store {path} is missing; {FIX}")
    size = path.stat().st_size
    if size != expected:
        raise DataError(f"image store {path} holds {size} bytes but its image list ({len(shapes)} images) needs "
                        f"{expected}: a partial or foreign prepare; {FIX}")
    with open(path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if header != MAGIC + str(identity).encode() + b"\n":
        raise DataError(f"image store {path} was built for another image list (checksum {header[len(MAGIC):-1]!r}, "
                        f"expected {identity}); {FIX}")
    return StoredImages(path, offsets, shapes)


class StoredImages:
    """The images of a store, read on access: ``stored[i]`` is image i as uint8 (H, W, 3) (a
    copy, sizes vary), ``stored[index_or_mask]`` another StoredImages over the same file.
    Picklable by file name: a DataLoader worker maps the file again on first read."""

    def __init__(self, path, offsets, shapes, index=None):
        self.path = Path(path)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 3)
        self.index = np.arange(len(self.offsets)) if index is None else np.asarray(index, dtype=np.int64)
        self._data = None

    def __len__(self):
        return len(self.index)

    def _bytes(self):
        if self._data is None or self._pid != os.getpid():  # a forked worker maps it again
            self._data, self._pid = np.memmap(self.path, dtype=np.uint8, mode="r"), os.getpid()
        return self._data

    def __getitem__(self, key):
        if _is_subset_key(key):
            return StoredImages(self.path, self.offsets, self.shapes, self.index[_subset_index(len(self), key)])
        pos = int(self.index[operator.index(key)])
        start, shape = int(self.offsets[pos]), tuple(self.shapes[pos])
        return np.array(self._bytes()[start : start + int(np.prod(shape))]).reshape(shape)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getstate__(self):
        return {**self.__dict__, "_data": None}

    def __repr__(self):
        return f"StoredImages({len(self)} of {len(self.offsets)} images in {self.path})"
