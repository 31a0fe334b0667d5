"""Aggregate per-run metrics files into a summary table (CSV and Markdown).

Each run writes ``results/metrics/{dataset}/{setting}/{method}/seed{seed}/{protocol}.json``:
a JSON list of tidy rows (see :data:`COLUMNS`), one set per embedding layer (``layer``; for a
combination of two models, ``"A_layer+B_layer"``).  :func:`load_metrics` stacks them,
:func:`summarise` aggregates over seeds and :func:`write_summary` renders the result; a method
evaluated on two layers is two rows, labelled ``"method (layer)"`` (:func:`run_label`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fgbench.io import atomic_write_text

__all__ = ["COLUMNS", "KEYS", "load_metrics", "run_label", "summarise", "format_markdown", "write_summary"]

#: Columns every metrics row must have.
COLUMNS = ["dataset", "setting", "method", "layer", "seed", "protocol", "metric",
           "value", "ci95", "n", "config_hash", "fgbench_version"]
#: One summary row per combination of these.
KEYS = ["dataset", "setting", "method", "layer", "protocol", "metric"]

EPISODE_MARK = "ᵉ"
MISSING = "–"


def _read_rows(path: Path) -> list[dict]:
    """Read and validate one metrics file; raise ``ValueError`` naming it."""
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read metrics JSON ({e})") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a JSON list of objects")
    for i, row in enumerate(rows):
        missing = [c for c in COLUMNS if c not in row]
        if missing:
            raise ValueError(f"{path}: row {i} lacks column(s) {missing}")
        value, ci = row["value"], row["ci95"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: row {i} has non-numeric value {value!r}")
        if ci is not None and (isinstance(ci, bool) or not isinstance(ci, (int, float))):
            raise ValueError(f"{path}: row {i} has non-numeric ci95 {ci!r}")
        if isinstance(row["seed"], bool) or not isinstance(row["seed"], int):
            raise ValueError(f"{path}: row {i} has non-integer seed {row['seed']!r}")
    return rows


def load_metrics(paths: Iterable[str | os.PathLike], with_source: bool = False) -> pd.DataFrame:
    """Load metrics files into one tidy DataFrame with columns :data:`COLUMNS` (and ``source``,
    each row's file, with ``with_source``).

    Raises ``ValueError`` naming the offending file when one is unreadable, is not a
    list of row objects, or lacks a column; and when two rows describe the same
    (dataset, setting, method, layer, seed, protocol, metric).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rows, sources = [], []
    for path in map(Path, paths):
        file_rows = _read_rows(path)
        rows += [{c: r[c] for c in COLUMNS} for r in file_rows]
        sources += [str(path)] * len(file_rows)
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["value"] = df["value"].astype(float)
    df["ci95"] = pd.to_numeric(df["ci95"], errors="coerce").astype(float)
    df["seed"] = df["seed"].astype(int)
    dup = df.duplicated(KEYS + ["seed"], keep=False)
    if dup.any():
        files = sorted({s for s, d in zip(sources, dup) if d})
        raise ValueError(f"duplicate metric rows for the same run in {files}")
    return df.assign(source=sources) if with_source else df


def run_label(method: str, layer: str) -> str:
    """How tables and plots name a method evaluated on one layer: ``"ancor (backbone)"``."""
    return f"{method} ({layer})"


def _t_ci95(values: pd.Series) -> float:
    """95% Student-t half-width of the mean across seeds (NaN for fewer than 2)."""
    n = len(values)
    if n < 2:
        return math.nan
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n))


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate runs over seeds.

    Returns one row per :data:`KEYS` combination with columns ``n_seeds``, ``mean``,
    ``ci95`` (Student-t 95% half-width across seeds, NaN with one seed),
    ``ci95_episodes`` (mean over seeds of the per-run episode CI, NaN when the
    protocol has none) and ``seeds`` (comma-separated, sorted).  All values are
    fractions, as in the input.
    """
    g = df.sort_values("seed").groupby(KEYS, sort=True)
    out = pd.DataFrame({
        "n_seeds": g["seed"].nunique(),
        "mean": g["value"].mean(),
        "ci95": g["value"].apply(_t_ci95),
        "ci95_episodes": g["ci95"].mean(),  # skips nulls; all-null -> NaN
        "seeds": g["seed"].apply(lambda s: ",".join(map(str, s))),
    })
    return out.reset_index()


def format_cell(row: pd.Series) -> tuple[str, bool]:
    """Format one summary row as ``"mean ± ci"`` in percent; flag episode CIs."""
    text = f"{100 * row['mean']:.2f}"
    if not np.isnan(row["ci95"]):
        return f"{text} ± {100 * row['ci95']:.2f}", False
    if row["n_seeds"] == 1 and not np.isnan(row["ci95_episodes"]):
        return f"{text} ± {100 * row['ci95_episodes']:.2f}{EPISODE_MARK}", True
    return text, False


def format_markdown(summary: pd.DataFrame) -> str:
    """Render the summary as Markdown: one table per dataset x setting.

    Rows are methods and layers (``method (layer)``), columns ``protocol/metric``, cells
    ``mean ± ci`` in percent (across-seed 95% CI; for a single seed the episode CI, marked ``ᵉ``).
    """
    parts = ["# Results summary", "",
             "Values in %; ± is the 95% Student-t confidence half-width across seeds.", ""]
    for (dataset, setting), sub in summary.groupby(["dataset", "setting"], sort=True):
        pm = sub[["protocol", "metric"]].drop_duplicates().sort_values(["protocol", "metric"])
        cols = [f"{p}/{m}" for p, m in pm.itertuples(index=False)]
        methods = sorted({run_label(m, layer) for m, layer in zip(sub["method"], sub["layer"])})
        cells = {m: dict.fromkeys(cols, MISSING) for m in methods}
        any_episode = False
        for _, row in sub.iterrows():
            label = run_label(row["method"], row["layer"])
            cells[label][f"{row['protocol']}/{row['metric']}"], episode = format_cell(row)
            any_episode |= episode
        parts += [f"## {dataset} / {setting}", "",
                  "| method | " + " | ".join(cols) + " |",
                  "|---|" + "---:|" * len(cols)]
        parts += [f"| {m} | " + " | ".join(cells[m][c] for c in cols) + " |" for m in methods]
        if any_episode:
            parts += ["", f"{EPISODE_MARK} ± over episodes (1 seed)."]
        parts.append("")
    return "\n".join(parts)


def write_summary(summary: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    """Atomically write ``summary`` as CSV (raw fractions) and as Markdown (percent)."""
    atomic_write_text(csv_path, summary.to_csv(index=False))
    atomic_write_text(md_path, format_markdown(summary))
