"""Per-unit results beside a metrics file: one value per episode (few-shot), per query image
(retrieval) or per test image (closed set), and a hash of what decided the units.

File contract (``{protocol}.npz`` beside ``{protocol}.json``, written by ``fgbench evaluate`` and
``fgbench combine``; DESIGN.md and docs/usage.md):

- ``draws_hash``: 0-d unicode, :func:`draws_hash` of the episode draws (few-shot) or of the test
  split's ``index`` and ``fine`` arrays (retrieval, closed set). Two runs scored on the same test
  split with the same protocol have the same hash, whatever the method.
- ``{layer}/{metric}``: 1-d float64, one value per unit in unit order, whose mean is the JSON
  row's ``value`` for that layer and metric (fractions in [0, 1]).
- ``layers``: 1-d unicode, the layers present; ``protocol``: 0-d unicode, the protocol's name.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ..io import atomic_write_bytes, atomic_write_text


def _update(h, value) -> None:
    """Feed ``value`` to the hash in a form that depends only on its content: integer arrays as
    int64, other numbers as float64, strings as UTF-8; shapes and lengths included."""
    if isinstance(value, (list, tuple)):
        h.update(f"list{len(value)}[".encode())
        for item in value:
            _update(h, item)
        h.update(b"]")
        return
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iub":
            data = np.ascontiguousarray(value, dtype="<i8").tobytes()
        elif value.dtype.kind == "f":
            data = np.ascontiguousarray(value, dtype="<f8").tobytes()
        else:
            data = "\0".join(str(v) for v in value.ravel()).encode()
        h.update(f"array{value.shape}:".encode() + data)
        return
    if isinstance(value, np.generic):
        value = value.item()
    h.update(json.dumps(value).encode())


def draws_hash(**parts) -> str:
    """sha256 hex digest of named parts (arrays, lists of them, numbers, strings, None), in key
    order: ``draws_hash(index=..., fine=...)`` for a test split, ``fewshot_draws_hash`` for
    episodes."""
    h = hashlib.sha256()
    for key in sorted(parts):
        h.update(key.encode() + b"=")
        _update(h, parts[key])
        h.update(b";")
    return h.hexdigest()


def split_hash(arrays: dict) -> str:
    """The hash of a test split's units (retrieval, closed set): its ``index`` and ``fine``."""
    return draws_hash(index=np.asarray(arrays["index"]), fine=np.asarray(arrays["fine"]))


def fewshot_draws_hash(draws, protocol: dict) -> str:
    """The hash of few-shot episodes: per episode the support and query indices into the test
    split, in order, and the protocol's sampling parameters."""
    sampling = {k: protocol.get(k) for k in ("n_way", "n_shot", "n_query", "n_aug", "intra", "max_ways")}
    episodes = [[np.asarray(s), np.asarray(q)] for s, q, _ in draws]
    return draws_hash(episodes=episodes, **sampling)


def write_metrics(out, rows, draws_hash: str, per_layer: dict, protocol: str) -> None:
    """The metrics JSON ``out`` and, beside it, the per-unit results, each written atomically;
    the JSON last, so a complete JSON always has its per-unit file."""
    write_units(units_path(out), draws_hash, per_layer, protocol)
    atomic_write_text(out, json.dumps(rows, indent=1) + "\n")


def write_units(path, draws_hash: str, per_layer: dict, protocol: str | None = None) -> None:
    """Write ``{protocol}.npz`` atomically. ``per_layer``: {layer: {metric: 1-d array}};
    ``protocol`` defaults to the file's stem."""
    arrays = {
        "draws_hash": np.array(draws_hash),
        "protocol": np.array(protocol or Path(path).stem),
        "layers": np.array(list(per_layer), dtype=str),
    }
    for layer, metrics in per_layer.items():
        for metric, values in metrics.items():
            arrays[f"{layer}/{metric}"] = np.asarray(values, dtype=np.float64).ravel()
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_units(path) -> dict:
    """``{"draws_hash": str, "protocol": str, "layers": [str], "units": {layer: {metric: array}}}``."""
    with np.load(path, allow_pickle=False) as z:
        layers = [str(v) for v in np.atleast_1d(z["layers"])]
        units = {layer: {} for layer in layers}
        for key in z.files:
            layer, sep, metric = key.rpartition("/")
            if sep and layer in units:
                units[layer][metric] = z[key]
        return {"draws_hash": str(z["draws_hash"]), "protocol": str(z["protocol"]), "layers": layers,
                "units": units}


def units_path(metrics_path) -> Path:
    """The per-unit file beside a metrics file: ``x/{protocol}.json`` -> ``x/{protocol}.npz``."""
    return Path(metrics_path).with_suffix(".npz")
