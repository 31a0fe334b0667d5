"""Time the comparison tables at paper scale (synthetic), against a plain-loop bootstrap.

Writes a synthetic benchmark of metrics files with per-episode files beside them (default: 17
methods x 12 datasets x 5 seeds x 1000 episodes of one few-shot protocol), then times what the
`compare` rule does: reading them (fgbench.report.comparisons.load_runs), every comparison table
(hierarchical bootstrap, paired tests, Holm, rank groups) and the ranks across datasets. The
reference is the same bootstrap written as a loop over resamples, timed on one table and scaled
to all of them.

    python benchmarks/compare.py                 # paper scale, 2 threads
    python benchmarks/compare.py --methods 5 --datasets 2 --seeds 2 --episodes 200
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from fgbench.evaluate.units import write_units
from fgbench.report.comparisons import comparisons, load_runs, ranks


def write_benchmark(root: Path, n_methods, n_datasets, n_seeds, n_episodes, seed=0) -> list[Path]:
    """Metrics JSON + per-episode npz for every method, dataset and seed (shared episodes)."""
    rng = np.random.default_rng(seed)
    paths = []
    for d in range(n_datasets):
        difficulty = rng.normal(0, 0.12, n_episodes)
        for m in range(n_methods):
            for s in range(n_seeds):
                acc = np.clip(0.5 + 0.01 * m + difficulty + rng.normal(0, 0.05, n_episodes) + rng.normal(0, 0.005), 0, 1)
                path = root / f"data{d}" / "coarse_to_fine" / f"method{m:02d}" / f"seed{s}" / "fewshot_5way.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps([dict(
                    dataset=f"data{d}", setting="coarse_to_fine", method=f"method{m:02d}", layer="backbone", seed=s,
                    protocol="fewshot_5way", metric="accuracy", value=float(acc.mean()), ci95=0.01, n=n_episodes,
                    config_hash="x", fgbench_version="0")]))
                write_units(path.with_suffix(".npz"), f"episodes{d}", {"backbone": {"accuracy": acc}})
                paths.append(path)
    return paths


def loop_bootstrap_seconds(values: np.ndarray, n_boot: int, rng) -> float:
    """Seconds of the hierarchical bootstrap of one table written as a loop over resamples."""
    n_cells, n_seeds, n_units = values.shape
    start = time.perf_counter()
    for _ in range(n_boot):
        picks = rng.integers(0, n_seeds, n_seeds)
        draws = rng.integers(0, n_units, (n_seeds, n_units))
        np.mean([values[:, picks[j], draws[j]].mean(axis=1) for j in range(n_seeds)], axis=0)
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", type=int, default=17)
    p.add_argument("--datasets", type=int, default=12)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(args.threads):
        paths = write_benchmark(Path(tmp), args.methods, args.datasets, args.seeds, args.episodes)
        start = time.perf_counter()
        runs = load_runs(paths)
        loaded = time.perf_counter()
        table = comparisons(runs, {"coarse_to_fine": "method00 (backbone)"}, n_boot=args.resamples)
        compared = time.perf_counter()
        ranked = ranks(table)  # includes importing scikit-posthocs (and seaborn): about a second
        done = time.perf_counter()
        values = np.stack([np.stack(list(g.sort_values("seed")["units"]))
                           for _, g in runs[runs["dataset"] == "data0"].groupby("method")])
        reference = loop_bootstrap_seconds(values, 100, np.random.default_rng(0)) * args.resamples / 100
    total = done - start
    print(f"{args.methods} methods x {args.datasets} datasets x {args.seeds} seeds x {args.episodes} episodes, "
          f"{args.resamples} resamples, {args.threads} threads")
    print(f"read {len(paths)} metrics + per-episode files: {loaded - start:.1f} s")
    print(f"{table.groupby(['dataset', 'protocol', 'metric']).ngroups} comparison tables: {compared - loaded:.1f} s; "
          f"{len(ranked)} ranking(s): {done - compared:.1f} s")
    print(f"total: {total:.1f} s (target: under 30 s)")
    print(f"reference, a loop over resamples (one table timed, x {args.datasets} tables): "
          f"{reference * args.datasets:.1f} s for the bootstrap alone; "
          f"the comparison tables (bootstrap, tests, Holm, rank groups) take "
          f"{(compared - loaded) / (reference * args.datasets):.2f}x of it")


if __name__ == "__main__":
    main()
