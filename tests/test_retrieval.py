"""Tests for fgbench.evaluate.retrieval against pytorch-metric-learning, brute force and hand values."""

import faiss
import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKNN
from sklearn.metrics import normalized_mutual_info_score

from fgbench.evaluate.retrieval import (
    kmeans_assign,
    map_at_r_and_r_precision,
    nearest_neighbours,
    nmi,
    pairwise_f1,
    recall_at_k,
    retrieval_metrics,
    retrieval_units,
)

# Unequal class sizes, including a singleton class (dropped from the ranking metrics).
SIZES = [1, 2, 3, 7, 15, 30, 60, 90, 112]


@pytest.fixture(scope="module")
def clustered():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(SIZES)), SIZES)
    centres = rng.normal(size=(len(SIZES), 16))
    x = centres[labels] + 1.2 * rng.normal(size=(len(labels), 16))
    perm = rng.permutation(len(labels))  # classes interleaved, not in blocks
    return x[perm].astype(np.float32), labels[perm] * 10 + 3  # labels need not be 0..C-1


def brute_force_ranking(x, metric):
    """Indices of all other items per row, best first, ties by lowest index (float64)."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        dist = -(x @ x.T)
    else:
        dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    return np.argsort(dist, axis=1, kind="stable")[:, :-1]


def brute_force_per_query(x, labels, ks, metric):
    """Per query with a relevant item, in input order: {recall@K: hit}, AP@R and R-Precision."""
    ranking = brute_force_ranking(x, metric)
    recalls, aps, rps = {k: [] for k in ks}, [], []
    for i, row in enumerate(ranking):
        r = int(np.sum(labels == labels[i])) - 1
        if r == 0:
            continue
        rel = labels[row] == labels[i]
        for k in ks:
            recalls[k].append(float(rel[:k].any()))
        top = rel[:r]
        aps.append(np.sum(np.cumsum(top) / np.arange(1, r + 1) * top) / r)
        rps.append(top.sum() / r)
    return {k: np.array(v) for k, v in recalls.items()}, np.array(aps), np.array(rps)


def brute_force_metrics(x, labels, ks, metric):
    recalls, aps, rps = brute_force_per_query(x, labels, ks, metric)
    return {k: np.mean(v) for k, v in recalls.items()}, np.mean(aps), np.mean(rps)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_pytorch_metric_learning(clustered, metric):
    x, labels = clustered
    ours = retrieval_metrics(x, labels, metric=metric, nmi=True)
    clusters = kmeans_assign(x, len(SIZES), metric=metric)
    if metric == "cosine":  # pml does no normalising: give it unit rows and inner products
        x_pml, knn = x / np.linalg.norm(x, axis=1, keepdims=True), FaissKNN(index_init_fn=faiss.IndexFlatIP)
    else:
        x_pml, knn = x, FaissKNN()
    calc = AccuracyCalculator(
        include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI"),
        k="max_bin_count",
        device=torch.device("cpu"),
        knn_func=knn,
        kmeans_func=lambda query, n: torch.from_numpy(clusters),  # the same k-means assignment
    )
    theirs = calc.get_accuracy(x_pml, labels)
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["nmi"] == pytest.approx(theirs["NMI"], abs=1e-6)
    assert ours["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_matches_brute_force(clustered, metric):
    x, labels = clustered
    ks = (1, 2, 4, 8, 16)
    ours = retrieval_metrics(x, labels, recall_k=ks, metric=metric, nmi=False)
    recalls, ap, rp = brute_force_metrics(x, labels, ks, metric)
    for k in ks:
        assert ours[f"recall@{k}"] == pytest.approx(recalls[k], abs=1e-12)
    assert ours["map@r"] == pytest.approx(ap, abs=1e-6)
    assert ours["r_precision"] == pytest.approx(rp, abs=1e-6)


@pytest.mark.parametrize("max_list_r", [1024, 4])
@pytest.mark.parametrize("ties", [False, True])
def test_per_query_values_match_brute_force(clustered, monkeypatch, max_list_r, ties):
    # max_list_r=4 < the largest R: MAP@R takes the exact pass; 1024: it reads the neighbour lists.
    # With ties (small integer features, exact scores) both must apply the lowest-index rule.
    monkeypatch.setattr("fgbench.evaluate.retrieval.MAX_LIST_R", max_list_r)
    x, labels = clustered
    if ties:
        x = np.random.default_rng(2).integers(0, 3, size=(len(x), 3)).astype(np.float32)
    metric = "euclidean" if ties else "cosine"
    ks = (1, 2, 4, 8)
    metrics, per_query = retrieval_units(x, labels, recall_k=ks, metric=metric, nmi=False)
    recalls, aps, rps = brute_force_per_query(x, labels, ks, metric)
    assert len(aps) == len(x) - 1  # the singleton class has no query
    for k in ks:
        np.testing.assert_array_equal(per_query[f"recall@{k}"], recalls[k])
    np.testing.assert_allclose(per_query["map@r"], aps, atol=1e-12 if ties else 1e-6)
    np.testing.assert_allclose(per_query["r_precision"], rps, atol=1e-12 if ties else 1e-6)
    assert {name: v.mean() for name, v in per_query.items()} == metrics


def test_exact_ties_follow_index_rule():
    # Small integer features: every score is exact in float32 and float64, with many ties, so
    # the results pin down the tie rule (equal scores ranked by lowest index) exactly.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, size=(400, 3)).astype(np.float32)
    labels = rng.integers(0, 6, size=400)
    ks = (1, 2, 4, 8)
    recalls, ap, rp = brute_force_metrics(x, labels, ks, "euclidean")
    # A small chunk so that several chunks (and their top-k lists) are exercised.
    assert map_at_r_and_r_precision(x, labels, metric="euclidean", chunk_size=37) == pytest.approx((ap, rp), abs=1e-12)
    _, nbrs = nearest_neighbours(x, 8, metric="euclidean")
    np.testing.assert_array_equal(nbrs, brute_force_ranking(x, "euclidean")[:, :8])
    assert recall_at_k(labels, nbrs, ks) == pytest.approx(recalls, abs=1e-12)


# Hand example. Points on a line, p = [0, 1.5, 9, -1, 7.5, 13], labels [0, 0, 0, 1, 1, 2].
# Neighbours of each query (distance), nearest first, and relevance (same label):
#   q0 (p=0,   L0): 3 (1),   1 (1.5), 4 (7.5), 2 (9),   5 (13)   -> rel 0 1 0 1 0
#   q1 (p=1.5, L0): 0 (1.5), 3 (2.5), 4 (6),   2 (7.5), 5 (11.5) -> rel 1 0 0 1 0
#   q2 (p=9,   L0): 4 (1.5), 5 (4),   1 (7.5), 0 (9),   3 (10)   -> rel 0 0 1 1 0
#   q3 (p=-1,  L1): 0 (1),   1 (2.5), 4 (8.5), 2 (10),  5 (14)   -> rel 0 0 1 0 0
#   q4 (p=7.5, L1): 2 (1.5), 5 (5.5), 1 (6),   0 (7.5), 3 (8.5)  -> rel 0 0 0 0 1
#   q5 is the only member of label 2: dropped, leaving 5 queries.
# Recall@1 = 1/5 (q1); @2 = 2/5 (+q0); @3 = 4/5 (+q2, q3); @4 = 4/5; @5 = 5/5 (+q4).
# R = 2 for label 0 and 1 for label 1.
# R-Precision: q0 1/2, q1 1/2, q2 0, q3 0, q4 0 -> 1/5 = 0.2.
# MAP@R: q0 (1/2)(P@2 = 1/2) = 1/4, q1 (1/2)(P@1 = 1) = 1/2, others 0 -> (3/4)/5 = 0.15.
# With the points on the unit circle at angles 10 * p degrees (all pairs < 180 degrees apart),
# cosine similarity falls with |p_i - p_j|, so cosine gives the same ranking and values.
HAND_P = np.array([0, 1.5, 9, -1, 7.5, 13])
HAND_LABELS = np.array([0, 0, 0, 1, 1, 2])
HAND_EXPECTED = {
    "recall@1": 0.2, "recall@2": 0.4, "recall@3": 0.8, "recall@4": 0.8, "recall@5": 1.0,
    "map@r": 0.15, "r_precision": 0.2,
}


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_hand_example(metric):
    if metric == "euclidean":
        x = HAND_P[:, None]
    else:
        angle = np.deg2rad(10 * HAND_P)
        x = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    got = retrieval_metrics(x, HAND_LABELS, recall_k=(1, 2, 3, 4, 5), metric=metric, nmi=False)
    assert got == pytest.approx(HAND_EXPECTED, abs=1e-12)


def test_pairwise_f1_hand_example():
    # labels [0,0,0,1,1,2], clusters [0,0,0,0,1,2].
    # Same-class pairs: C(3,2) + C(2,2) = 4. Same-cluster pairs: C(4,2) = 6 (items 0-3).
    # Both: the 3 pairs among items 0, 1, 2. P = 3/6, R = 3/4, F1 = 2 * 0.5 * 0.75 / 1.25 = 0.6.
    assert pairwise_f1([0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 2]) == pytest.approx(0.6)
    assert pairwise_f1([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)  # ids are arbitrary
    assert pairwise_f1([0, 1, 2], [0, 0, 0]) == 0.0  # no pair shares a class


def test_nmi_and_f1_in_retrieval_metrics(clustered):
    x, labels = clustered
    clusters = kmeans_assign(x, len(SIZES), seed=3, niter=10)
    got = retrieval_metrics(x, labels, nmi=True, f1=True, kmeans_seed=3, kmeans_niter=10)
    assert got["nmi"] == pytest.approx(nmi(labels, clusters))
    assert got["f1"] == pytest.approx(pairwise_f1(labels, clusters))
    assert all(0.0 <= v <= 1.0 for v in got.values())


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_duplicates_excluded_by_index(metric):
    # Every point has an exact copy with the other label, so each query's nearest non-self item
    # is its copy (a miss). Dropping rank 0 instead of the query's index could drop the copy and
    # keep the query itself (a false hit).
    rng = np.random.default_rng(2)
    base = rng.normal(size=(20, 4)).astype(np.float32)
    x = np.concatenate([base, base])
    labels = np.concatenate([np.arange(20) % 2, 1 - np.arange(20) % 2])
    _, nbrs = nearest_neighbours(x, 3, metric=metric)
    assert not (nbrs == np.arange(40)[:, None]).any()
    np.testing.assert_array_equal(nbrs[:, 0], (np.arange(40) + 20) % 40)
    got = retrieval_metrics(x, labels, recall_k=(1, 2), metric=metric, nmi=False)
    assert got["recall@1"] == 0.0
    recalls, ap, rp = brute_force_metrics(x, labels, (1, 2), metric)
    assert got["recall@2"] == pytest.approx(recalls[2])
    assert (got["map@r"], got["r_precision"]) == pytest.approx((ap, rp), abs=1e-6)


def test_many_duplicates_self_outside_search():
    # 12 identical points: the query may not be among faiss's k + 1 results at all.
    x = np.ones((12, 3), dtype=np.float32)
    labels = np.array([0] * 6 + [1] * 6)
    scores, nbrs = nearest_neighbours(x, 3, metric="euclidean")
    assert nbrs.shape == (12, 3) and not (nbrs == np.arange(12)[:, None]).any()
    # All scores tie, so the ranking is by index: query i's list is the 3 lowest other indices.
    np.testing.assert_array_equal(nbrs[7], [0, 1, 2])
    got = retrieval_metrics(x, labels, recall_k=(1,), metric="euclidean", nmi=False)
    # Label 0 queries always hit at rank 1; label 1 queries see items 0-4 first (R = 5): a miss.
    assert got == pytest.approx({"recall@1": 0.5, "map@r": 0.5, "r_precision": 0.5})


@pytest.mark.parametrize(
    "features, labels, message",
    [
        (np.zeros((5, 2)) + 1, np.zeros(4), "differ in length"),
        (np.array([[1.0, np.nan], [1.0, 2.0]]), np.zeros(2), "NaN"),
        (np.array([[1.0, np.inf], [1.0, 2.0]]), np.zeros(2), "NaN or infinite"),
        (np.ones(5), np.zeros(5), "2-D"),
        (np.ones((5, 2)), np.zeros((5, 1)), "1-D"),
        (np.array([[0.0, 0.0], [1.0, 2.0]]), np.zeros(2), "all-zero row"),
        (np.ones((4, 2)), np.arange(4), "no class has two or more members"),
    ],
)
def test_bad_input(features, labels, message):
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(features, labels, recall_k=(1,), nmi=False)


def test_bad_arguments():
    x, labels = np.random.default_rng(0).normal(size=(6, 2)), [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="metric must be one of"):
        retrieval_metrics(x, labels, metric="manhattan")
    with pytest.raises(ValueError, match="recall_k"):
        retrieval_metrics(x, labels, recall_k=(1, 6))
    with pytest.raises(ValueError, match="equal length"):
        pairwise_f1([0, 1], [0, 1, 2])
