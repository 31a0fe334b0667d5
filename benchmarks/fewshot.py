"""Benchmark the batched few-shot logistic regression against scikit-learn.

Builds synthetic but realistic features (class means plus image noise plus
augmentation noise, L2-normalised), draws the same episodes for both solvers,
and reports time, speed-up, prediction agreement and mean accuracy.

    .venv/bin/python benchmarks/fewshot.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

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


def sklearn_predict(Xs, ys, Xq):
    """One scikit-learn fit per episode: the reference implementation."""
    preds = np.empty(Xq.shape[:2], dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for e in range(len(Xs)):
            clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000)
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


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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

    features, aug, fine = make_features(args.classes, args.per_class, args.dim, args.n_aug,
                                        args.class_sep, args.aug_noise, args.seed)
    run("5-way", features, aug, fine, 5, args)
    run(f"all-way ({args.classes} classes)", features, aug, fine, "all", args)


if __name__ == "__main__":
    main()
