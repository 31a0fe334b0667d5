"""Tests for fgbench.report.compare: paired tests against scipy and by hand, Holm against statsmodels,
the hierarchical bootstrap (reproducible, equal to a plain loop, nominal coverage), pairing, rank
groups and ranks across datasets."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from fgbench.report.compare import (BLOCK, Cell, bootstrap_means, compare_cells, friedman_ranks, holm, pair_test,
                                    percentile_interval, rank_groups, rank_matrix)

SAME = ("h",)


def cell(values, draws=None, seeds=None):
    values = np.atleast_2d(np.asarray(values, dtype=float))
    seeds = tuple(range(len(values))) if seeds is None else tuple(seeds)
    return Cell(values, seeds, tuple(draws or ["h"] * len(values)))


# --- paired tests ---------------------------------------------------------------------------------


def test_paired_t_over_episodes_by_hand_and_scipy():
    a, b = [1, 0, 1, 1], [0, 0, 1, 0]
    p, how = pair_test(cell(a), cell(b))
    # differences 1, 0, 0, 1: mean 0.5, sd sqrt(1/3), t = 0.5 / (sd / 2) = sqrt(3), 3 degrees of freedom
    assert p == pytest.approx(2 * stats.t.sf(math.sqrt(3), 3))
    assert p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert how == "paired t over units"


def test_paired_t_over_seeds_with_three_seeds():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.6, 0.1, (3, 50)), rng.normal(0.5, 0.1, (3, 50))
    p, how = pair_test(cell(a), cell(b))
    assert p == pytest.approx(stats.ttest_rel(a.mean(1), b.mean(1)).pvalue)
    assert how == "paired t over seeds"


def test_two_seeds_pool_the_episode_differences():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.6, 0.1, (2, 40)), rng.normal(0.55, 0.1, (2, 40))
    assert pair_test(cell(a), cell(b))[0] == pytest.approx(stats.ttest_rel(a.ravel(), b.ravel()).pvalue)


def test_wilcoxon():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.6, 0.1, 30), rng.normal(0.55, 0.1, 30)
    p, how = pair_test(cell(a), cell(b), test="wilcoxon")
    assert p == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert how == "paired Wilcoxon over units"


def test_different_draws_are_compared_unpaired():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.6, 0.1, 30), rng.normal(0.55, 0.1, 30)
    p, how = pair_test(cell(a, draws=["h1"]), cell(b, draws=["h2"]))
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert how == "unpaired Welch t over units"


def test_identical_runs_have_p_one_and_untestable_ones_nan():
    assert pair_test(cell([0.5, 0.7]), cell([0.5, 0.7]))[0] == 1.0
    p, how = pair_test(cell([[0.5]]), cell([[0.6]]))  # one seed, no per-unit values
    assert math.isnan(p) and how == "none"


# --- Holm -----------------------------------------------------------------------------------------


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(1 * 0.04, 0.06)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_holm_against_statsmodels_and_nan_left_out():
    p = np.random.default_rng(4).uniform(0, 0.2, 12)
    assert holm(p) == pytest.approx(multipletests(p, method="holm")[1])
    with_nan = np.r_[p[:5], np.nan, p[5:]]
    out = holm(with_nan)
    assert np.isnan(out[5])
    assert np.r_[out[:5], out[6:]] == pytest.approx(multipletests(p, method="holm")[1])


# --- the bootstrap --------------------------------------------------------------------------------


def loop_bootstrap(values, n_boot, rng):
    """The same resampling as bootstrap_means, one resample at a time (same random stream: the
    seed draws, then per block of BLOCK resamples and seed slot the unit draws)."""
    n_cells, n_seeds, n_units = values.shape
    picks = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    draws = np.zeros((n_seeds, n_boot, n_units), dtype=int)
    for start in range(0, n_boot, BLOCK):
        for j in range(n_seeds):
            draws[j, start:start + BLOCK] = rng.integers(0, n_units, size=(min(BLOCK, n_boot - start), n_units))
    out = np.zeros((n_boot, n_cells))
    for b in range(n_boot):
        out[b] = np.mean([values[:, picks[b, j], draws[j, b]].mean(axis=1) for j in range(n_seeds)], axis=0)
    return out


def test_bootstrap_equals_a_plain_loop_and_is_reproducible():
    values = np.random.default_rng(5).normal(size=(3, 4, 25))
    fast = bootstrap_means(values, 200, np.random.default_rng(7))
    assert fast == pytest.approx(loop_bootstrap(values, 200, np.random.default_rng(7)))
    assert np.array_equal(fast, bootstrap_means(values, 200, np.random.default_rng(7)))
    assert not np.array_equal(fast, bootstrap_means(values, 200, np.random.default_rng(8)))


def test_bootstrap_of_one_value_per_seed_resamples_seeds_only():
    values = np.array([[[0.1], [0.2], [0.6]]])
    resampled = bootstrap_means(values, 500, np.random.default_rng(0))[:, 0]
    # a mean of 3 draws from {0.1, 0.2, 0.6}: a multiple of 0.1 / 3 between 0.1 and 0.6
    assert resampled.min() >= 0.1 - 1e-12 and resampled.max() <= 0.6 + 1e-12
    assert np.allclose(np.round(resampled * 30), resampled * 30)


@pytest.mark.parametrize("n_seeds", [1, 5])
def test_interval_of_the_difference_covers_the_true_effect_at_the_nominal_rate(n_seeds):
    """500 simulated benchmarks of two methods on shared episodes (a common episode difficulty,
    a seed effect per run, per-method episode noise), true difference 0.02: the 95% interval of
    the difference covers it 92-98% of the time. One bootstrap call resamples all of them."""
    rng = np.random.default_rng(11)
    n_bench, n_units = 500, 100
    shape = (n_bench, n_seeds, n_units)
    episode = rng.normal(0, 0.1, shape)
    seed_sd = 0.005 if n_seeds > 1 else 0.0
    a = 0.62 + episode + rng.normal(0, seed_sd, (n_bench, n_seeds, 1)) + rng.normal(0, 0.05, shape)
    b = 0.60 + episode + rng.normal(0, seed_sd, (n_bench, n_seeds, 1)) + rng.normal(0, 0.05, shape)
    resampled = bootstrap_means(np.concatenate([a, b]), 1000, rng)
    lo, hi = percentile_interval(resampled[:, :n_bench] - resampled[:, n_bench:])
    coverage = np.mean((lo <= 0.02) & (0.02 <= hi))
    assert 0.92 <= coverage <= 0.98


# --- the comparison table -------------------------------------------------------------------------


def episodes(rng, mean, shared, n_seeds=1, draws=None):
    values = mean + shared[:n_seeds] + rng.normal(0, 0.02, shared[:n_seeds].shape)
    return cell(values, draws=draws)


def test_comparison_table_pairs_shared_episodes():
    rng = np.random.default_rng(12)
    shared = rng.normal(0, 0.2, (1, 200))  # episode difficulty, common to every method
    cells = {"base": episodes(rng, 0.50, shared), "better": episodes(rng, 0.52, shared),
             "other_draws": episodes(rng, 0.52, rng.normal(0, 0.2, (1, 200)), draws=["other"])}
    table = compare_cells(cells, "base", n_boot=1000).set_index("label")
    assert table.loc["better", "paired"] and not table.loc["other_draws", "paired"]
    assert table.loc["other_draws", "test"] == "unpaired Welch t over units"
    assert table.loc["better", "diff"] == pytest.approx(cells["better"].mean - cells["base"].mean)
    # the shared difficulty cancels in the paired difference: its interval is much narrower
    width = table["diff_hi"] - table["diff_lo"]
    assert width["better"] < 0.3 * width["other_draws"]
    assert table.loc["better", "diff_lo"] > 0 and table.loc["better", "p"] < 1e-6
    assert table.loc["base", "interval"] == "units (1 seed)" and math.isnan(table.loc["base", "p"])
    assert table["p_holm"].dropna().tolist() == pytest.approx(holm(table["p"].dropna()).tolist())
    # the same input gives the same table
    assert compare_cells(cells, "base", n_boot=1000).equals(compare_cells(cells, "base", n_boot=1000))


def test_comparison_without_a_baseline_still_has_intervals_and_groups():
    rng = np.random.default_rng(13)
    shared = rng.normal(0, 0.2, (3, 100))
    cells = {"a": episodes(rng, 0.5, shared, 3), "b": episodes(rng, 0.6, shared, 3)}
    table = compare_cells(cells, None, n_boot=500)
    assert table["label"].tolist() == ["b", "a"] and table["diff"].isna().all()
    assert (table["lo"] < table["mean"]).all() and (table["mean"] < table["hi"]).all()
    assert table["interval"].eq("seeds × units").all()


def test_rank_groups():
    rng = np.random.default_rng(14)
    shared = rng.normal(0, 0.2, (1, 300))
    cells = {"top": episodes(rng, 0.70, shared), "tied": episodes(rng, 0.701, shared),
             "mid": episodes(rng, 0.60, shared), "low": episodes(rng, 0.50, shared)}
    groups = rank_groups(cells)
    assert groups == {"tied": 1, "top": 1, "mid": 2, "low": 3}
    # smaller is better (ECE): the order reverses
    assert rank_groups(cells, lower_is_better=True) == {"low": 1, "mid": 2, "top": 3, "tied": 3}


def test_best_is_bold_material():
    rng = np.random.default_rng(15)
    shared = rng.normal(0, 0.2, (1, 300))
    cells = {"a": episodes(rng, 0.7, shared), "b": episodes(rng, 0.5, shared)}
    table = compare_cells(cells, "b", n_boot=200).set_index("label")
    assert table["best"].to_dict() == {"a": True, "b": False}
    assert table["group"].to_dict() == {"a": 1.0, "b": 2.0}


# --- ranks across datasets ------------------------------------------------------------------------


def test_ranks_refuse_a_missing_cell_and_name_it():
    means = pd.DataFrame({"a": [0.5, 0.6], "b": [0.4, np.nan], "c": [0.3, 0.2]}, index=["cub", "cars"])
    with pytest.raises(ValueError, match="b lacks cars"):
        rank_matrix(means)


def test_friedman_ranks():
    means = pd.DataFrame({"a": [0.9, 0.8, 0.7, 0.9], "b": [0.5, 0.6, 0.8, 0.4], "c": [0.1, 0.2, 0.3, 0.1]},
                         index=["d1", "d2", "d3", "d4"])
    out = friedman_ranks(means)
    # ranks per dataset: a 1,1,2,1; b 2,2,1,2; c 3,3,3,3
    assert out["mean_rank"].to_dict() == pytest.approx({"a": 1.25, "b": 1.75, "c": 3.0})
    assert out["p"] == pytest.approx(stats.friedmanchisquare(means["a"], means["b"], means["c"]).pvalue)
    assert out["posthoc"].shape == (3, 3) and list(out["posthoc"].columns) == ["a", "b", "c"]
    assert friedman_ranks(-means, lower_is_better=True)["mean_rank"].to_dict() == pytest.approx(
        {"a": 1.25, "b": 1.75, "c": 3.0})
    with pytest.raises(ValueError, match="at least 2 datasets"):
        friedman_ranks(means.iloc[:1])
