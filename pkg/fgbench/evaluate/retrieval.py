"""Retrieval metrics for deep metric learning, as in "A Metric Learning Reality Check".

Reference: K. Musgrave, S. Belongie, S.-N. Lim, "A Metric Learning Reality Check", ECCV 2020
(MLRC), and pytorch-metric-learning's ``AccuracyCalculator``, which implements it.

Protocol: queries = gallery = the test set; each query's own row is excluded from its ranking
*by index* (not by dropping rank 0), so exact duplicates of a query are ranked like any other
item. Queries whose class has a single member have no relevant item and are dropped from every
ranking metric (as ``AccuracyCalculator`` does).

Ranking: items are ranked by score, highest first; the score is the inner product of
L2-normalised features for ``metric="cosine"`` and minus the squared L2 distance for
``metric="euclidean"``. Tie rule: items with exactly equal float32 scores are ranked by index,
lowest first (a stable sort). faiss's exact flat search keeps the lowest indices at the k-th
boundary too; :func:`nearest_neighbours` re-sorts inside its list to apply the same rule.

All functions take and return numpy arrays / floats; metric values are fractions in [0, 1].
"""

from __future__ import annotations

import faiss
import numpy as np
import torch
from sklearn.metrics import normalized_mutual_info_score

METRICS = ("cosine", "euclidean")

# Scores are computed for this many (query, item) pairs at a time (256 MiB of float32).
_CHUNK_ELEMENTS = 2**26


def _check(features, labels=None, metric="cosine") -> tuple[np.ndarray, np.ndarray | None]:
    """Validate inputs; return float32 features ready to search (normalised for cosine)."""
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        raise ValueError(f"features must be a 2-D array (N >= 2, D >= 1), got shape {features.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1:
            raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
        if len(labels) != len(features):
            raise ValueError(f"features and labels differ in length: {len(features)} != {len(labels)}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    features = np.ascontiguousarray(features, dtype=np.float32)
    if not np.isfinite(features).all():
        raise ValueError("features contain NaN or infinite values")
    if metric == "cosine":
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        if (norms == 0).any():
            raise ValueError("features contain an all-zero row, which has no cosine similarity")
        features = features / norms
    return features, labels


def _class_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer class id per item and the number of members of each item's class."""
    _, ids, counts = np.unique(labels, return_inverse=True, return_counts=True)
    return ids.ravel(), counts[ids.ravel()]


def nearest_neighbours(features, k: int, *, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row among the other rows, with faiss exact search.

    Returns ``(scores, indices)``, both (N, k), best first: scores are cosine similarities
    (``metric="cosine"``) or squared L2 distances (``"euclidean"``). The query's own index is
    removed wherever it appears (duplicates may outrank it); if it is not among the k + 1
    results, the last result is dropped instead. Ties are ordered by index, lowest first.
    """
    x, _ = _check(features, metric=metric)
    n = len(x)
    if not 1 <= k <= n - 1:
        raise ValueError(f"k must be in [1, N - 1] = [1, {n - 1}], got {k}")
    index = faiss.IndexFlatIP(x.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    scores, indices = index.search(x, k + 1)
    # Drop self by index; rows without self drop their last (worst) column instead.
    is_self = indices == np.arange(n)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    scores = scores[~is_self].reshape(n, k)
    indices = indices[~is_self].reshape(n, k)
    # faiss does not order equal scores by index inside its list (IndexFlatIP reverses them).
    best_first = -scores if metric == "cosine" else scores
    order = np.lexsort((indices, best_first), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def recall_at_k(labels, neighbours, ks=(1, 2, 4, 8)) -> dict[int, float]:
    """Recall@K in the DML sense (MLRC; a hit rate), for each K in ``ks``.

    Recall@K = mean over queries of 1[any of the K nearest non-self neighbours shares the
    query's label]. ``neighbours`` is the (N, >= max(ks)) index array from
    :func:`nearest_neighbours`. Queries whose class has one member are dropped, so Recall@1
    equals pytorch-metric-learning's ``precision_at_1``.
    """
    labels = np.asarray(labels)
    neighbours = np.asarray(neighbours)
    ks = [int(k) for k in ks]
    if neighbours.ndim != 2 or len(neighbours) != len(labels):
        raise ValueError(f"neighbours must be (N, k) with N = {len(labels)}, got shape {neighbours.shape}")
    if not ks or min(ks) < 1 or max(ks) > neighbours.shape[1]:
        raise ValueError(f"every K must be in [1, {neighbours.shape[1]}], got {ks}")
    return {k: float(hits.mean()) for k, hits in per_query_hits(labels, neighbours, ks).items()}


def per_query_hits(labels, neighbours, ks) -> dict[int, np.ndarray]:
    """{K: 1.0 / 0.0 per query}: whether a same-class item is among its K nearest, for the
    queries whose class has two or more members, in test-set order (see :func:`recall_at_k`)."""
    labels, neighbours = np.asarray(labels), np.asarray(neighbours)
    _, class_size = _class_ids(labels)
    keep = class_size > 1
    if not keep.any():
        raise ValueError("no class has two or more members, so no query has a relevant item")
    hit = labels[neighbours[keep, : max(ks)]] == labels[keep][:, None]
    first_hit = np.where(hit.any(axis=1), hit.argmax(axis=1), np.iinfo(np.int64).max)
    return {k: (first_hit < k).astype(np.float64) for k in ks}


def _scores(queries: torch.Tensor, x: torch.Tensor, sq_norms: torch.Tensor | None) -> np.ndarray:
    """Scores (higher = nearer) of each query against every item, as a float32 (B, N) array.
    torch rather than numpy: it shares its thread pool with the torch.topk that follows."""
    s = queries @ x.T
    if sq_norms is not None:  # euclidean: -|q - x|^2 + |q|^2, the same ranking per query
        s.mul_(2).sub_(sq_norms)
    return s.numpy()


def _ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best items per row, best first, equal scores by lowest index."""
    # One extra place shows whether a tie group crosses the k-th place (k + 1 <= N: self is -inf).
    top_scores, top = torch.topk(torch.from_numpy(scores), k + 1, dim=1)  # exact, ties in any order
    crossing = np.flatnonzero((top_scores[:, k] == top_scores[:, k - 1]).numpy())
    top_scores, top = top_scores[:, :k].numpy(), top[:, :k].numpy()
    # Such a group keeps its lowest indices (rare: needs an exact float32 tie).
    last = top_scores[:, -1]
    for r in crossing:
        n_above = int(np.sum(top_scores[r] > last[r]))
        top[r, n_above:] = np.flatnonzero(scores[r] == last[r])[: k - n_above]
    # Inside the list, sort each run of equal scores by index; runs are short, so this is cheap.
    eq = top_scores[:, 1:] == top_scores[:, :-1]
    in_run = np.zeros(top.shape, dtype=bool)
    in_run[:, 1:] |= eq
    in_run[:, :-1] |= eq
    rows, cols = np.nonzero(in_run)  # row-major, so each run is contiguous
    if rows.size:
        same_run = (rows[1:] == rows[:-1]) & (cols[1:] == cols[:-1] + 1) & eq[rows[1:], cols[1:] - 1]
        run_id = np.concatenate(([0], np.cumsum(~same_run)))
        members = top[rows, cols]
        top[rows, cols] = members[np.lexsort((members, run_id))]
    return top


def _ap_and_rp(top: np.ndarray, same: np.ndarray, rq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AP@R and R-Precision per query from its ranked list: ``same (B, >= max R)`` marks the
    items of the query's class, ``rq (B,)`` its R."""
    rel = same[:, : int(rq.max())] & (np.arange(int(rq.max())) < rq[:, None])
    hits = np.cumsum(rel, axis=1)
    precision_at_k = hits / np.arange(1, rel.shape[1] + 1)
    return np.sum(precision_at_k * rel, axis=1) / rq, hits[:, -1] / rq


def per_query_map_at_r(
    features, labels, *, metric: str = "cosine", chunk_size: int | None = None, neighbours=None
) -> tuple[np.ndarray, np.ndarray]:
    """AP@R and R-Precision of every query with R_i > 0, in test-set order (see
    :func:`map_at_r_and_r_precision`). With ``neighbours`` (the (N, k) lists of
    :func:`nearest_neighbours`, which order ties like the exact pass) and every R_i <= k they come
    from the lists; otherwise from an exact chunked pass over all pairs."""
    x, labels = _check(features, labels, metric)
    ids, class_size = _class_ids(labels)
    r = class_size - 1
    keep = np.flatnonzero(r > 0)
    if keep.size == 0:
        raise ValueError("no class has two or more members, so MAP@R and R-Precision are undefined")
    if neighbours is not None and r.max() <= neighbours.shape[1]:
        top = np.asarray(neighbours)[keep, : int(r.max())]
        return _ap_and_rp(top, ids[top] == ids[keep][:, None], r[keep])
    ap, rp = np.empty(len(x)), np.empty(len(x))
    queries = keep[np.argsort(r[keep], kind="stable")]  # similar R per chunk: small top-k
    xt = torch.from_numpy(x)
    sq_norms = None if metric == "cosine" else (xt * xt).sum(dim=1)
    step = chunk_size or max(1, min(1024, _CHUNK_ELEMENTS // len(x)))
    for start in range(0, len(queries), step):
        q = queries[start : start + step]
        scores = _scores(xt[q], xt, sq_norms)
        scores[np.arange(len(q)), q] = -np.inf  # exclude self by index
        top = _ranked(scores, int(r[q].max()))
        ap[q], rp[q] = _ap_and_rp(top, ids[top] == ids[q][:, None], r[q])
    return ap[keep], rp[keep]


def map_at_r_and_r_precision(
    features, labels, *, metric: str = "cosine", chunk_size: int | None = None
) -> tuple[float, float]:
    """MAP@R and R-Precision (MLRC, Section 3.2), exact, without a cap on R.

    For query i, R_i = (number of items with its label) - 1 and rel_k = 1 if the k-th nearest
    non-self item shares its label:
        R-Precision_i = (1 / R_i) * sum_{k=1..R_i} rel_k
        MAP@R_i       = (1 / R_i) * sum_{k=1..R_i} P@k * rel_k,  P@k = (1 / k) sum_{j<=k} rel_j
    Both are averaged over queries (``avg_of_avgs=False``); queries with R_i = 0 are dropped.
    Scores are computed chunk-wise as exact float32 matrix products, so memory stays bounded
    even for classes with thousands of members.
    """
    ap, rp = per_query_map_at_r(features, labels, metric=metric, chunk_size=chunk_size)
    return float(ap.mean()), float(rp.mean())


def kmeans_assign(
    features, n_clusters: int, *, metric: str = "cosine", seed: int = 0, niter: int = 20
) -> np.ndarray:
    """Cluster ids (N,) from faiss k-means (Lloyd, ``niter`` iterations, seeded), each row
    assigned to its nearest centroid by L2. With ``metric="cosine"`` the rows are
    L2-normalised first. faiss's defaults otherwise (as in pytorch-metric-learning's
    ``FaissKMeans``), including training on at most 256 sampled points per centroid.
    """
    x, _ = _check(features, metric=metric)
    if not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters must be in [1, N = {len(x)}], got {n_clusters}")
    kmeans = faiss.Kmeans(x.shape[1], n_clusters, niter=niter, seed=seed)
    kmeans.train(x)
    _, assign = kmeans.index.search(x, 1)
    return assign.ravel().astype(np.int64)


def nmi(labels, clusters) -> float:
    """Normalised mutual information between true labels and cluster ids (MLRC):
    I(Y; C) / mean(H(Y), H(C)), i.e. sklearn's ``normalized_mutual_info_score`` with
    ``average_method="arithmetic"`` (also AccuracyCalculator's choice)."""
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if labels.shape != clusters.shape or labels.ndim != 1:
        raise ValueError(f"labels and clusters must be 1-D of equal length, got {labels.shape}, {clusters.shape}")
    return float(normalized_mutual_info_score(labels, clusters, average_method="arithmetic"))


_nmi = nmi  # retrieval_metrics has a flag named ``nmi``


def pairwise_f1(labels, clusters) -> float:
    """Pairwise F1 between a clustering and the true classes, by counting item pairs:
    precision = #pairs in the same cluster and class / #pairs in the same cluster,
    recall    = #pairs in the same cluster and class / #pairs in the same class,
    F1 = 2 P R / (P + R); 0 when there are no such pairs.
    """
    labels, clusters = np.asarray(labels), np.asarray(clusters)
    if labels.shape != clusters.shape or labels.ndim != 1:
        raise ValueError(f"labels and clusters must be 1-D of equal length, got {labels.shape}, {clusters.shape}")
    _, y = np.unique(labels, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    joint = np.bincount(y.ravel() * (c.max() + 1) + c.ravel()).astype(np.float64)

    def pairs(counts):
        return float(np.sum(counts * (counts - 1) / 2))

    both = pairs(joint)
    same_cluster = pairs(np.bincount(c.ravel()).astype(np.float64))
    same_class = pairs(np.bincount(y.ravel()).astype(np.float64))
    if both == 0:
        return 0.0
    precision, recall = both / same_cluster, both / same_class
    return 2 * precision * recall / (precision + recall)


def retrieval_metrics(features, labels, **options) -> dict[str, float]:
    """All retrieval metrics of MLRC on one test set (queries = gallery, self excluded).

    Returns ``{"recall@K": ... for K in recall_k, "map@r", "r_precision"}`` plus ``"nmi"``
    (if ``nmi``) and ``"f1"`` (pairwise F1, if ``f1``), computed from one k-means run with
    K = number of distinct labels. ``options`` are :func:`retrieval_units`' (recall_k, metric,
    nmi, f1, kmeans_seed, kmeans_niter). See the functions used for the definitions.
    """
    return retrieval_units(features, labels, **options)[0]


#: MAP@R reads R_i from the neighbour lists when the largest class has at most this many other
#: members: the one search then goes to max(K, R); beyond it, an exact pass ranks R_i items per query.
MAX_LIST_R = 1024


def retrieval_units(
    features,
    labels,
    *,
    recall_k=(1, 2, 4, 8),
    metric: str = "cosine",
    nmi: bool = True,
    f1: bool = False,
    kmeans_seed: int = 0,
    kmeans_niter: int = 20,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """``(metrics, per_query)``: :func:`retrieval_metrics`' values and, for ``recall@K``,
    ``map@r`` and ``r_precision``, one value per query (queries whose class has two or more
    members, in test-set order) whose mean is the metric.

    One exact kNN search serves Recall@K and, when the largest class fits in the lists
    (R <= max(max K, MAX_LIST_R)), MAP@R and R-Precision too; otherwise those take an exact pass.
    """
    x, labels = _check(features, labels, metric)
    ks = sorted({int(k) for k in recall_k})
    if not ks or ks[0] < 1 or ks[-1] > len(x) - 1:
        raise ValueError(f"every K in recall_k must be in [1, N - 1 = {len(x) - 1}], got {list(recall_k)}")
    _, class_size = _class_ids(labels)
    max_r = int(class_size.max()) - 1
    search_k = max(ks[-1], max_r) if max_r <= max(ks[-1], MAX_LIST_R) else ks[-1]
    _, neighbours = nearest_neighbours(features, min(search_k, len(x) - 1), metric=metric)
    per_query = {f"recall@{k}": v for k, v in per_query_hits(labels, neighbours, ks).items()}
    per_query["map@r"], per_query["r_precision"] = per_query_map_at_r(features, labels, metric=metric,
                                                                      neighbours=neighbours)
    del neighbours
    out = {name: float(v.mean()) for name, v in per_query.items()}
    if nmi or f1:
        clusters = kmeans_assign(features, len(np.unique(labels)), metric=metric, seed=kmeans_seed, niter=kmeans_niter)
        if nmi:
            out["nmi"] = _nmi(labels, clusters)
        if f1:
            out["f1"] = pairwise_f1(labels, clusters)
    return out, per_query
