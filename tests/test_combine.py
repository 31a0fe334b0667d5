"""Tests for fgbench.evaluate.combine: ensemble, concatenation and cascade of two models.

Each combination is checked against an explicit per-episode computation with numpy and
scikit-learn on the episodes the sampler draws, as the single-model few-shot tests do.
"""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from fgbench.cli import main
from fgbench.errors import ConfigError, DataError
from fgbench.evaluate import PROTOCOLS
from fgbench.evaluate.combine import (
    cascade_predict,
    combination_accuracy,
    combination_cells,
    combination_rows,
    validate_combinations,
)
from fgbench.evaluate.fewshot import sample_episode

N_AUG = 3
EPISODES = 8


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def models():
    """Two models' test embeddings of the same 12 fine classes (3 coarse x 4), 20 images each.

    Model A embeds ``backbone`` (10-d) and ``logits`` (3 noisy coarse scores, often wrong);
    model B embeds ``head`` (8-d). Views are noisy copies of the plain feature.
    """
    rng = np.random.RandomState(0)
    coarse_of_fine = np.repeat(np.arange(3), 4)
    fine = np.repeat(np.arange(12), 20)
    coarse = coarse_of_fine[fine]

    def layer(mu):
        plain = mu[fine] + rng.randn(len(fine), mu.shape[1])
        aug = plain[:, None] + 0.5 * rng.randn(len(fine), 4, mu.shape[1])
        return plain.astype(np.float32), aug.astype(np.float32)

    common = {"fine": fine, "coarse": coarse, "index": np.arange(len(fine)) + 100,
              "fine_names": np.array([f"f{i}" for i in range(12)]), "coarse_names": np.array(["a", "b", "c"])}
    a_backbone = layer(rng.randn(12, 10) * 0.8)
    a_logits = layer(np.eye(3)[coarse_of_fine] * 1.2)
    b_head = layer(rng.randn(12, 8) * 0.8)
    a = {**common, "layers": np.array(["backbone", "logits"]),
         "features_backbone": a_backbone[0], "aug_features_backbone": a_backbone[1],
         "features_logits": a_logits[0], "aug_features_logits": a_logits[1]}
    b = {**common, "layers": np.array(["head"]), "features_head": b_head[0], "aug_features_head": b_head[1]}
    return a, b


def _protocol(name="fewshot_5way", **changes):
    return {"name": name, **PROTOCOLS[name], "n_aug": N_AUG, "n_query": 5, "episodes": EPISODES, **changes}


def _combination(kind, layer_a="backbone", classifier=None):
    comb = {"name": f"my_{kind}", "kind": kind,
            "models": [{"method": "ancor", "layer": layer_a}, {"method": "scgm", "layer": "head"}]}
    return comb if classifier is None else {**comb, "classifier": classifier}


def _episode(arrays, layer, e, proto):
    """Support (W*n_shot*n_aug, D), its labels, queries (W*n_query, D), their labels: by hand."""
    s, q, _ = sample_episode(e, arrays["fine"], arrays["coarse"], n_way=proto["n_way"], n_shot=proto["n_shot"],
                             n_query=proto["n_query"], intra=proto["intra"], max_ways=proto["max_ways"])
    W = len(s)
    aug, plain = arrays[f"aug_features_{layer}"], arrays[f"features_{layer}"]
    Xs = np.concatenate([aug[i, :N_AUG] for i in s.ravel()])
    ys = np.repeat(np.arange(W), proto["n_shot"] * N_AUG)
    return Xs, ys, plain[q.ravel()], np.repeat(np.arange(W), proto["n_query"])


def _lr(Xs, ys):
    # Our solver is multinomial; for 2 classes sklearn fits the binary model, whose optimum is
    # the multinomial one at C = 2 (the centred weights w/2, -w/2 halve the penalty).
    C = 2.0 if len(np.unique(ys)) == 2 else 1.0
    return LogisticRegression(C=C, solver="lbfgs", max_iter=1000, tol=1e-8).fit(Xs, ys)


def _cosine_nn(Xs, ys, Xq):
    return ys[(_unit(Xq) @ _unit(Xs).T).argmax(1)]


def _cascade_reference(a, b, e, proto, classifier):
    """Per query: supports whose A-predicted coarse class equals the query's (else all), then B."""
    Xs_l, _, Xq_l, _ = _episode(a, "logits", e, proto)
    Xs, ys, Xq, yq = _episode(b, "head", e, proto)
    Xs, Xq = _unit(Xs), _unit(Xq)
    cs, cq = Xs_l.argmax(1), Xq_l.argmax(1)
    pred, fallbacks = np.empty(len(Xq), dtype=int), 0
    for i in range(len(Xq)):
        keep = cs == cq[i]
        if not keep.any():
            keep[:], fallbacks = True, fallbacks + 1
        if classifier == "cosine_nn":
            pred[i] = _cosine_nn(Xs[keep], ys[keep], Xq[i : i + 1])[0]
        elif len(np.unique(ys[keep])) == 1:
            pred[i] = ys[keep][0]
        else:
            pred[i] = _lr(Xs[keep], ys[keep]).predict(Xq[i : i + 1])[0]
    return (pred == yq).mean(), fallbacks


def test_ensemble_is_the_geometric_mean_of_two_logistic_regressions(models):
    a, b = models
    proto = _protocol()
    res = combination_accuracy(a, b, _combination("ensemble"), proto)
    assert res["n"] == EPISODES and res["per_episode"].shape == (EPISODES,)
    for e in range(EPISODES):
        XsA, ys, XqA, yq = _episode(a, "backbone", e, proto)
        XsB, _, XqB, _ = _episode(b, "head", e, proto)
        pA = _lr(_unit(XsA), ys).predict_proba(_unit(XqA))
        pB = _lr(_unit(XsB), ys).predict_proba(_unit(XqB))
        pred = np.sqrt(pA * pB).argmax(1)
        assert res["per_episode"][e] == pytest.approx((pred == yq).mean())
    assert 0.2 < res["accuracy"] < 1


@pytest.mark.parametrize("classifier", ["cosine_nn", "logreg"])
def test_concat_classifies_unit_norm_blocks(models, classifier):
    a, b = models
    proto = _protocol("fewshot_all", n_shot=2)  # all 12 ways, 2 shots
    res = combination_accuracy(a, b, _combination("concat", classifier=classifier), proto)
    for e in range(EPISODES):
        XsA, ys, XqA, yq = _episode(a, "backbone", e, proto)
        XsB, _, XqB, _ = _episode(b, "head", e, proto)
        Xs = np.hstack([_unit(XsA), _unit(XsB)])
        Xq = np.hstack([_unit(XqA), _unit(XqB)])
        np.testing.assert_allclose(np.linalg.norm(Xs, axis=1), np.sqrt(2), rtol=1e-6)
        pred = _cosine_nn(Xs, ys, Xq) if classifier == "cosine_nn" else _lr(Xs, ys).predict(Xq)
        assert res["per_episode"][e] == pytest.approx((pred == yq).mean())


@pytest.mark.parametrize("classifier", ["cosine_nn", "logreg"])
def test_cascade_filters_supports_by_predicted_coarse_class(models, classifier):
    a, b = models
    proto = _protocol(n_way=3)  # 3 ways often span fewer coarse classes: some queries fall back
    res = combination_accuracy(a, b, _combination("cascade", layer_a="logits", classifier=classifier), proto)
    total_fallbacks = 0
    for e in range(EPISODES):
        acc, fallbacks = _cascade_reference(a, b, e, proto, classifier)
        assert res["per_episode"][e] == pytest.approx(acc)
        total_fallbacks += fallbacks
    assert total_fallbacks > 0  # the fallback path was exercised


def test_cascade_predict_fallback_by_hand():
    # Supports: labels 0, 1, 2 predicted coarse 0, 0, 1. Query 0 (coarse 1) may only use support 2;
    # query 1 (coarse 0) only supports 0 and 1; query 2 (coarse 2, no support) falls back to all.
    support = np.array([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    labels = np.array([[0, 1, 2]])
    query = np.array([[[1.0, 0.1], [-1.0, 0.2], [-1.0, 0.1]]])
    pred = cascade_predict(np.array([[0, 0, 1]]), np.array([[1, 0, 2]]), (support, labels, query), "cosine_nn", 3)
    np.testing.assert_array_equal(pred, [[2, 1, 2]])
    pred = cascade_predict(np.array([[0, 0, 1]]), np.array([[1, 0, 2]]), (support, labels, query), "logreg", 3)
    assert pred[0, 0] == 2  # a single class among the allowed supports: no fit needed
    assert pred[0, 1] == 1 and pred[0, 2] == 2


def test_rows_name_the_combination_and_both_layers(models):
    a, b = models
    run = {"dataset": "toy", "setting": "coarse_to_fine", "method": "my_ensemble", "seed": 3}
    rows = combination_rows(a, b, _combination("ensemble"), _protocol(), run, "h")
    assert len(rows) == 1
    row = rows[0]
    assert (row["method"], row["layer"], row["protocol"], row["metric"], row["n"]) == (
        "my_ensemble", "backbone+head", "fewshot_5way", "accuracy", EPISODES)
    assert 0 <= row["value"] <= 1 and row["ci95"] > 0 and row["config_hash"] == "h"


@pytest.mark.parametrize("key", ["index", "fine", "coarse"])
def test_different_images_are_refused(models, key):
    a, b = models
    b = {**b, key: b[key][::-1].copy()}
    with pytest.raises(DataError, match=f"differ in '{key}'"):
        combination_accuracy(a, b, _combination("concat"), _protocol())


def test_bad_protocol_or_layer(models):
    a, b = models
    with pytest.raises(ValueError, match="only fewshot protocols"):
        combination_accuracy(a, b, _combination("concat"), {"name": "retrieval", **PROTOCOLS["retrieval"]})
    with pytest.raises(DataError, match="layer 'logits' is not in the embeddings file"):
        combination_accuracy(b, a, _combination("cascade", layer_a="logits"), _protocol())


def test_cli_combine(models, tmp_path):
    a, b = models
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for path, arrays in zip(paths, models):
        np.savez(path, **arrays)
    spec = {"combination": _combination("cascade", layer_a="logits"), "protocol": _protocol()}
    run = {"dataset": "toy", "setting": "coarse_to_fine", "method": "my_cascade", "seed": 0, "config_hash": "c"}
    out = tmp_path / "m" / "fewshot_5way.json"
    argv = ["combine", "--spec", json.dumps(spec), "--run", json.dumps(run), "--embeddings", *map(str, paths),
            "--out", str(out)]
    assert main(argv) == 0
    (row,) = json.loads(out.read_text())
    ref = combination_accuracy(a, b, spec["combination"], spec["protocol"])
    assert row["value"] == pytest.approx(ref["accuracy"]) and row["layer"] == "logits+head"
    assert (row["method"], row["seed"], row["config_hash"]) == ("my_cascade", 0, "c")


# --------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------

LAYERS = {"ancor": ("backbone", "head"), "supervised_coarse": ("backbone", "logits"), "scgm": ("head",)}


def _models(a=("ancor", "backbone"), b=("scgm", "head")):
    return [{"method": a[0], "layer": a[1]}, {"method": b[0], "layer": b[1]}]


def test_validate_fills_the_default_classifier():
    combos = [
        {"name": "ens", "kind": "ensemble", "models": _models()},
        {"name": "cat", "kind": "concat", "models": _models()},
        {"name": "cas", "kind": "cascade", "models": _models(("supervised_coarse", "logits")), "classifier": "logreg"},
    ]
    out = validate_combinations(combos, LAYERS)
    assert [c["classifier"] for c in out] == ["logreg", "cosine_nn", "logreg"]
    assert validate_combinations([{**combos[0], "name": "ensemble_sup+ancor-v1.2"}], LAYERS)[0]["name"] == "ensemble_sup+ancor-v1.2"
    assert validate_combinations(None, LAYERS) == [] == validate_combinations([], LAYERS)


@pytest.mark.parametrize("combos, message", [
    ({"name": "x"}, "'combinations' must be a list"),
    (["ens"], r"'combinations\[0\]' must be a mapping"),
    ([{"name": "e", "kind": "ensemble", "models": _models(), "layers": 1}], r"unknown key\(s\) \['layers'\] in 'combinations\[0\]'"),
    ([{"kind": "ensemble", "models": _models()}], r"'combinations\[0\].name' is missing"),
    ([{"name": "a/b", "kind": "ensemble", "models": _models()}], r"'combinations\[0\].name' must be a name"),
    ([{"name": "ancor", "kind": "ensemble", "models": _models()}], "which is a method's or model's name"),
    ([{"name": "e", "kind": "concat", "models": _models()}, {"name": "e", "kind": "ensemble", "models": _models()}],
     r"'combinations\[1\].name': 'e' names two combinations"),
    ([{"name": "e", "kind": "vote", "models": _models()}], r"'combinations\[0\].kind' is 'vote'; valid values: ensemble, concat, cascade"),
    ([{"name": "e", "kind": "concat", "models": _models()[:1]}], r"'combinations\[0\].models' must list exactly two"),
    ([{"name": "e", "kind": "concat", "models": [{"method": "ancor"}, {"method": "scgm", "layer": "head"}]}],
     r"'combinations\[0\].models\[0\]' must be a mapping with exactly the keys method, layer"),
    ([{"name": "e", "kind": "concat", "models": _models(b=("scgmm", "head"))}],
     r"'combinations\[0\].models\[1\].method' is 'scgmm'; valid methods and models: ancor, scgm, supervised_coarse"),
    ([{"name": "e", "kind": "concat", "models": _models(b=("scgm", "backbone"))}],
     r"'combinations\[0\].models\[1\].layer' is 'backbone', which method 'scgm' does not embed; its layers: head"),
    ([{"name": "e", "kind": "concat", "models": _models(), "classifier": "svm"}], r"'combinations\[0\].classifier' is 'svm'"),
    ([{"name": "e", "kind": "ensemble", "models": _models(), "classifier": "cosine_nn"}], "must be logreg for an ensemble"),
    ([{"name": "e", "kind": "cascade", "models": _models()}], r"'combinations\[0\].models\[0\].layer' must be 'logits' for a cascade"),
])
def test_validate_combinations_errors(combos, message):
    with pytest.raises(ConfigError, match=message):
        validate_combinations(combos, LAYERS)


def test_combination_cells():
    runs = [("d", "coarse_to_fine", "ancor", 0), ("d", "coarse_to_fine", "scgm", 0),
            ("d", "coarse_to_fine", "ancor", 1), ("d", "coarse_to_fine", "scgm", 1),
            ("d", "open_set", "ancor", 0), ("e", "coarse_to_fine", "scgm", 0)]
    combos = validate_combinations([{"name": "ens", "kind": "ensemble", "models": _models()}], LAYERS, runs=runs)
    assert combination_cells(combos, runs) == [("d", "coarse_to_fine", "ens", 0), ("d", "coarse_to_fine", "ens", 1)]
    with pytest.raises(ConfigError, match="never run in the same dataset and setting"):
        validate_combinations([{"name": "x", "kind": "concat", "models": _models()}], LAYERS, runs=runs[4:])
