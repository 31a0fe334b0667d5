"""What a result depends on, as short hashes: the run's spec, the prepared data, the code.

A checkpoint, a model, an embeddings file and every metric row carry a provenance hash that
covers the train spec, the prepared data's identity (``data_hash``: a content hash computed once
when ``data.npz`` is written, stored in it) and the code version (``code_version``: the package
version plus a hash of the package's Python sources). A checkpoint whose hash differs from the
run's is not resumed, so changing the data section (``root``, ``max_images_per_class``,
``val_fraction``, ``split_seed``) or the code after a kill starts training over instead of mixing
data; the metric rows of such runs carry different hashes.
"""

import functools
import hashlib
import json
from pathlib import Path

import numpy as np

from . import __version__

PACKAGE = Path(__file__).resolve().parent


def digest(*parts) -> str:
    """A 12-hex-digit hash of JSON-able ``parts``."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


@functools.cache
def code_version() -> str:
    """``<version>+<hash of every .py file of the package>``: an edit of the code changes it, a
    reinstall of the same code does not (nothing here depends on paths or file times)."""
    sources = hashlib.sha1()
    for path in sorted(PACKAGE.rglob("*.py")):
        sources.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{__version__}+{sources.hexdigest()[:10]}"


def arrays_hash(arrays: dict) -> str:
    """Content hash of named arrays (dtype, shape and bytes of each, in name order)."""
    h = hashlib.sha1()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes() if a.dtype != object else json.dumps(a.tolist()).encode())
    return h.hexdigest()[:12]


def file_hash(path) -> str:
    """Content hash of a file (a data.npz written before ``data_hash`` existed)."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def run_hash(spec_hash: str, data_hash: str) -> str:
    """Provenance of a trained model: its train spec, its data, the code."""
    return digest(spec_hash, data_hash, code_version())


def row_hash(config_hash: str, *embeddings) -> str:
    """The ``config_hash`` of metric rows: the config's hash, plus the provenance of the
    embeddings files they were computed from (when those carry one)."""
    sources = [str(a["provenance"]) for a in embeddings if "provenance" in a]
    return digest(config_hash, *sources) if sources else config_hash
