"""Benchmark the batched few-shot logistic regression against scikit-learn.

Builds synthetic but realistic features (class means plus image noise plus
augmentation noise, L2-normalised), draws the same episodes for both solvers,
and reports time, speed-up, prediction agreement and mean accuracy.

    .venv/bin/python benchmarks/fewshot.py                 # Fashion-MNIST-sized, 128-d
    .venv/bin/python benchmarks/fewshot.py --shapes paper  # the papers' shapes (see PAPER_SHAPES)
    .venv/bin/python benchmarks/fewshot.py --shapes paper --against 1099d07  # this solver vs an older one

``--shapes paper`` runs each shape of PAPER_SHAPES on a few episodes: per-episode time of
``fit_predict_logreg`` and of one ``LogisticRegression(C=1)`` fit per episode, interleaved in
this process, their ratio, the fraction of identical query predictions, the accuracy difference
and the solver's peak memory (CPU: peak RSS growth over the features; CUDA: peak allocated).
``--against REV`` times, instead, this checkout's solver against ``pkg/fgbench/evaluate/fewshot.py``
as of git revision REV, alternating in one process (the machine's speed drifts between runs).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from peak_memory import peak_memory

from fgbench.evaluate.fewshot import (
    episode_arrays,
    fewshot_accuracy,
    fit_predict_logreg,
    mean_ci95,
    sample_episode,
)


def make_features(n_classes, per_class, dim, n_aug, class_sep, aug_noise, seed):
    """Features = class mean + image noise; augmented views add more noise."""
    rng = np.random.RandomState(seed)
    means = rng.randn(n_classes, dim) * class_sep / np.sqrt(dim)
    fine = np.repeat(np.arange(n_classes), per_class)
    plain = means[fine] + rng.randn(len(fine), dim) / np.sqrt(dim)
    aug = plain[:, None] + rng.randn(len(fine), n_aug, dim) * aug_noise / np.sqrt(dim)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    return unit(plain).astype(np.float32), unit(aug).astype(np.float32), fine


def sklearn_predict(Xs, ys, Xq, tol=1e-4, max_iter=1000):
    """One scikit-learn fit per episode: the reference implementation (default tol, or a tight
    one to compare with the optimum rather than with lbfgs's early stop)."""
    preds = np.empty(Xq.shape[:2], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in range(len(Xs)):
            clf = LogisticRegression(C=1.0, solver="lbfgs", tol=tol, max_iter=max_iter)
            preds[e] = clf.fit(Xs[e], ys[e]).predict(Xq[e])
    return preds


def run(label, features, aug, fine, n_way, args):
    draws = [
        sample_episode(i, fine, n_way=n_way, n_shot=args.n_shot, n_query=args.n_query)
        for i in range(args.episodes)
    ]
    Xs, ys, Xq, yq = episode_arrays(features, aug, draws, args.n_aug)
    fit_predict_logreg(Xs[:10], ys[:10], Xq[:10])  # warm up both solvers
    sklearn_predict(Xs[:10], ys[:10], Xq[:10])

    t_batched = float("inf")
    for _ in range(args.repeats):  # best of a few runs: the batched run is short
        t0 = time.perf_counter()
        pred = fit_predict_logreg(Xs, ys, Xq)
        t_batched = min(t_batched, time.perf_counter() - t0)

    m = min(args.sklearn_episodes, args.episodes)
    t0 = time.perf_counter()
    pred_sk = sklearn_predict(Xs[:m], ys[:m], Xq[:m])
    t_sk = (time.perf_counter() - t0) * args.episodes / m

    acc, h = mean_ci95((pred == yq).mean(1))
    acc_sk, h_sk = mean_ci95((pred_sk == yq[:m]).mean(1))
    acc_b_m = (pred[:m] == yq[:m]).mean()
    # End-to-end protocol function on the same episodes, as a consistency check.
    full = fewshot_accuracy(features, aug, fine, n_way=n_way, n_shot=args.n_shot,
                            n_query=args.n_query, n_aug=args.n_aug, episodes=args.episodes)
    scaled = f" (sklearn timed on {m} episodes, scaled x{args.episodes / m:.1f})" if m < args.episodes else ""
    print(f"== {label}: {Xs.shape[1]} support vectors x D={Xs.shape[2]}, "
          f"{Xq.shape[1]} queries, {args.episodes} episodes{scaled}")
    print(f"  time batched      : {t_batched:8.3f} s  (best of {args.repeats})")
    print(f"  time sklearn      : {t_sk:8.3f} s")
    print(f"  speed ratio       : {t_sk / t_batched:8.1f} x")
    print(f"  agreement         : {(pred[:m] == pred_sk).mean():8.4f}  (over {pred_sk.size} queries)")
    print(f"  accuracy batched  : {100 * acc:.2f} +- {100 * h:.2f} %  ({100 * acc_b_m:.2f} % on sklearn's episodes)")
    print(f"  accuracy sklearn  : {100 * acc_sk:.2f} +- {100 * h_sk:.2f} %")
    print(f"  fewshot_accuracy(): {100 * full['accuracy']:.2f} +- {100 * full['ci95']:.2f} %")


# name: (classes, dim, n_way, n_shot, class_sep); 15 queries and 5 augmented views per class. The
# class separation gives accuracies of roughly 50-90 %, like real embeddings (an easy task
# would make prediction agreement trivial).
PAPER_SHAPES = {
    "5-way 2048-d (ResNet-50)": (100, 2048, 5, 1, 0.2),
    "5-way 5-shot 2048-d": (100, 2048, 5, 5, 0.2),
    "all-way living17 (68 classes) 2048-d": (68, 2048, "all", 1, 0.28),
    "all-way CIFAR-100 (100 classes) 640-d (ResNet-12)": (100, 640, "all", 1, 0.45),
    "all-way tieredImageNet test (160 classes) 640-d": (160, 640, "all", 1, 0.45),
    "all-way entity30 (240 classes) 2048-d": (240, 2048, "all", 1, 0.3),
}


def paper_shape(label, shape, args):
    """Time both solvers on a few episodes of one shape, alternating episode batches."""
    classes, dim, n_way, n_shot, sep = shape
    features, aug, fine = make_features(classes, n_shot + args.n_query + 5, dim, args.n_aug, sep,
                                        args.aug_noise, args.seed)
    episodes = args.paper_episodes if n_way == "all" else 50 * args.paper_episodes
    draws = [sample_episode(i, fine, n_way=n_way, n_shot=n_shot, n_query=args.n_query) for i in range(episodes)]
    Xs, ys, Xq, yq = episode_arrays(features, aug, draws, args.n_aug)
    fit_predict_logreg(Xs[:1], ys[:1], Xq[:1], device=args.device)  # warm up both solvers
    sklearn_predict(Xs[:1], ys[:1], Xq[:1])
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    # Alternate the two sides in blocks (one episode each at the all-way shapes), so that a change
    # of load on a shared machine hits both alike; scikit-learn runs on the first m episodes.
    m = max(1, episodes // args.sklearn_fraction)
    blocks = min(episodes, args.paper_blocks)
    pred, pred_sk, t_ours, t_sk = [], [], 0.0, 0.0
    with peak_memory() as rss:
        for ids in np.array_split(np.arange(episodes), blocks):
            t0 = time.perf_counter()
            pred.append(fit_predict_logreg(Xs[ids], ys[ids], Xq[ids], device=args.device))
            if args.device == "cuda":
                torch.cuda.synchronize()
            t_ours += time.perf_counter() - t0
            ids = ids[ids < m]
            t0 = time.perf_counter()
            pred_sk.append(sklearn_predict(Xs[ids], ys[ids], Xq[ids]))
            t_sk += time.perf_counter() - t0
    pred, pred_sk = np.concatenate(pred), np.concatenate(pred_sk)
    t_ours, t_sk = t_ours / episodes, t_sk / m
    # CPU: RSS growth over the features during the block, which scikit-learn's fits also share
    # (its per-episode arrays are small); CUDA: the solver's peak allocation.
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else rss["mib"]
    agree = (pred[:m] == pred_sk).mean()
    acc, acc_sk = (pred[:m] == yq[:m]).mean(), (pred_sk == yq[:m]).mean()
    tight = ""
    if args.tight:  # lbfgs to tol=1e-8: the optimum, without the default tol's early stop
        pred_tight = sklearn_predict(Xs[:m], ys[:m], Xq[:m], 1e-8, 100000)
        tight = (f" {100 * (pred[:m] == pred_tight).mean():.2f}% | {100 * (pred_sk == pred_tight).mean():.2f}% |"
                 f" {100 * (pred_tight == yq[:m]).mean():.2f} |")
    print(f"| {label} | {Xs.shape[1]} x {dim} | {m}/{episodes} | {1000 * t_sk:.1f} | {1000 * t_ours:.1f} | "
          f"{t_sk / t_ours:.1f}x | {100 * agree:.2f}% |{tight} {100 * acc_sk:.2f} / {100 * acc:.2f} "
          f"({100 * (acc - acc_sk):+.2f}) | {peak:.0f} MiB |", flush=True)


def paper(args):
    print(f"threads: {args.threads}, device: {args.device}; {args.n_aug} augmented views per support image, "
          f"{args.n_query} queries per class")
    tight = (" fgbench vs tight sklearn | default vs tight sklearn | accuracy tight sklearn |", "---:|---:|---:|") \
        if args.tight else ("", "")
    print("| shape | supports x D | episodes (sklearn/fgbench) | sklearn ms/episode | fgbench ms/episode "
          f"| ratio | identical predictions |{tight[0]} accuracy sklearn / fgbench (diff) | solver peak memory |")
    print(f"|---|---|---|---:|---:|---:|---:|{tight[1]}---|---:|")
    for label, shape in PAPER_SHAPES.items():
        if args.only and args.only not in label:
            continue
        paper_shape(label, shape, args)


def solver_at(rev: str):
    """``fgbench.evaluate.fewshot`` as of git revision ``rev``, imported beside this checkout's."""
    source = subprocess.run(["git", "show", f"{rev}:pkg/fgbench/evaluate/fewshot.py"], check=True,
                            capture_output=True, text=True, cwd=Path(__file__).parent).stdout
    path = Path(tempfile.mkdtemp()) / "fewshot.py"
    path.write_text(source)
    name = f"fgbench.evaluate._fewshot_at_{rev.replace('.', '_')}"  # relative imports resolve in the package
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def against(args):
    """Per-episode time of this solver and of the one at ``args.against`` on the paper shapes,
    alternating whole batches (best and median of ``args.repeats``), and their agreement."""
    old = solver_at(args.against)
    print(f"threads: {args.threads}; solver at {args.against} vs this checkout, best / median of {args.repeats}")
    print(f"| shape | {args.against} ms/episode | this ms/episode | speed-up (best) | identical predictions |")
    print("|---|---:|---:|---:|---:|")
    for label, (classes, dim, n_way, n_shot, sep) in PAPER_SHAPES.items():
        if args.only and args.only not in label:
            continue
        features, aug, fine = make_features(classes, n_shot + args.n_query + 5, dim, args.n_aug, sep,
                                            args.aug_noise, args.seed)
        episodes = args.paper_episodes if n_way == "all" else 50 * args.paper_episodes
        draws = [sample_episode(i, fine, n_way=n_way, n_shot=n_shot, n_query=args.n_query) for i in range(episodes)]
        Xs, ys, Xq, _ = episode_arrays(features, aug, draws, args.n_aug)
        times, preds = {"old": [], "new": []}, {}
        for _ in range(args.repeats):
            for side, solve in (("old", old.fit_predict_logreg), ("new", fit_predict_logreg)):
                t0 = time.perf_counter()
                preds[side] = solve(Xs, ys, Xq, device=args.device)
                times[side].append(1000 * (time.perf_counter() - t0) / episodes)
        best = {side: min(t) for side, t in times.items()}
        median = {side: float(np.median(t)) for side, t in times.items()}
        print(f"| {label} | {best['old']:.2f} / {median['old']:.2f} | {best['new']:.2f} / {median['new']:.2f} | "
              f"{best['old'] / best['new']:.2f}x | {100 * (preds['old'] == preds['new']).mean():.2f}% |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", choices=("fmnist", "paper"), default="fmnist",
                   help="fmnist: the --classes/--dim problem below; paper: the papers' shapes (few episodes each)")
    p.add_argument("--paper-episodes", type=int, default=4,
                   help="with --shapes paper: all-way episodes per shape (5-way shapes run 50 times as many)")
    p.add_argument("--only", default="", help="with --shapes paper: only shapes whose name contains this")
    p.add_argument("--paper-blocks", type=int, default=4,
                   help="with --shapes paper: alternate fgbench and scikit-learn in this many blocks of episodes")
    p.add_argument("--sklearn-fraction", type=int, default=1,
                   help="with --shapes paper: time scikit-learn on 1/N of the episodes")
    p.add_argument("--tight", action="store_true",
                   help="with --shapes paper: also compare fgbench and the default scikit-learn fit with "
                        "scikit-learn fits to tol=1e-8 (the optimum)")
    p.add_argument("--against", metavar="REV",
                   help="with --shapes paper: time this solver against the one at git revision REV instead of scikit-learn")
    p.add_argument("--device", default="cpu")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--n-aug", type=int, default=5)
    p.add_argument("--n-shot", type=int, default=1)
    p.add_argument("--n-query", type=int, default=15)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--sklearn-episodes", type=int, default=1000,
                   help="episodes to time sklearn on (time is scaled to --episodes)")
    p.add_argument("--class-sep", type=float, default=0.4, help="norm of class means vs image noise")
    p.add_argument("--aug-noise", type=float, default=0.5, help="augmentation noise vs image noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="batched runs to time (best is kept)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch and BLAS (sklearn's fits are single-threaded)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    if args.shapes == "paper":
        return against(args) if args.against else paper(args)

    features, aug, fine = make_features(args.classes, args.per_class, args.dim, args.n_aug,
                                        args.class_sep, args.aug_noise, args.seed)
    run("5-way", features, aug, fine, 5, args)
    run(f"all-way ({args.classes} classes)", features, aug, fine, "all", args)


if __name__ == "__main__":
    main()
