"""Image collections that do not live in memory, and the test that tells them apart.

``Split.images`` is one of:

- a uint8 ``numpy.ndarray`` (N, H, W) or (N, H, W, C) in memory (Fashion-MNIST, CIFAR-100);
- a read-only ``numpy.memmap`` of the same shape, or a :class:`MappedRows` view of one
  (tieredImageNet: decoded once by ``prepare`` into ``.npy`` files next to ``data.npz``);
- an :class:`ImageFiles` (BREEDS: JPEG paths under an ImageNet folder, decoded on access);
- a ``fgbench.data.store.StoredImages`` (the same files decoded once by ``prepare`` into a
  memory-mapped image store, ``store: resized``): uint8 (H, W, 3) of varying sizes, as ImageFiles.

All of them support ``len(images)``, ``images[i]`` (one uint8 (H, W[, C]) array) and
``images[index_array_or_mask]`` (a subset of the same kind, so ``Split.subset`` works unchanged;
a plain memmap gives an in-memory copy, which is why ``Split`` wraps memmaps in ``MappedRows``).
Only an in-memory array may be turned into one tensor at once: check with :func:`is_in_memory`
and otherwise read item by item (for example in DataLoader workers).

:class:`EncodedImages` (PNG byte strings, decoded one at a time) is what a loader hands to
``prepare``, which decodes it once into ``.npy`` files; it never reaches a ``Split``.
"""

import io
import operator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError


def is_in_memory(images) -> bool:
    """True for a plain in-memory ndarray; False for a memmap, a MappedRows view or ImageFiles."""
    return isinstance(images, np.ndarray) and not isinstance(images, np.memmap)


def _is_subset_key(key) -> bool:
    """A slice, list, index array or mask (a subset), as opposed to one integer (one image)."""
    if isinstance(key, (slice, list, tuple)):
        return True
    return hasattr(key, "__array__") and not isinstance(key, np.generic) and np.ndim(key) > 0


def _subset_index(n: int, key) -> np.ndarray:
    """Positions selected by a slice, an index array or a boolean mask over ``n`` items."""
    if isinstance(key, slice):
        return np.arange(n)[key]
    key = np.asarray(key)
    if key.dtype == bool:
        if key.shape != (n,):
            raise IndexError(f"boolean mask of shape {key.shape} for {n} images")
        return np.flatnonzero(key)
    if key.size and not np.issubdtype(key.dtype, np.integer):
        raise IndexError(f"images can be indexed by integers or a boolean mask, not {key.dtype}")
    return np.arange(n)[key.astype(np.int64)]  # bounds-checked, negative indices allowed


@contextmanager
def image_errors(what: str, fix: str):
    """PIL's errors on opening or decoding an image as one ``DataError`` naming ``what``."""
    try:
        yield
    except FileNotFoundError as e:
        raise DataError(f"image {what} is missing; {fix}") from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"image {what} cannot be decoded ({type(e).__name__}: {e}); {fix}") from e


def decode_image(source, what: str, fix: str) -> np.ndarray:
    """Decode an image file or bytes into uint8 RGB (H, W, 3); ``DataError`` naming ``what`` else."""
    with image_errors(what, fix), Image.open(source) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)


class ImageFiles:
    """Image files under ``root`` (``paths`` relative to it), decoded on access with PIL.

    ``files[i]`` is image i as uint8 (H, W, 3) RGB (sizes vary); ``files[index_array]`` or
    ``files[mask]`` is a new ImageFiles. A missing or undecodable file raises ``DataError``
    naming its path.
    """

    FIX = (
        "re-extract this file from the dataset's archive (or delete it and rerun `fgbench prepare`, "
        "snakemake: delete results/data/<dataset>/data.npz) so the prepared file list matches the disk"
    )

    def __init__(self, root, paths):
        self.root = Path(root)
        self.paths = np.asarray(paths, dtype=str).reshape(-1)

    def __len__(self):
        return len(self.paths)

    def path(self, i) -> Path:
        """The full path of image ``i``."""
        return self.root / self.paths[operator.index(i)]

    def __getitem__(self, key):
        if _is_subset_key(key):
            return ImageFiles(self.root, self.paths[_subset_index(len(self), key)])
        return decode_image(self.path(key), str(self.path(key)), self.FIX)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return f"ImageFiles({len(self)} images under {self.root})"


class MappedRows:
    """Rows ``index`` of an on-disk array (a memmap), read lazily: a subset that stays on disk.

    ``rows[i]`` reads one image into memory; ``rows[index_or_mask]`` is another MappedRows;
    ``np.asarray(rows)`` reads them all (only for small subsets).
    """

    def __init__(self, base, index=None):
        self.base = base
        self.index = np.arange(len(base)) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self):
        return len(self.index)

    @property
    def shape(self):
        return (len(self), *self.base.shape[1:])

    @property
    def dtype(self):
        return self.base.dtype

    def __getitem__(self, key):
        if _is_subset_key(key):
            return MappedRows(self.base, self.index[_subset_index(len(self), key)])
        return np.asarray(self.base[self.index[operator.index(key)]])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __array__(self, dtype=None, copy=None):
        out = np.asarray(self.base[self.index])
        return out if dtype is None else out.astype(dtype)

    def __reduce__(self):
        # Pickled by file name (e.g. for spawned DataLoader workers): a memmap itself pickles its data.
        base = self.base
        if isinstance(base, np.memmap) and base.filename is not None:
            return _reopen_rows, (base.filename, base.dtype.str, base.shape, base.offset, self.index)
        return MappedRows, (np.asarray(base), self.index)

    def __repr__(self):
        return f"MappedRows({len(self)} of {len(self.base)} images {self.base.shape[1:]})"


class JoinedImages:
    """The images of several containers one after the other, read lazily: ``joined[i]`` reads
    one image from the container that holds it; ``joined[index_or_mask]`` is another
    JoinedImages. Memmaps are kept on disk (as :class:`MappedRows`)."""

    def __init__(self, parts, index=None):
        self.parts = [MappedRows(p) if isinstance(p, np.memmap) else p for p in parts]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.index = np.arange(self.starts[-1]) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self):
        return len(self.index)

    @property
    def shape(self):
        return (len(self), *self.parts[0].shape[1:])

    def __getitem__(self, key):
        if _is_subset_key(key):
            return JoinedImages(self.parts, self.index[_subset_index(len(self), key)])
        pos = int(self.index[operator.index(key)])
        part = int(np.searchsorted(self.starts, pos, side="right")) - 1
        return self.parts[part][pos - int(self.starts[part])]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self):
        return f"JoinedImages({len(self)} images of {len(self.parts)} parts)"


def join_images(first, second):
    """The images of ``first`` then ``second`` (two splits of one dataset) as one container:
    in-memory arrays concatenated, file lists joined, anything else (memmaps, encoded images)
    as a lazy :class:`JoinedImages`."""
    if is_in_memory(first) and is_in_memory(second):
        return np.concatenate([first, second])
    if isinstance(first, ImageFiles) and isinstance(second, ImageFiles) and first.root == second.root:
        return ImageFiles(first.root, np.concatenate([first.paths, second.paths]))
    return JoinedImages([first, second])


def _reopen_rows(filename, dtype, shape, offset, index):
    return MappedRows(np.memmap(filename, dtype=np.dtype(dtype), mode="r", offset=offset, shape=tuple(shape)), index)


class LazyBlobs:
    """A list of encoded images loaded by ``loader`` on first use and dropped by ``release``.

    ``expected``: the number of entries the labels promise; a different count is a ``DataError``
    naming ``source``.
    """

    def __init__(self, loader, expected: int, source: str):
        self.loader, self.expected, self.source = loader, expected, source
        self._blobs = None

    def get(self):
        if self._blobs is None:
            blobs = self.loader()
            if len(blobs) != self.expected:
                raise DataError(f"{self.source} holds {len(blobs)} images but its labels list {self.expected}")
            self._blobs = blobs
        return self._blobs

    def release(self):
        self._blobs = None


class EncodedImages:
    """Encoded images (PNG byte strings) decoded one at a time, all of ``shape`` (H, W, C).

    ``blobs``: a list, or a :class:`LazyBlobs`; ``index``: which of them (positions in the
    source, named in errors); ``source``: what to call the list in messages.
    """

    def __init__(self, blobs, shape, source: str, index=None, fix: str = ""):
        self.blobs, self.shape_hw, self.source, self.fix = blobs, tuple(shape), source, fix
        n = blobs.expected if isinstance(blobs, LazyBlobs) else len(blobs)
        self.index = np.arange(n) if index is None else np.asarray(index, dtype=np.int64)

    def __len__(self):
        return len(self.index)

    @property
    def shape(self):
        return (len(self), *self.shape_hw)

    def _list(self):
        return self.blobs.get() if isinstance(self.blobs, LazyBlobs) else self.blobs

    def release(self):
        """Drop the loaded byte strings (reloaded on next use)."""
        if isinstance(self.blobs, LazyBlobs):
            self.blobs.release()

    def __getitem__(self, key):
        if _is_subset_key(key):
            index = self.index[_subset_index(len(self), key)]
            return EncodedImages(self.blobs, self.shape_hw, self.source, index, self.fix)
        pos = int(self.index[operator.index(key)])
        blob = self._list()[pos]
        what = f"{pos} of {self.source}"
        try:
            data = blob.tobytes() if isinstance(blob, np.ndarray) else bytes(blob)
        except (TypeError, ValueError) as e:
            raise DataError(f"image {what} is a {type(blob).__name__}, not encoded image bytes; {self.fix}") from e
        image = decode_image(io.BytesIO(data), what, self.fix)
        if image.shape != self.shape_hw:
            raise DataError(f"image {what} is {image.shape}, expected {self.shape_hw}; {self.fix}")
        return image

    def __repr__(self):
        return f"EncodedImages({len(self)} of {self.source})"


def write_npy(images, path, chunk: int = 4096) -> None:
    """Decode ``images`` (len + int indexing) into a uint8 ``.npy`` at ``path``, ``chunk`` at a time.

    The file is written under a temporary name and renamed (a killed job leaves no half file);
    decoded chunks go straight to the file, so memory holds one chunk, not the whole array.
    """
    from ..io import atomic_path

    shape = tuple(images.shape)
    with atomic_path(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            for start in range(0, shape[0], chunk):
                stop = min(start + chunk, shape[0])
                out[start:stop] = np.stack([images[i] for i in range(start, stop)])
            out.flush()
        finally:
            del out
