"""Time fgbench's retrieval metrics against pytorch-metric-learning's AccuracyCalculator.

Both run in this process on the same clustered embeddings (default 10 classes x 6,000 points,
128-D, float32), with cosine similarity. pml is given the L2-normalised embeddings, faiss
IndexFlatIP and k="max_bin_count" (so R is not capped), and a FaissKMeans with the same seed
and iterations as fgbench: both then run the same faiss k-means on the same array, so NMI is
compared directly.

    python benchmarks/retrieval.py                      # 60,000 x 128
    python benchmarks/retrieval.py --per-class 2000     # smaller
    python benchmarks/retrieval.py --shape cub          # CUB-sized: 5,924 x 512, 100 classes
    python benchmarks/retrieval.py --shape sop          # SOP-sized: 60,502 x 512, 11,316 classes of 2-12

With ``--shape cub|sop`` it also times fgbench on the dataset's own protocol (SOP: Recall@1, 10,
100, 1000; CUB: Recall@1, 2, 4, 8; with MAP@R, R-Precision and NMI) and the floor, a bare faiss
exact kNN search (IndexFlatIP) with the largest K, and prints each step's peak memory (RSS growth).
"""

import argparse
import resource
import time

import faiss
import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKMeans, FaissKNN

from peak_memory import peak_memory

from fgbench.evaluate.retrieval import retrieval_metrics

# name: (images, classes, smallest and largest class, dim, recall_k of the dataset's papers)
SHAPES = {"cub": (5924, 100, 40, 79, 512, (1, 2, 4, 8)), "sop": (60502, 11316, 2, 12, 512, (1, 10, 100, 1000))}

# fgbench key -> AccuracyCalculator key
PAIRS = {
    "recall@1": "precision_at_1",
    "r_precision": "r_precision",
    "map@r": "mean_average_precision_at_r",
    "nmi": "NMI",
}


def clustered_embeddings(classes, per_class, dim, seed=0):
    """Each class is a mixture of 5 Gaussian modes around its centre, so classes overlap."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 1, dim))
    modes = centres + 1.0 * rng.normal(size=(classes, 5, dim))
    labels = np.repeat(np.arange(classes), per_class)
    mode = rng.integers(0, 5, size=len(labels))
    x = modes[labels, mode] + 3.0 * rng.normal(size=(len(labels), dim))
    return x.astype(np.float32), labels


def shaped_embeddings(images, classes, smallest, largest, dim, seed=0):
    """``classes`` classes of ``smallest``..``largest`` members, ``images`` in all, around random
    centres with noise that makes Recall@1 neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    sizes = np.full(classes, smallest)
    extra = rng.choice(np.repeat(np.arange(classes), largest - smallest), images - sizes.sum(), replace=False)
    sizes += np.bincount(extra, minlength=classes)
    labels = rng.permutation(np.repeat(np.arange(classes), sizes))
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    x = centres[labels] + 3.3 * rng.normal(size=(len(labels), dim)).astype(np.float32)
    return x, labels


def timed(label, fn):
    with peak_memory() as peak:
        t = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t
    print(f"{label}: {seconds:.1f} s, peak memory +{peak['mib'] / 1024:.2f} GiB", flush=True)
    return out, seconds


def shape_run(args):
    images, classes, smallest, largest, dim, recall_k = SHAPES[args.shape]
    x, y = shaped_embeddings(images, classes, smallest, largest, dim, args.seed)
    print(f"data ({args.shape}-sized): {len(x)} x {dim} float32, {classes} classes of {smallest}-{largest}; "
          f"threads: faiss {faiss.omp_get_max_threads()}, torch {torch.get_num_threads()}", flush=True)
    x_unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = max(recall_k)
    if not args.compare_only:
        timed(f"faiss IndexFlatIP exact kNN floor, k = {k + 1}", lambda: _flat_search(x_unit, k + 1))
        timed(f"faiss IndexFlatIP exact kNN floor, k = {largest} (AccuracyCalculator's k)",
              lambda: _flat_search(x_unit, largest))
    ours, t_ours = timed("fgbench, the AccuracyCalculator metrics (Recall@1, MAP@R, R-Precision, NMI)",
                         lambda: retrieval_metrics(x, y, recall_k=(1,), nmi=True, kmeans_seed=0, kmeans_niter=20))
    if not args.compare_only:
        full, _ = timed(f"fgbench, the dataset's protocol (Recall@{','.join(map(str, recall_k))}, MAP@R, R-Precision, NMI)",
                        lambda: retrieval_metrics(x, y, recall_k=recall_k, nmi=True, kmeans_seed=0, kmeans_niter=20))
        print("  " + ", ".join(f"{key}={v:.6f}" for key, v in full.items()))
    calc = AccuracyCalculator(include=tuple(PAIRS.values()), k="max_bin_count", device=torch.device("cpu"),
                              knn_func=FaissKNN(index_init_fn=faiss.IndexFlatIP),
                              kmeans_func=FaissKMeans(niter=20, seed=0))
    theirs, t_pml = timed("pml AccuracyCalculator(k='max_bin_count', FaissKMeans(niter=20, seed=0))",
                          lambda: calc.get_accuracy(x_unit, y))
    print(f"time ratio AccuracyCalculator / fgbench (same metrics): {t_pml / t_ours:.2f}")
    print("abs differences: " + ", ".join(f"{key} {abs(ours[key] - theirs[v]):.2e}" for key, v in PAIRS.items()))


def _flat_search(x, k):
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, k)


def peak_rss_gib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=6000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", choices=sorted(SHAPES), help="a dataset's shape instead of --classes/--per-class/--dim")
    ap.add_argument("--compare-only", action="store_true",
                    help="with --shape: only fgbench and AccuracyCalculator on the same metrics, one after the other")
    args = ap.parse_args()
    if args.shape:
        return shape_run(args)

    x, y = clustered_embeddings(args.classes, args.per_class, args.dim, args.seed)
    print(f"data: {len(x)} x {x.shape[1]} float32, {args.classes} classes of {args.per_class}")
    print(f"threads: faiss {faiss.omp_get_max_threads()}, torch {torch.get_num_threads()}")

    t = time.perf_counter()
    ours = retrieval_metrics(x, y, recall_k=(1, 2, 4, 8), metric="cosine", nmi=True, kmeans_seed=0, kmeans_niter=20)
    t_ours = time.perf_counter() - t
    print(f"fgbench retrieval_metrics: {t_ours:.1f} s (peak RSS so far {peak_rss_gib():.1f} GiB)")
    print("  " + ", ".join(f"{k}={v:.6f}" for k, v in ours.items()))

    x_unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    calc = AccuracyCalculator(
        include=tuple(PAIRS.values()),
        k="max_bin_count",
        device=torch.device("cpu"),
        knn_func=FaissKNN(index_init_fn=faiss.IndexFlatIP),
        kmeans_func=FaissKMeans(niter=20, seed=0),
    )
    t = time.perf_counter()
    theirs = calc.get_accuracy(x_unit, y)
    t_pml = time.perf_counter() - t
    print(f"pml AccuracyCalculator(k='max_bin_count'): {t_pml:.1f} s (peak RSS so far {peak_rss_gib():.1f} GiB)")
    print("  " + ", ".join(f"{k}={v:.6f}" for k, v in theirs.items()))

    diffs = {k: abs(ours[k] - theirs[v]) for k, v in PAIRS.items()}
    print(f"time ratio pml / fgbench: {t_pml / t_ours:.2f}")
    print("abs differences: " + ", ".join(f"{k} {d:.2e}" for k, d in diffs.items()))
    det = max(diffs[k] for k in ("recall@1", "r_precision", "map@r"))
    print(f"max abs difference, deterministic metrics: {det:.2e} ({'OK' if det <= 1e-6 else 'FAIL'} at 1e-6)")
    print(f"NMI difference (same faiss k-means, same seed, same array): {diffs['nmi']:.2e}")


if __name__ == "__main__":
    main()
