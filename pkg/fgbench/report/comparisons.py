"""The comparison tables and the ranks across datasets, from the metrics files and the per-unit
files beside them (``{protocol}.npz``: one value per episode, query or test image, and the hash of
the draws). The statistics are :mod:`fgbench.report.compare`'s; this module reads, groups and
writes (``comparisons.{csv,md}``, ``ranks.{csv,md}``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from fgbench.evaluate.units import load_units, units_path
from fgbench.io import atomic_write_text
from fgbench.report.aggregate import load_metrics, run_label
from fgbench.report.compare import LOWER_IS_BETTER, Cell, compare_cells, friedman_ranks

__all__ = ["TABLE_KEYS", "HEADLINE", "load_runs", "table_cells", "comparisons", "ranks", "format_comparisons",
           "format_ranks", "headline", "read_comparisons", "write_comparisons"]

#: One comparison table per combination of these.
TABLE_KEYS = ["dataset", "setting", "protocol", "metric"]
#: The metric that ranks methods across datasets, per protocol family.
HEADLINE = {"fewshot": "accuracy", "retrieval": "map@r", "closed_set": "accuracy"}
#: The draws of a run without per-unit values: its runs pair by seed only.
SEED_VALUES = "seed values"


def family(protocol: str) -> str:
    return "fewshot" if protocol.startswith("fewshot") else protocol


def load_runs(paths) -> pd.DataFrame:
    """The tidy metric rows of ``paths`` (:func:`fgbench.report.aggregate.load_metrics`) with two
    more columns: ``draws`` (the run's draws hash, None without a per-unit file) and ``units``
    (its per-unit values, None when it has none for that layer and metric). Raises ``ValueError``
    naming the file when the units' mean disagrees with the row's value."""
    runs = load_metrics(paths, with_source=True)
    draws, units = [], []
    for source, rows in runs.groupby("source", sort=False):
        npz = units_path(source)
        found = load_units(npz) if npz.exists() else {"draws_hash": None, "units": {}}
        for layer, metric, value in zip(rows["layer"], rows["metric"], rows["value"]):
            arr = found["units"].get(layer, {}).get(metric)
            if arr is not None and not np.isclose(arr.mean(), value, rtol=0, atol=1e-6):
                raise ValueError(f"{npz}: the mean of '{layer}/{metric}' ({arr.mean():.6f}) is not the value "
                                 f"in {Path(source).name} ({value:.6f}); re-run the evaluation")
            draws.append(found["draws_hash"])
            units.append(arr)
    return runs.drop(columns="source").assign(draws=draws, units=pd.Series(units, dtype=object, index=runs.index))


def _cell(runs: pd.DataFrame) -> Cell:
    """One method's runs (its seeds) in one table as a Cell."""
    runs = runs.sort_values("seed")
    seeds = tuple(int(s) for s in runs["seed"])
    units = list(runs["units"])
    if all(u is not None for u in units) and len({len(u) for u in units}) == 1:
        return Cell(np.stack(units), seeds, tuple(runs["draws"]))
    return Cell(runs["value"].to_numpy()[:, None], seeds, (SEED_VALUES,) * len(seeds))


def table_cells(runs: pd.DataFrame):
    """Yield ``(dataset, setting, protocol, metric), {label: Cell}`` for every table."""
    for key, sub in runs.groupby(TABLE_KEYS, sort=True):
        cells = {run_label(m, layer): _cell(g) for (m, layer), g in sub.groupby(["method", "layer"], sort=True)}
        yield key, cells


def _baseline_cell(label: str, cells: dict) -> str | None:
    """The baseline's label in one table: ``label`` itself, else its method's only layer there
    (the closed-set protocol scores the ``probs`` layer, not the first embedded one); None if absent."""
    if label in cells:
        return label
    method = label.rsplit(" (", 1)[0]
    layers = [other for other in cells if other.rsplit(" (", 1)[0] == method]
    return layers[0] if len(layers) == 1 else None


def comparisons(runs: pd.DataFrame, baselines: dict, test: str = "t", n_boot: int = 2000) -> pd.DataFrame:
    """Every comparison table stacked: :data:`TABLE_KEYS`, ``baseline`` (its label; empty when the
    setting has none) and ``note`` (empty, or why there is no difference: the baseline is absent),
    then :func:`fgbench.report.compare.compare_cells`' columns. ``baselines``: ``{setting: label}``."""
    frames = []
    for key, cells in table_cells(runs):
        setting, metric = key[1], key[3]
        baseline = baselines.get(setting, "")
        found = _baseline_cell(baseline, cells) if baseline else None
        note = f"baseline {baseline} absent" if baseline and found is None else ""
        baseline = found or baseline
        table = compare_cells(cells, found, metric in LOWER_IS_BETTER, test=test, n_boot=n_boot)
        frames.append(table.assign(**dict(zip(TABLE_KEYS, key)), baseline=baseline, note=note))
    columns = [*TABLE_KEYS, "baseline", "note"]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns + ["label"])
    return out[columns + [c for c in out.columns if c not in columns]]


def ranks(table: pd.DataFrame) -> list[dict]:
    """Mean ranks across datasets and protocols, per setting and protocol family, on the family's
    headline metric (:data:`HEADLINE`): blocks are (dataset, protocol), methods the labels.

    One dict per (setting, family): ``setting``, ``family``, ``blocks``, and either the result of
    :func:`fgbench.report.compare.friedman_ranks` or ``refused``: why there is no ranking (a
    method lacks a block, or too few blocks or methods)."""
    headline = table[[HEADLINE.get(family(p)) == m for p, m in zip(table["protocol"], table["metric"])]]
    out = []
    for (setting, fam), sub in headline.groupby(["setting", headline["protocol"].map(family)], sort=True):
        means = sub.pivot_table(index=["dataset", "protocol"], columns="label", values="mean", aggfunc="first",
                                dropna=False)
        means.index = [f"{d}/{p}" for d, p in means.index]
        entry = {"setting": setting, "family": fam, "metric": HEADLINE[fam], "blocks": list(means.index)}
        try:
            entry.update(friedman_ranks(means, HEADLINE[fam] in LOWER_IS_BETTER))
        except ValueError as e:
            entry["refused"] = str(e)
        out.append(entry)
    return out


def _pct(x: float) -> str:
    return "" if pd.isna(x) else f"{100 * x:.2f}"


def _p(x: float) -> str:
    return "" if pd.isna(x) else ("<0.001" if x < 0.001 else f"{x:.3f}")


def _mean_interval(mean: float, lo: float, hi: float, interval: str) -> str:
    """``mean [lo, hi]`` in %; the mean alone when nothing was resampled (one value)."""
    return _pct(mean) if interval == "none" else f"{_pct(mean)} [{_pct(lo)}, {_pct(hi)}]"


def format_comparisons(table: pd.DataFrame) -> str:
    """Markdown: one section per dataset / setting / protocol / metric."""
    parts = ["# Comparisons", "",
             "Mean in % with its 95% interval (hierarchical bootstrap: seeds, and units within each seed; "
             "*interval over* says what was resampled). Δ: difference from the baseline with its 95% interval, "
             "from the same resamples when both runs scored the same units (paired). p: paired t-test over "
             "seeds (3 or more) or over units; Holm: adjusted over the table's comparisons. Group 1: the best "
             "and every method not significantly worse (Holm, α = 0.05).", ""]
    for key, sub in table.groupby(TABLE_KEYS, sort=False):
        base, note = sub["baseline"].iloc[0], sub["note"].iloc[0]
        parts += [f"## {' / '.join(key)}", "", f"Baseline: {base or 'none configured'}{'; ' + note if note else ''}.", "",
                  "| method (layer) | mean [95% interval] | interval over | Δ vs baseline [95%] | test | p | p (Holm) | group |",
                  "|---|---:|---|---:|---|---:|---:|---:|"]
        for r in sub.itertuples(index=False):
            mean = _mean_interval(r.mean, r.lo, r.hi, r.interval)
            diff = "" if pd.isna(r.diff) else f"{100 * r.diff:+.2f} [{100 * r.diff_lo:+.2f}, {100 * r.diff_hi:+.2f}]"
            label = f"**{r.label}**" if r.best else r.label
            group = "" if pd.isna(r.group) else str(int(r.group))
            parts.append(f"| {label} | {mean} | {r.interval} | {diff} | {r.test} | {_p(r.p)} | {_p(r.p_holm)} | {group} |")
        parts.append("")
    return "\n".join(parts)


def ranks_frame(results: list[dict]) -> pd.DataFrame:
    rows = []
    for r in results:
        common = {"setting": r["setting"], "family": r["family"], "metric": r["metric"], "blocks": len(r["blocks"])}
        if "refused" in r:
            rows.append({**common, "label": "", "mean_rank": np.nan, "friedman_p": np.nan, "refused": r["refused"]})
            continue
        rows += [{**common, "label": label, "mean_rank": rank, "friedman_p": r["p"], "refused": ""}
                 for label, rank in r["mean_rank"].items()]
    return pd.DataFrame(rows, columns=["setting", "family", "metric", "blocks", "label", "mean_rank", "friedman_p",
                                       "refused"])


def format_ranks(results: list[dict]) -> str:
    parts = ["# Ranks across datasets and protocols", "",
             "Mean rank (1 = best) of each method over the blocks (dataset/protocol) of a setting, on the "
             "headline metric; Friedman's test of 'all methods rank alike'. The critical-difference diagram "
             "(plots/ranks.png) joins methods whose Nemenyi post-hoc difference is not significant.", ""]
    for r in results:
        parts += [f"## {r['setting']} / {r['family']} ({r['metric']})", ""]
        if "refused" in r:
            parts += [f"Not ranked: {r['refused'].removeprefix('cannot rank: ')}.", ""]
            continue
        parts += [f"{r['n_blocks']} blocks ({', '.join(r['blocks'])}); Friedman χ² = {r['statistic']:.2f}, "
                  f"p = {_p(r['p'])}.", "", "| method (layer) | mean rank |", "|---|---:|"]
        parts += [f"| {label} | {rank:.2f} |" for label, rank in r["mean_rank"].items()]
        parts.append("")
    return "\n".join(parts)


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison table's headline metrics (:data:`HEADLINE`), formatted for reading (the HTML
    report's start page): mean and Δ in % with their intervals, Holm p, rank group."""
    rows = table[[HEADLINE.get(family(p)) == m for p, m in zip(table["protocol"], table["metric"])]]
    out = pd.DataFrame({
        "dataset / setting": rows["dataset"] + " / " + rows["setting"],
        "protocol (metric)": rows["protocol"] + " (" + rows["metric"] + ")",
        "method (layer)": [f"{label} (baseline)" if label == base else label
                           for label, base in zip(rows["label"], rows["baseline"])],
        "mean [95%]": [_mean_interval(*r) for r in zip(rows["mean"], rows["lo"], rows["hi"], rows["interval"])],
        "Δ vs baseline [95%]": [note if pd.isna(d) and note else "" if pd.isna(d) else
                                f"{100 * d:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]" + ("" if paired else " unpaired")
                                for d, lo, hi, paired, note in zip(rows["diff"], rows["diff_lo"], rows["diff_hi"],
                                                                   rows["paired"], rows["note"])],
        "p (Holm)": [_p(p) for p in rows["p_holm"]],
        "group": ["" if pd.isna(g) else str(int(g)) for g in rows["group"]],
    })
    return out


def write_comparisons(table: pd.DataFrame, results: list[dict], folder: str | os.PathLike) -> None:
    """Atomically write ``comparisons.{csv,md}``, ``comparisons_headline.csv`` and ``ranks.{csv,md}``
    into ``folder``."""
    folder = Path(folder)
    atomic_write_text(folder / "comparisons.csv", table.to_csv(index=False))
    atomic_write_text(folder / "comparisons_headline.csv", headline(table).to_csv(index=False))
    atomic_write_text(folder / "comparisons.md", format_comparisons(table))
    atomic_write_text(folder / "ranks.csv", ranks_frame(results).to_csv(index=False))
    atomic_write_text(folder / "ranks.md", format_ranks(results))


def read_comparisons(path: str | os.PathLike) -> pd.DataFrame:
    """``comparisons.csv`` back as :func:`comparisons` wrote it (empty texts stay empty)."""
    table = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in NUMERIC})
    table["paired"] = table["paired"].map({"True": True, "False": False, True: True, False: False})
    table["best"] = table["best"].astype(str).eq("True")
    return table


NUMERIC = ["mean", "lo", "hi", "n_seeds", "n_units", "diff", "diff_lo", "diff_hi", "p", "p_holm", "group"]
