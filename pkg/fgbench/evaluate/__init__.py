"""Evaluation: pure functions of arrays (fewshot, retrieval, combine), and the protocol
dispatcher that turns an embeddings file into tidy metric rows.

An embeddings file (``fgbench embed``) holds ``layers`` (layer names, config order) and per
layer ``features_{layer}`` (N, D) and, for the test split, ``aug_features_{layer}``
(N, views, D); plus ``fine``, ``coarse``, ``index``, ``fine_names`` and ``coarse_names``.
Every protocol is evaluated on every layer it applies to: ``closed_set`` on the ``probs`` layer
(class probabilities) only, the other protocols on every other layer; each metric row names its
layer.
"""

import zipfile

import numpy as np

from .. import __version__
from ..errors import DataError
from .protocols import PROBS_LAYER, PROTOCOLS


def load_embeddings(path) -> dict:
    """The arrays of an embeddings file; ``DataError`` when it lacks the per-layer format."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: cannot read the embeddings file ({e})") from e
    if "layers" not in arrays:
        raise DataError(f"{path}: no 'layers' array (written by an older fgbench?); rerun `fgbench embed`")
    bad = non_finite(arrays)
    if bad:  # a NaN passes the cosine classifier and reports chance-level numbers in every table
        layer, count = next(iter(bad.items()))
        raise DataError(f"{path}: layer '{layer}' holds {count} non-finite values (NaN or inf); delete the file and "
                        "rerun `fgbench embed` (snakemake reruns it), and retrain if they come back")
    return arrays


def non_finite(arrays) -> dict:
    """{layer: number of NaN or infinite values} over its plain and augmented features; only
    layers that have some."""
    counts = {}
    for key, values in arrays.items():
        if key.startswith(("features_", "aug_features_")) and np.issubdtype(values.dtype, np.floating):
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            if bad:
                layer = key.split("features_", 1)[1]
                counts[layer] = counts.get(layer, 0) + bad
    return counts


def layer_names(arrays) -> list:
    """The layers of an embeddings file, in config order (the first selects the model)."""
    return [str(layer) for layer in np.atleast_1d(arrays["layers"])]


def layer_features(arrays, layer: str, aug: bool = False):
    """``features_{layer}``, or ``(features, aug_features)`` of the layer with ``aug=True``."""
    if f"features_{layer}" not in arrays:
        raise DataError(f"layer '{layer}' is not in the embeddings file (layers: {', '.join(layer_names(arrays))})")
    if not aug:
        return arrays[f"features_{layer}"]
    if f"aug_features_{layer}" not in arrays:
        raise DataError(f"the embeddings file has no augmented views of layer '{layer}' "
                        f"(aug_features_{layer}); few-shot needs the test split with embed.views >= n_aug")
    return arrays[f"features_{layer}"], arrays[f"aug_features_{layer}"]


def check_ways(fine, protocol: dict) -> None:
    """A fewshot protocol asking for more ways than the test classes that can fill an episode
    (``n_shot + n_query`` images) stops here: it would silently become all-way."""
    n_way, needed = protocol["n_way"], protocol["n_shot"] + protocol["n_query"]
    if protocol.get("intra") or n_way == "all":
        return
    _, counts = np.unique(np.asarray(fine), return_counts=True)
    usable = int((counts >= needed).sum())
    if n_way > usable:
        key = f"protocols.{protocol.get('name', '<protocol>')}"
        raise DataError(f"config key '{key}.n_way' = {n_way} exceeds the {usable} test classes with at least "
                        f"n_shot + n_query = {needed} images; lower n_way (or n_query), or use n_way: all")


def evaluate_layer(arrays, layer: str, protocol: dict, device="cpu"):
    """Metrics of one protocol on one layer: [(metric, value, ci95, n)]."""
    from .closed_set import closed_set_metrics
    from .fewshot import fewshot_accuracy  # torch only when evaluating
    from .retrieval import retrieval_metrics

    p = {k: v for k, v in protocol.items() if k not in ("kind", "name")}
    if protocol["kind"] == "closed_set":
        probs, labels = layer_features(arrays, layer), np.asarray(arrays["fine"])
        if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
            raise DataError(f"closed_set: labels must be the classifier's classes 0..{probs.shape[1] - 1}, "
                            f"got {labels.min()}..{labels.max()} (is this a closed_set run?)")
        res = closed_set_metrics(probs, labels, ece_bins=p["ece_bins"])
        return [(metric, value, None, len(labels)) for metric, value in res.items()]
    if protocol["kind"] == "fewshot":
        check_ways(arrays["fine"], protocol)
        features, aug = layer_features(arrays, layer, aug=True)
        res = fewshot_accuracy(features, aug, arrays["fine"], arrays["coarse"], device=device, **p)
        return [("accuracy", res["accuracy"], res["ci95"], res["n"])]
    res = retrieval_metrics(layer_features(arrays, layer), arrays["fine"], **p)
    return [(metric, value, None, len(arrays["fine"])) for metric, value in res.items()]


def protocol_layers(arrays, protocol: dict) -> list:
    """The layers of an embeddings file that ``protocol`` evaluates: the ``probs`` layer for
    ``closed_set`` (a ``DataError`` without one), every other layer for the rest."""
    layers = layer_names(arrays)
    if protocol["kind"] != "closed_set":
        return [layer for layer in layers if layer != PROBS_LAYER]
    if PROBS_LAYER not in layers:
        raise DataError(f"the closed_set protocol needs the '{PROBS_LAYER}' layer (class probabilities); "
                        f"the embeddings file has {', '.join(layers)}: add it to the method's embed_layer")
    return [PROBS_LAYER]


def evaluate_protocol(arrays, protocol: dict, device="cpu"):
    """Metrics of one protocol on every layer of an embeddings file it applies to
    (``protocol_layers``): [(layer, metric, value, ci95, n)], layers in file order."""
    return [
        (layer, *result)
        for layer in protocol_layers(arrays, protocol)
        for result in evaluate_layer(arrays, layer, protocol, device)
    ]


def tidy_rows(results, run: dict, protocol_name: str, config_hash: str) -> list:
    """Metric rows (DESIGN.md, "Files between rules") from [(layer, metric, value, ci95, n)]."""
    return [
        {**run, "layer": layer, "protocol": protocol_name, "metric": metric, "value": float(value),
         "ci95": None if ci is None else float(ci), "n": int(n),
         "config_hash": config_hash, "fgbench_version": __version__}
        for layer, metric, value, ci, n in results
    ]


def metric_rows(embeddings_path, protocol: dict, run: dict, config_hash: str, device="cpu"):
    """Tidy rows for one run and one protocol, one set per layer of the embeddings file."""
    from ..provenance import row_hash

    arrays = load_embeddings(embeddings_path)
    config_hash = row_hash(config_hash, arrays)  # covers the data and the code the embeddings came from
    return tidy_rows(evaluate_protocol(arrays, protocol, device), run, protocol["name"], config_hash)


__all__ = ["PROTOCOLS", "evaluate_layer", "evaluate_protocol", "layer_features", "layer_names",
           "load_embeddings", "metric_rows", "protocol_layers", "tidy_rows"]
