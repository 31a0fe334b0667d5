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
from ..errors import DataError, FgbenchError
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
    return layer_units(arrays, layer, protocol, device)[0]


def layer_units(arrays, layer: str, protocol: dict, device="cpu"):
    """``(results, units, draws_hash)`` of one protocol on one layer: ``results`` as
    :func:`evaluate_layer`, ``units`` {metric: one value per unit} (fgbench.evaluate.units)."""
    from .closed_set import closed_set_metrics, per_image_accuracy
    from .fewshot import fewshot_accuracy  # torch only when evaluating
    from .retrieval import retrieval_units
    from .units import split_hash

    p = {k: v for k, v in protocol.items() if k not in ("kind", "name")}
    if protocol["kind"] == "closed_set":
        probs, labels = layer_features(arrays, layer), np.asarray(arrays["fine"])
        if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
            raise DataError(f"closed_set: labels must be the classifier's classes 0..{probs.shape[1] - 1}, "
                            f"got {labels.min()}..{labels.max()} (is this a closed_set run?)")
        res = closed_set_metrics(probs, labels, ece_bins=p["ece_bins"])
        results = [(metric, value, None, len(labels)) for metric, value in res.items()]
        return results, {"accuracy": per_image_accuracy(probs, labels)}, split_hash(arrays)
    if protocol["kind"] == "fewshot":
        check_ways(arrays["fine"], protocol)
        features, aug = layer_features(arrays, layer, aug=True)
        res = fewshot_accuracy(features, aug, arrays["fine"], arrays["coarse"], device=device, **p)
        return [("accuracy", res["accuracy"], res["ci95"], res["n"])], {"accuracy": res["per_episode"]}, res["draws_hash"]
    res, per_query = retrieval_units(layer_features(arrays, layer), arrays["fine"], **p)
    results = [(metric, value, None, len(arrays["fine"])) for metric, value in res.items()]
    return results, per_query, split_hash(arrays)


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
    return protocol_units(arrays, protocol, device)[0]


def protocol_units(arrays, protocol: dict, device="cpu"):
    """``(results, per_layer, draws_hash)``: :func:`evaluate_protocol`'s results, the per-unit
    values {layer: {metric: array}} and the hash of the units (the same on every layer)."""
    results, per_layer, digest = [], {}, ""
    for layer in protocol_layers(arrays, protocol):
        rows, per_layer[layer], digest = layer_units(arrays, layer, protocol, device)
        results += [(layer, *row) for row in rows]
    return results, per_layer, digest


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
    return metric_rows_and_units(embeddings_path, protocol, run, config_hash, device)[0]


def metric_rows_and_units(embeddings_path, protocol: dict, run: dict, config_hash: str, device="cpu"):
    """``(rows, draws_hash, per_layer)``: :func:`metric_rows` and the per-unit values for
    :func:`fgbench.evaluate.units.write_units`."""
    from ..provenance import row_hash

    arrays = load_embeddings(embeddings_path)
    config_hash = row_hash(config_hash, arrays)  # covers the data and the code the embeddings came from
    results, per_layer, digest = protocol_units(arrays, protocol, device)
    return tidy_rows(results, run, protocol["name"], config_hash), digest, per_layer


def evaluate_to_file(embeddings_path, protocol: dict, run: dict, config_hash: str, out, device="cpu") -> None:
    """Evaluate one embeddings file on one protocol and write the metrics JSON ``out`` with its
    per-unit file beside it (``fgbench evaluate``, ``fgbench evaluate-model``). A protocol the
    test split cannot serve (e.g. too few images per class for its episodes) is an FgbenchError."""
    from .units import write_metrics

    try:
        rows, digest, per_layer = metric_rows_and_units(embeddings_path, protocol, run, config_hash, device)
    except ValueError as e:
        raise FgbenchError(f"{embeddings_path}: {e}") from e
    write_metrics(out, rows, digest, per_layer, protocol["name"])


__all__ = ["evaluate_to_file", "PROTOCOLS", "evaluate_layer", "evaluate_protocol", "layer_features", "layer_names", "layer_units",
           "load_embeddings", "metric_rows", "metric_rows_and_units", "protocol_layers", "protocol_units",
           "tidy_rows"]
