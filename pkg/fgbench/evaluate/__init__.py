"""Evaluation: pure functions of arrays (fewshot, retrieval), and the protocol dispatcher that
turns an embeddings file into tidy metric rows."""

import numpy as np

from .. import __version__
from ..errors import DataError
from .protocols import PROTOCOLS


def evaluate_protocol(arrays, protocol: dict, device="cpu"):
    """Metrics of one protocol on the arrays of an embeddings file: [(metric, value, ci95, n)]."""
    from .fewshot import fewshot_accuracy  # torch only when evaluating
    from .retrieval import retrieval_metrics

    p = {k: v for k, v in protocol.items() if k not in ("kind", "name")}
    if protocol["kind"] == "fewshot":
        if "aug_features" not in arrays:
            raise DataError("the embeddings file has no augmented views (aug_features); set embed.views >= n_aug")
        res = fewshot_accuracy(arrays["features"], arrays["aug_features"], arrays["fine"], arrays["coarse"], device=device, **p)
        return [("accuracy", res["accuracy"], res["ci95"], res["n"])]
    res = retrieval_metrics(arrays["features"], arrays["fine"], **p)
    return [(metric, value, None, len(arrays["fine"])) for metric, value in res.items()]


def metric_rows(embeddings_path, protocol: dict, run: dict, config_hash: str, device="cpu"):
    """Tidy rows (DESIGN.md, "Files between rules") for one run and one protocol."""
    with np.load(embeddings_path) as z:
        arrays = {k: z[k] for k in z.files}
    return [
        {**run, "protocol": protocol["name"], "metric": metric, "value": float(value),
         "ci95": None if ci is None else float(ci), "n": int(n),
         "config_hash": config_hash, "fgbench_version": __version__}
        for metric, value, ci, n in evaluate_protocol(arrays, protocol, device)
    ]


__all__ = ["PROTOCOLS", "evaluate_protocol", "metric_rows"]
