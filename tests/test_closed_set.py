"""Closed-set accuracy and calibration (the vMF paper's ECE), and the closed_set protocol's
routing: the probs layer only, which the embedding protocols skip."""

import math

import numpy as np
import pytest

from fgbench.errors import DataError
from fgbench.evaluate import PROTOCOLS, evaluate_protocol, metric_rows
from fgbench.evaluate.closed_set import (accuracy, closed_set_metrics, ece_equal_mass, ece_equal_width,
                                         equal_mass_bins)

# 20 predictions over 3 classes, written out: max probability (distinct values) and correctness.
CONF = [0.91, 0.35, 0.62, 0.77, 0.48, 0.99, 0.55, 0.40, 0.83, 0.70,
        0.66, 0.38, 0.95, 0.51, 0.87, 0.44, 0.59, 0.73, 0.80, 0.34]
CORRECT = [1, 0, 1, 1, 0, 1, 0, 1, 1, 0,
           1, 0, 1, 1, 0, 0, 1, 1, 1, 0]


def toy(conf=CONF, correct=CORRECT, n_classes=3):
    """Rows with max probability conf[i] on class i % C, the rest spread evenly; label = that
    class when correct, the next class otherwise."""
    probs, labels = [], []
    for i, (p, ok) in enumerate(zip(conf, correct)):
        top = i % n_classes
        row = [(1 - p) / (n_classes - 1)] * n_classes
        row[top] = p
        probs.append(row)
        labels.append(top if ok else (top + 1) % n_classes)
    return np.array(probs), np.array(labels)


def ece_by_hand(conf, correct, bins, power):
    """sum over non-empty bins of (n_b / N) |acc_b - conf_b|^power, then the power-th root."""
    total = 0.0
    for b in sorted(set(bins)):
        members = [i for i, x in enumerate(bins) if x == b]
        acc = sum(correct[i] for i in members) / len(members)
        mean_conf = sum(conf[i] for i in members) / len(members)
        total += len(members) / len(conf) * abs(acc - mean_conf) ** power
    return total ** (1 / power)


def test_accuracy_and_paper_ece_with_unequal_bins():
    probs, labels = toy()
    assert accuracy(probs, labels) == 12 / 20
    # N = 20 is no multiple of 15: sorted position i goes to bin floor(15 i / 20); sizes 1 or 2
    by_rank = [0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11, 12, 12, 13, 14]
    order = sorted(range(20), key=lambda i: CONF[i])
    bins = [0] * 20
    for rank, i in enumerate(order):
        bins[i] = by_rank[rank]
    assert list(equal_mass_bins(np.array(CONF), 15)) == bins
    assert sorted(np.bincount(bins).tolist()) == [1] * 10 + [2] * 5
    expected = ece_by_hand(CONF, CORRECT, bins, power=2)
    assert ece_equal_mass(probs, labels, 15) == pytest.approx(expected, rel=1e-12)
    assert expected > 0.1  # a toy with real miscalibration, not a trivially small number


def test_ece_fewer_examples_than_bins():
    """N = 7 < 15: every example is its own bin, so ECE_L2 = sqrt(mean((correct - conf)^2))."""
    conf, correct = CONF[:7], CORRECT[:7]
    probs, labels = toy(conf, correct)
    expected = math.sqrt(sum((ok - p) ** 2 for p, ok in zip(conf, correct)) / 7)
    assert ece_equal_mass(probs, labels, 15) == pytest.approx(expected, rel=1e-12)


def test_ece_multiple_of_bins():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.4, 1.0, 45).tolist()
    correct = (rng.uniform(size=45) < 0.7).astype(int).tolist()
    probs, labels = toy(conf, correct)
    order = np.argsort(conf)
    bins = np.empty(45, dtype=int)
    bins[order] = np.repeat(np.arange(15), 3)  # 3 per bin
    assert ece_equal_mass(probs, labels, 15) == pytest.approx(ece_by_hand(conf, correct, bins.tolist(), 2), rel=1e-12)


def test_equal_width_l1_ece():
    probs, labels = toy()
    bins = [min(14, math.ceil(p * 15) - 1) for p in CONF]  # (b/15, (b+1)/15]
    assert ece_equal_width(probs, labels, 15) == pytest.approx(ece_by_hand(CONF, CORRECT, bins, power=1), rel=1e-12)


def test_perfect_calibration_gives_zero():
    """15 groups of 40 rows, group b with confidence (20 + b) / 40 and exactly 20 + b correct
    (b = 1..15: no 0.5 ties between the two classes)."""
    conf, correct = [], []
    for b in range(1, 16):
        conf += [(20 + b) / 40] * 40
        correct += [1] * (20 + b) + [0] * (20 - b)
    probs, labels = toy(conf, correct, n_classes=2)
    metrics = closed_set_metrics(probs, labels)
    assert set(metrics) == {"accuracy", "ece", "ece_l1_ew15"}
    assert metrics["ece"] == pytest.approx(0, abs=1e-12) and metrics["ece_l1_ew15"] == pytest.approx(0, abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(np.mean(conf))
    # an overconfident version of the same predictions is not calibrated
    sharp, _ = toy([min(1.0, p + 0.1) for p in conf], correct, n_classes=2)
    assert closed_set_metrics(sharp, labels)["ece"] == pytest.approx(0.1, abs=1e-9)


def embeddings(n=30, with_probs=True):
    rng = np.random.default_rng(1)
    fine = np.arange(n) % 3
    logits = rng.normal(size=(n, 3)) + 2 * np.eye(3)[fine]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    arrays = {"layers": np.array(["head", "probs"] if with_probs else ["head"]), "fine": fine, "coarse": np.zeros(n, int),
              "index": np.arange(n), "features_head": rng.normal(size=(n, 4)).astype(np.float32),
              "fine_names": np.array(["a", "b", "c"]), "coarse_names": np.array(["all"])}
    if with_probs:
        arrays["features_probs"] = probs.astype(np.float32)
    return arrays


def test_closed_set_protocol_reads_only_probs(tmp_path):
    arrays = embeddings()
    proto = {"name": "closed_set", **PROTOCOLS["closed_set"]}
    assert PROTOCOLS["closed_set"] == {"kind": "closed_set", "ece_bins": 15}
    results = evaluate_protocol(arrays, proto)
    assert [(layer, metric) for layer, metric, *_ in results] == [
        ("probs", "accuracy"), ("probs", "ece"), ("probs", "ece_l1_ew15")]
    expected = closed_set_metrics(arrays["features_probs"], arrays["fine"])
    assert {m: v for _, m, v, _, _ in results} == pytest.approx(expected)
    assert all(ci is None and n == 30 for *_, ci, n in results)
    path = tmp_path / "emb.npz"
    np.savez(path, **arrays)
    rows = metric_rows(path, proto, {"dataset": "d", "setting": "closed_set", "method": "vmf", "seed": 0}, "hash")
    assert [(r["layer"], r["protocol"], r["metric"]) for r in rows] == [
        ("probs", "closed_set", "accuracy"), ("probs", "closed_set", "ece"), ("probs", "closed_set", "ece_l1_ew15")]


def test_embedding_protocols_skip_probs():
    arrays = embeddings()
    results = evaluate_protocol(arrays, {"name": "retrieval", **PROTOCOLS["retrieval"], "nmi": False})
    assert results and {layer for layer, *_ in results} == {"head"}
    only_probs = {**arrays, "layers": np.array(["probs"])}
    assert evaluate_protocol(only_probs, {"name": "fewshot_5way", **PROTOCOLS["fewshot_5way"]}) == []


def test_closed_set_errors():
    proto = {"name": "closed_set", **PROTOCOLS["closed_set"]}
    with pytest.raises(DataError, match="needs the 'probs' layer"):
        evaluate_protocol(embeddings(with_probs=False), proto)
    arrays = embeddings()
    arrays["fine"] = arrays["fine"] + 5  # not the classifier's classes
    with pytest.raises(DataError, match="labels must be the classifier's classes 0..2"):
        evaluate_protocol(arrays, proto)
