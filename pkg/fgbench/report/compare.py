"""Comparisons that decide: intervals over seeds and episodes, paired differences against a
baseline, paired tests with Holm's correction, rank groups, and ranks across datasets.

Pure functions of arrays and tidy DataFrames; tables, LaTeX and plots read their results and never
recompute them. The unit of everything below is a *cell*: one method (and layer) in one table
(dataset x setting x protocol x metric), held as a :class:`Cell` whose ``values`` are
``(seeds, units)``: one row per training seed, one column per episode (few-shot), query image
(retrieval) or test image (closed set), the same units in the same order for every run whose
``draws`` (the hash of what decided the units) agree. A metric with no per-unit values (NMI, F1,
ECE, or runs evaluated before per-unit files existed) is a ``(seeds, 1)`` cell of the run values.

Statistics, in one place:

- interval of a mean: hierarchical bootstrap, resampling seeds with replacement and, inside each
  drawn seed, units with replacement; the 2.5 and 97.5 percentiles of the resampled means. With
  one seed it is over units only, with no per-unit values over seeds only (``interval`` says which).
- difference against the baseline: the same resamples for both when they are paired (same seeds,
  same draws), so the shared episode noise cancels; independent resamples otherwise.
- p-value: paired t-test (or Wilcoxon signed-rank) of the per-seed means when both have at least
  3 shared seeds, else of the per-unit differences pooled over the shared seeds; Welch's t-test
  (or Mann-Whitney) when unpaired. Holm's correction over the table's family of comparisons.
- rank groups: the best method leads group 1, which every method not significantly worse than it
  (Holm-adjusted, alpha 0.05) joins; the best of the rest leads group 2, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

__all__ = ["ALPHA", "LOWER_IS_BETTER", "Cell", "bootstrap_means", "compare_cells", "holm", "pair_test",
           "percentile_interval", "rank_groups", "rank_matrix", "friedman_ranks"]

ALPHA = 0.05
#: Metrics where smaller is better (everything else: larger is better).
LOWER_IS_BETTER = frozenset({"ece"})
#: Resamples per block of the bootstrap: the unit counts of a block stay in the CPU cache.
BLOCK = 256


@dataclass(frozen=True)
class Cell:
    """One method in one table: ``values[i, u]`` is unit ``u`` of the run with seed ``seeds[i]``;
    ``draws[i]`` the hash of that run's units (``None``: unknown, never paired on units)."""

    values: np.ndarray
    seeds: tuple
    draws: tuple

    @property
    def mean(self) -> float:
        return float(self.values.mean())

    @property
    def has_units(self) -> bool:
        return self.values.shape[1] > 1

    def pairing(self) -> tuple:
        """Cells with equal pairing keys share seeds and units: they are resampled together."""
        return (self.seeds, self.draws, self.values.shape[1]) if None not in self.draws else id(self)


def interval_kind(cell: Cell) -> str:
    """What the cell's interval resamples."""
    n_seeds = len(cell.seeds)
    if cell.has_units:
        return "seeds × units" if n_seeds > 1 else "units (1 seed)"
    return "seeds" if n_seeds > 1 else "none"


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Hierarchical bootstrap of the grand mean of each of several paired cells.

    ``values``: ``(cells, seeds, units)``, every cell on the same seeds and units. Each resample
    draws ``seeds`` seeds with replacement and, for each drawn seed, ``units`` units with
    replacement (the same draws for every cell: that is what pairs them). Returns
    ``(n_boot, cells)`` resampled means. Vectorised: for a block of resamples and one seed slot,
    the unit counts ``(block, units)`` (a bincount small enough to stay in cache) times the
    values of every seed ``(units, seeds x cells)``, one matrix product; each resample keeps the
    seed it drew. Random numbers: all seed draws first, then per block and slot the unit draws.
    """
    n_cells, n_seeds, n_units = values.shape
    seed_pick = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    by_unit = np.ascontiguousarray(values.transpose(2, 1, 0)).reshape(n_units, n_seeds * n_cells)
    total = np.zeros((n_boot, n_cells))
    # Products this small gain nothing from BLAS threads, and on a busy machine waiting threads
    # make them many times slower (benchmarks/compare.py): one thread.
    with threadpool_limits(1):
        _add_blocks(total, by_unit, seed_pick, n_units, rng)
    return total / (n_seeds * n_units)


def _add_blocks(total, by_unit, seed_pick, n_units, rng) -> None:
    """bootstrap_means' work: add each resample's per-slot unit sums into ``total``."""
    n_boot, n_seeds = seed_pick.shape
    n_cells = total.shape[1]
    for start in range(0, n_boot, BLOCK):
        rows = np.arange(min(BLOCK, n_boot - start))
        offsets = rows[:, None] * n_units
        for slot in range(n_seeds):
            if n_units == 1:
                counts = np.ones((len(rows), 1))
            else:
                draws = rng.integers(0, n_units, size=(len(rows), n_units))
                counts = np.bincount((draws + offsets).ravel(), minlength=len(rows) * n_units)
                counts = counts.reshape(len(rows), n_units).astype(float)
            sums = (counts @ by_unit).reshape(len(rows), n_seeds, n_cells)
            total[start + rows] += sums[rows, seed_pick[start + rows, slot]]


def percentile_interval(resampled: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """The (alpha/2, 1 - alpha/2) percentiles along axis 0."""
    lo, hi = np.percentile(resampled, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return lo, hi


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(a == b))


def pair_test(a: Cell, b: Cell, test: str = "t") -> tuple[float, str]:
    """Two-sided p-value of "a and b have the same mean", and how it was obtained.

    Paired when the cells share seeds and draws: per-seed means when there are at least 3 seeds,
    else per-unit differences pooled over the seeds. Unpaired otherwise (Welch's t-test or
    Mann-Whitney), on per-seed means with at least 3 seeds each, else on the units. ``test``: ``t``
    or ``wilcoxon``. NaN when nothing can be tested (one seed and no per-unit values).
    """
    if test not in ("t", "wilcoxon"):
        raise ValueError(f"test must be 't' or 'wilcoxon', got {test!r}")
    paired = a.pairing() == b.pairing()
    n_seeds = min(len(a.seeds), len(b.seeds))
    if n_seeds >= 3:
        x, y, level = a.values.mean(axis=1), b.values.mean(axis=1), "seeds"
    elif a.has_units and b.has_units:
        x, y, level = a.values.ravel(), b.values.ravel(), "units"
    else:
        return float("nan"), "none"
    if paired:
        how = f"paired {'t' if test == 't' else 'Wilcoxon'} over {level}"
        if _same(x, y):
            return 1.0, how
        p = stats.ttest_rel(x, y).pvalue if test == "t" else stats.wilcoxon(x, y).pvalue
    else:
        how = f"unpaired {'Welch t' if test == 't' else 'Mann-Whitney'} over {level}"
        if _same(np.sort(x), np.sort(y)):
            return 1.0, how
        if test == "t":
            p = stats.ttest_ind(x, y, equal_var=False).pvalue
        else:
            p = stats.mannwhitneyu(x, y, alternative="two-sided").pvalue
    return float(p), how


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values (step-down, monotone, capped at 1); NaN entries stay NaN and are
    not counted in the family."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order]) if m else p[order]
    out[order] = np.minimum(adjusted, 1.0)
    return out


def _better(mean_a: float, mean_b: float, lower_is_better: bool) -> bool:
    return mean_a < mean_b if lower_is_better else mean_a > mean_b


def rank_groups(cells: dict, lower_is_better: bool = False, test: str = "t", alpha: float = ALPHA) -> dict:
    """``{label: group}``: the best cell leads group 1, joined by every cell whose difference from
    it is not significant (Holm over the comparisons with the leader); the best of the rest leads
    group 2, and so on. A cell that cannot be tested against the leader gets no group (NaN)."""
    order = sorted(cells, key=lambda k: cells[k].mean, reverse=not lower_is_better)
    groups, left, group = {}, order, 1
    while left:
        leader, others = left[0], left[1:]
        groups[leader] = group
        p = holm([pair_test(cells[leader], cells[o], test)[0] for o in others])
        for label, p_adj in zip(others, p):
            if np.isnan(p_adj):
                groups[label] = float("nan")
            elif p_adj >= alpha:
                groups[label] = group
        left = [o for o in others if o not in groups]
        group += 1
    return groups


def compare_cells(cells: dict, baseline: str | None, lower_is_better: bool = False, test: str = "t",
                  n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The comparison table of one dataset x setting x protocol x metric.

    ``cells``: ``{label: Cell}``; ``baseline``: a label of ``cells`` or None (absent). One row per
    label, best first: ``mean``, ``lo``/``hi`` (95% interval), ``interval`` (what it resamples),
    ``n_seeds``, ``n_units``, ``diff``/``diff_lo``/``diff_hi`` (against the baseline), ``paired``,
    ``test``, ``p``, ``p_holm`` (over the table's comparisons with the baseline), ``group`` (rank
    group, 1 = best or not significantly different from it), ``best``. Seeded: the same input
    gives the same numbers.
    """
    rng = np.random.default_rng(seed)
    labels = list(cells)
    families = {}
    for label in labels:
        families.setdefault(cells[label].pairing(), []).append(label)
    boot = {}
    for members in families.values():
        resampled = bootstrap_means(np.stack([cells[m].values for m in members]), n_boot, rng)
        boot.update({m: resampled[:, i] for i, m in enumerate(members)})
    rows = []
    for label in labels:
        cell = cells[label]
        lo, hi = percentile_interval(boot[label])
        row = {"label": label, "mean": cell.mean, "lo": float(lo), "hi": float(hi),
               "interval": interval_kind(cell), "n_seeds": len(cell.seeds), "n_units": cell.values.shape[1],
               "diff": np.nan, "diff_lo": np.nan, "diff_hi": np.nan, "paired": np.nan, "test": "", "p": np.nan}
        if baseline is not None and label != baseline:
            base = cells[baseline]
            diff_lo, diff_hi = percentile_interval(boot[label] - boot[baseline])
            p, how = pair_test(cell, base, test)
            row.update(diff=cell.mean - base.mean, diff_lo=float(diff_lo), diff_hi=float(diff_hi),
                       paired=cell.pairing() == base.pairing(), test=how, p=p)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"])
    groups = rank_groups(cells, lower_is_better, test)
    table["group"] = table["label"].map(groups).astype(float)
    table["best"] = table["group"].eq(1) & table["label"].eq(
        min(labels, key=lambda k: cells[k].mean) if lower_is_better else max(labels, key=lambda k: cells[k].mean))
    return table.sort_values("mean", ascending=lower_is_better, kind="stable").reset_index(drop=True)


# --- ranks across datasets -------------------------------------------------------------------


def rank_matrix(means: pd.DataFrame, lower_is_better: bool = False) -> pd.DataFrame:
    """Ranks (1 = best, ties averaged) of a ``blocks x methods`` table of means, block by block.

    Refuses (``ValueError`` naming them) when a method lacks a block: a mean rank over what is
    missing would compare methods on different datasets.
    """
    missing = means.isna()
    if missing.any().any():
        lacks = {m: [str(b) for b in means.index[missing[m]]] for m in means.columns if missing[m].any()}
        text = "; ".join(f"{m} lacks {', '.join(blocks)}" for m, blocks in lacks.items())
        raise ValueError(f"cannot rank: {text}")
    return means.rank(axis=1, ascending=lower_is_better, method="average")


def friedman_ranks(means: pd.DataFrame, lower_is_better: bool = False) -> dict:
    """Mean ranks across blocks, Friedman's test and the Nemenyi post-hoc p-values
    (scikit-posthocs), for a critical-difference diagram.

    ``means``: ``blocks x methods`` (e.g. datasets x methods). Needs at least 2 blocks and
    3 methods; raises ``ValueError`` otherwise, or when a method lacks a block (:func:`rank_matrix`).
    """
    import scikit_posthocs as sp

    ranks = rank_matrix(means, lower_is_better)
    n_blocks, n_methods = means.shape
    if n_blocks < 2 or n_methods < 3:
        raise ValueError(f"cannot rank: Friedman's test needs at least 2 datasets or protocols and 3 methods, "
                         f"got {n_blocks} and {n_methods}")
    scores = -means if lower_is_better else means
    statistic, p = stats.friedmanchisquare(*(scores[c].to_numpy() for c in scores.columns))
    nemenyi = sp.posthoc_nemenyi_friedman(scores.to_numpy())
    nemenyi.index = nemenyi.columns = means.columns
    return {"mean_rank": ranks.mean(axis=0).sort_values(), "statistic": float(statistic), "p": float(p),
            "posthoc": nemenyi, "n_blocks": n_blocks}
