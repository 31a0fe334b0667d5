"""Reader for the IDX format of MNIST and Fashion-MNIST (gzipped or not).

Layout (big-endian): two zero bytes, a type byte, a dimension-count byte, one uint32 per
dimension, then the data in C order. Images have magic 0x803 (N, 28, 28), labels 0x801 (N,).
"""

import gzip
from pathlib import Path

import numpy as np

from ..errors import DataError

IMAGES_MAGIC = 0x803
LABELS_MAGIC = 0x801
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path, expected_magic: int) -> np.ndarray:
    """Read one IDX file into a numpy array, checking its magic number and its length."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # a truncated .gz raises EOFError
        raise DataError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(raw)} bytes, no header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"IDX file {path} has magic 0x{magic:08x}, expected 0x{expected_magic:08x}: "
            "not an IDX file of this kind (wrong file, or images and labels swapped?)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"IDX file {path} is truncated or padded: {len(raw)} bytes, "
            f"expected {expected} for shape {shape}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
