"""Few-shot evaluation of two trained models together: ensemble, concatenation, cascade.

These follow ANCOR's combination scripts (Bukchin et al., CVPR 2021, ``ensemble.py``,
``concat.py``, ``cascade.py``; notes in shared/reference/c2f-methods.md, section 5.6). Model A
and model B are two runs on the same test images (same ``index``, ``fine`` and ``coarse``),
each with a chosen layer. Episodes are those of the single-model protocol (episode i seeded by
i, :func:`fgbench.evaluate.fewshot.draw_episodes`), so a combination is scored on exactly the
episodes its two models were scored on; features are L2-normalised and supports are the
``n_aug`` augmented views of each support image, as in the single-model protocol.

* ``ensemble``: one logistic regression per model on its own features; the prediction is the
  argmax of the geometric mean of the two models' class probabilities. Always logistic
  regression (ANCOR ignores ``--cls`` here).
* ``concat``: the two L2-normalised features concatenated (each block has unit norm), then the
  combination's classifier: ``cosine_nn`` by default (ANCOR's concat.py), or ``logreg``.
* ``cascade``: model A's ``logits`` layer (a coarse classifier) predicts a coarse class for every
  support vector and every query; each query is classified with model B's features using only
  the supports whose predicted coarse class equals the query's, or all supports when there are
  none. Classifier ``cosine_nn`` (default, as ANCOR) or ``logreg`` (one fit per episode and
  predicted coarse class: slower).
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import ConfigError, DataError
from . import layer_features, tidy_rows
from .fewshot import (
    draw_episodes,
    episode_arrays,
    episode_batches,
    fit_predict_logreg,
    mean_ci95,
    predict_cosine_nn,
    predict_proba_logreg,
)
from .protocols import CLASSIFIERS
from .units import fewshot_draws_hash

KINDS = ("ensemble", "concat", "cascade")
#: The classifier of each kind when the combination names none (ANCOR's defaults).
DEFAULT_CLASSIFIER = {"ensemble": "logreg", "concat": "cosine_nn", "cascade": "cosine_nn"}
COMBINATION_KEYS = ("name", "kind", "models", "classifier")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------


def validate_combinations(combinations, method_layers: dict, runs=None) -> list:
    """Check the ``combinations`` config list; return it with ``classifier`` filled in.

    ``method_layers`` maps every method and model (config ``models``) of the config to the tuple
    of its embedded layers (None: any, a precomputed file's are known only when it is read).
    With ``runs`` (the ``(dataset, setting, method or model, seed)`` cells) a combination whose
    two members never share a dataset and setting is an error too. Raises
    ``ConfigError`` naming the key, e.g. ``combinations[1].models[0].layer``.
    """
    if combinations is None:
        return []
    if not isinstance(combinations, list):
        raise ConfigError(f"config key 'combinations' must be a list, got {type(combinations).__name__}")
    resolved, names = [], set()
    for i, comb in enumerate(combinations):
        key = f"combinations[{i}]"
        if not isinstance(comb, dict):
            raise ConfigError(f"config key '{key}' must be a mapping with keys {', '.join(COMBINATION_KEYS)}")
        unknown = set(comb) - set(COMBINATION_KEYS)
        if unknown:
            raise ConfigError(f"unknown key(s) {sorted(unknown)} in '{key}'; valid keys: {', '.join(COMBINATION_KEYS)}")
        for field in ("name", "kind", "models"):
            if field not in comb:
                raise ConfigError(f"config key '{key}.{field}' is missing")
        name = comb["name"]
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"config key '{key}.name' must be a name of letters, digits and _ . + - "
                              f"(it becomes a folder name), got {name!r}")
        if name in method_layers:
            raise ConfigError(f"config key '{key}.name' is '{name}', which is a method's or model's name; choose another")
        if name in names:
            raise ConfigError(f"config key '{key}.name': '{name}' names two combinations")
        names.add(name)
        kind = comb["kind"]
        if kind not in KINDS:
            raise ConfigError(f"config key '{key}.kind' is {kind!r}; valid values: {', '.join(KINDS)}")
        models = comb["models"]
        if not isinstance(models, list) or len(models) != 2:
            raise ConfigError(f"config key '{key}.models' must list exactly two models ({{method, layer}})")
        for j, model in enumerate(models):
            mkey = f"{key}.models[{j}]"
            if not isinstance(model, dict) or set(model) != {"method", "layer"}:
                raise ConfigError(f"config key '{mkey}' must be a mapping with exactly the keys method, layer")
            if model["method"] not in method_layers:
                raise ConfigError(f"config key '{mkey}.method' is {model['method']!r}; "
                                  f"valid methods and models: {', '.join(sorted(method_layers))}")
            layers = method_layers[model["method"]]
            if layers is not None and model["layer"] not in layers:
                raise ConfigError(f"config key '{mkey}.layer' is {model['layer']!r}, which method "
                                  f"'{model['method']}' does not embed; its layers: {', '.join(layers)} "
                                  f"(add it to methods.{model['method']}.embed_layer, or to models.{model['method']}"
                                  ".layers for a model)")
        classifier = comb.get("classifier") or DEFAULT_CLASSIFIER[kind]
        if classifier not in CLASSIFIERS:
            raise ConfigError(f"config key '{key}.classifier' is {classifier!r}; "
                              f"valid values: {', '.join(CLASSIFIERS)}")
        if kind == "ensemble" and classifier != "logreg":
            raise ConfigError(f"config key '{key}.classifier' must be logreg for an ensemble (geometric mean of "
                              f"probabilities), got {classifier!r}")
        if kind == "cascade" and models[0]["layer"] != "logits":
            raise ConfigError(f"config key '{key}.models[0].layer' must be 'logits' for a cascade (model A "
                              f"predicts the coarse class), got {models[0]['layer']!r}")
        out = {"name": name, "kind": kind, "models": [dict(m) for m in models], "classifier": classifier}
        if runs is not None and not combination_cells([out], runs):
            a, b = (m["method"] for m in models)
            raise ConfigError(f"config key '{key}': methods '{a}' and '{b}' never run in the same dataset "
                              "and setting of 'benchmark', so the combination has nothing to combine")
        resolved.append(out)
    return resolved


def combination_cells(combinations, runs) -> list:
    """``(dataset, setting, name, seed)`` for every combination and every benchmark cell
    where both of its members run (``runs``: ``(dataset, setting, method or model, seed)``)."""
    present = {(d, s, m, seed) for d, s, m, seed in runs}
    cells = dict.fromkeys((d, s, seed) for d, s, _, seed in runs)  # benchmark order, no repeats
    return [
        (d, s, comb["name"], seed)
        for comb in combinations
        for d, s, seed in cells
        if all((d, s, model["method"], seed) in present for model in comb["models"])
    ]


def combination_layer(combination: dict) -> str:
    """The ``layer`` field of a combination's metric rows: ``"A_layer+B_layer"``."""
    return "+".join(m["layer"] for m in combination["models"])


# --------------------------------------------------------------------------
# Predictions on a batch of episodes (arrays from episode_arrays)
# --------------------------------------------------------------------------


def ensemble_predict(a, b, n_classes: int, device="cpu") -> np.ndarray:
    """Argmax of the geometric mean of two logistic regressions' probabilities: (E, Q).

    ``a`` and ``b`` are ``(support (E, S, D), support_labels (E, S), query (E, Q, D))`` of the
    two models on the same episodes (same labels). The geometric mean's argmax is the argmax
    of the summed log-probabilities.
    """
    logp = sum(predict_proba_logreg(Xs, ys, Xq, log=True, n_classes=n_classes, device=device)
               for Xs, ys, Xq in (a, b))
    return logp.argmax(2)


def concat_predict(a, b, classifier: str, n_classes: int, device="cpu") -> np.ndarray:
    """Classify on the concatenated features (each model's block L2-normalised): (E, Q)."""
    (Xs_a, ys, Xq_a), (Xs_b, _, Xq_b) = a, b
    Xs = np.concatenate([_l2n(Xs_a), _l2n(Xs_b)], axis=2)
    Xq = np.concatenate([_l2n(Xq_a), _l2n(Xq_b)], axis=2)
    if classifier == "logreg":
        return fit_predict_logreg(Xs, ys, Xq, n_classes=n_classes, device=device)
    return predict_cosine_nn(Xs, ys, Xq, device=device)


def cascade_predict(support_coarse, query_coarse, b, classifier: str, n_classes: int, device="cpu") -> np.ndarray:
    """Classify each query with model B among the supports of its predicted coarse class.

    ``support_coarse (E, S)`` and ``query_coarse (E, Q)`` are model A's predicted coarse
    classes; ``b = (support, support_labels, query)`` model B's arrays. A query whose
    predicted coarse class no support shares is classified among all supports.
    """
    Xs, ys, Xq = b
    allowed = np.asarray(query_coarse)[:, :, None] == np.asarray(support_coarse)[:, None, :]
    allowed |= ~allowed.any(2, keepdims=True)  # no support of that coarse class: use all
    if classifier == "cosine_nn":
        return predict_cosine_nn(Xs, ys, Xq, allowed=allowed, device=device)
    return _cascade_logreg(Xs, ys, Xq, allowed, device)


def _cascade_logreg(Xs, ys, Xq, allowed, device) -> np.ndarray:
    """One logistic regression per episode and group of queries with the same allowed supports."""
    pred = np.empty(Xq.shape[:2], dtype=np.int64)
    for e in range(len(Xq)):
        groups, group_of = np.unique(allowed[e], axis=0, return_inverse=True)
        for g, keep in enumerate(groups):
            queries = np.flatnonzero(group_of.ravel() == g)
            present, labels = np.unique(ys[e, keep], return_inverse=True)
            if len(present) == 1:
                pred[e, queries] = present[0]
                continue
            p = fit_predict_logreg(Xs[e, keep][None], labels[None], Xq[e, queries][None],
                                   n_classes=len(present), device=device)
            pred[e, queries] = present[p[0]]
    return pred


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------


def check_same_images(arrays_a: dict, arrays_b: dict) -> None:
    """Raise ``DataError`` unless both embeddings files hold the same images and labels."""
    for key in ("index", "fine", "coarse"):
        if key not in arrays_a or key not in arrays_b:
            raise DataError(f"an embeddings file lacks '{key}'; rerun `fgbench embed`")
        if not np.array_equal(arrays_a[key], arrays_b[key]):
            raise DataError(f"the two models' embeddings differ in '{key}': a combination needs two runs on "
                            "the same test images (same dataset, setting and seed)")


def combination_accuracy(arrays_a: dict, arrays_b: dict, combination: dict, protocol: dict, device="cpu") -> dict:
    """Few-shot accuracy of a combination of two models under a ``fewshot`` protocol.

    ``arrays_a``/``arrays_b``: the two models' test embeddings (see
    :func:`fgbench.evaluate.load_embeddings`); ``combination``: a resolved entry of the config's
    ``combinations`` (name, kind, models [{method, layer}] x 2, classifier); ``protocol``: a
    fewshot protocol spec (its ``classifier`` is not used: the combination's is).
    Returns ``{"accuracy", "ci95", "n", "per_episode", "draws_hash"}`` like ``fewshot_accuracy``.
    """
    if protocol.get("kind") != "fewshot":
        raise ValueError(f"combinations run only fewshot protocols, got {protocol.get('name')!r} "
                         f"({protocol.get('kind')})")
    kind = combination["kind"]
    if kind not in KINDS:
        raise ValueError(f"combination kind must be one of {KINDS}, got {kind!r}")
    classifier = combination.get("classifier") or DEFAULT_CLASSIFIER[kind]
    check_same_images(arrays_a, arrays_b)
    layer_a, layer_b = (m["layer"] for m in combination["models"])
    feat_a, aug_a = layer_features(arrays_a, layer_a, aug=True)
    feat_b, aug_b = layer_features(arrays_b, layer_b, aug=True)
    n_aug = protocol["n_aug"]
    if not 1 <= n_aug <= min(aug_a.shape[1], aug_b.shape[1]):
        raise ValueError(f"n_aug must be in [1, {min(aug_a.shape[1], aug_b.shape[1])}], got {n_aug}")
    sampler = {k: protocol[k] for k in ("n_way", "n_shot", "n_query", "episodes", "intra", "max_ways")}
    draws = draw_episodes(arrays_a["fine"], arrays_a["coarse"], **sampler)

    acc = np.empty(len(draws))
    per_way = (protocol["n_shot"] * n_aug + protocol["n_query"]) * (feat_a.shape[1] + feat_b.shape[1])
    for w, ids in episode_batches(draws, per_way):
        batch = [draws[i] for i in ids]
        Xs_a, ys, Xq_a, yq = episode_arrays(feat_a, aug_a, batch, n_aug)
        Xs_b, _, Xq_b, _ = episode_arrays(feat_b, aug_b, batch, n_aug)
        a, b = (Xs_a, ys, Xq_a), (Xs_b, ys, Xq_b)
        if kind == "ensemble":
            pred = ensemble_predict(a, b, w, device)
        elif kind == "concat":
            pred = concat_predict(a, b, classifier, w, device)
        else:  # model A's layer is its coarse logits: argmax = predicted coarse class
            pred = cascade_predict(Xs_a.argmax(2), Xq_a.argmax(2), b, classifier, w, device)
        acc[ids] = (pred == yq).mean(1)
    mean, h = mean_ci95(acc)
    return {"accuracy": mean, "ci95": h, "n": len(draws), "per_episode": acc,
            "draws_hash": fewshot_draws_hash(draws, protocol)}


def combination_rows(arrays_a, arrays_b, combination: dict, protocol: dict, run: dict,
                     config_hash: str, device="cpu") -> list:
    """Metric rows of a combination: ``method`` = its name (in ``run``), ``layer`` = "A+B"."""
    return combination_rows_and_units(arrays_a, arrays_b, combination, protocol, run, config_hash, device)[0]


def combination_rows_and_units(arrays_a, arrays_b, combination: dict, protocol: dict, run: dict,
                               config_hash: str, device="cpu"):
    """``(rows, draws_hash, per_layer)``: :func:`combination_rows` and the per-episode accuracies
    for :func:`fgbench.evaluate.units.write_units`."""
    res = combination_accuracy(arrays_a, arrays_b, combination, protocol, device)
    layer = combination_layer(combination)
    results = [(layer, "accuracy", res["accuracy"], res["ci95"], res["n"])]
    rows = tidy_rows(results, run, protocol["name"], config_hash)
    return rows, res["draws_hash"], {layer: {"accuracy": res["per_episode"]}}


__all__ = ["DEFAULT_CLASSIFIER", "KINDS", "cascade_predict", "check_same_images", "combination_accuracy",
           "combination_cells", "combination_layer", "combination_rows", "combination_rows_and_units", "concat_predict", "ensemble_predict",
           "validate_combinations"]
