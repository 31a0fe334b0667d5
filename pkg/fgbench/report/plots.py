"""Plots of the comparison table (matplotlib, Agg backend): per protocol a forest plot (each
method's mean and 95% interval) and a paired-difference plot (each method minus the baseline),
one panel per dataset x setting x headline metric; and the critical-difference diagrams of the
ranks across datasets. They draw :mod:`fgbench.report.compare`'s numbers, never recompute them.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fgbench.io import atomic_path
from fgbench.report.compare import ALPHA, LOWER_IS_BETTER

__all__ = ["MAIN_METRICS", "figures_html", "main_metrics", "plot_forest", "plot_differences", "plot_ranks"]

#: Headline metric(s) per protocol; ``fewshot_*`` protocols use accuracy.
MAIN_METRICS = {"retrieval": ["recall@1", "map@r"], "closed_set": ["accuracy", "ece"]}
#: Colours of a method against the baseline: significantly better, worse, neither; the baseline.
BETTER, WORSE, NEUTRAL, BASELINE = "#1a7f37", "#cf222e", "#8c959f", "#000000"
ROW_INCHES, PANEL_INCHES, MAX_COLUMNS = 0.24, 1.6, 3


def main_metrics(protocol: str) -> list[str]:
    """Return the metric(s) plotted for ``protocol``."""
    if protocol.startswith("fewshot"):
        return ["accuracy"]
    return MAIN_METRICS.get(protocol, [])


def _panels(table: pd.DataFrame, protocol: str) -> list[tuple[tuple, pd.DataFrame]]:
    """(dataset, setting, metric), rows: one panel per dataset x setting x headline metric."""
    metrics = main_metrics(protocol)
    rows = table[(table["protocol"] == protocol) & table["metric"].isin(metrics)]
    if rows.empty:
        raise ValueError(f"no {metrics or 'known'} metric for protocol {protocol!r} in the comparison table")
    return [(key, sub) for key, sub in rows.groupby(["dataset", "setting", "metric"], sort=True)]


def _figure(panels: list, rows_per_panel) -> tuple[Figure, list]:
    """A figure of panels in up to MAX_COLUMNS columns, each as tall as its method list."""
    n_cols = min(MAX_COLUMNS, len(panels))
    n_rows = -(-len(panels) // n_cols)
    heights = [max(rows_per_panel(sub) for _, sub in panels[r * n_cols:(r + 1) * n_cols]) * ROW_INCHES + PANEL_INCHES
               for r in range(n_rows)]
    fig = Figure(figsize=(max(6.0, 4.8 * n_cols), sum(heights)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(n_rows, n_cols, height_ratios=heights)
    axes = [fig.add_subplot(grid[i // n_cols, i % n_cols]) for i in range(len(panels))]
    return fig, axes


def _significance(sub: pd.DataFrame, lower_is_better: bool) -> list[str]:
    """Each row's colour: better or worse than the baseline (Holm-adjusted p < alpha), else neutral."""
    colours = []
    for label, base, diff, p in zip(sub["label"], sub["baseline"], sub["diff"], sub["p_holm"]):
        if label == base:
            colours.append(BASELINE)
        elif pd.isna(p) or p >= ALPHA:
            colours.append(NEUTRAL)
        else:
            colours.append(BETTER if (diff < 0) == lower_is_better else WORSE)
    return colours


def _save(fig: Figure, out_png) -> None:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def _legend(fig: Figure, what: str) -> None:
    fig.suptitle(what, fontsize="medium")
    fig.supxlabel(f"green: significantly better than the baseline (black), red: worse,\n"
                  f"grey: not significant (paired test, Holm-adjusted p < {ALPHA})", fontsize="x-small", color="dimgray")


def plot_forest(table: pd.DataFrame, protocol: str, out_png: str | os.PathLike) -> None:
    """Forest plot of ``protocol``: per panel the methods as rows sorted by mean (best on top), a
    point with its 95% interval, the baseline in black with a dashed line at its mean, methods
    significantly better or worse than the baseline in green or red. ``ValueError`` when the table
    has no row of the protocol's headline metric(s)."""
    panels = _panels(table, protocol)
    fig, axes = _figure(panels, len)
    for ax, ((dataset, setting, metric), sub) in zip(axes, panels):
        lower = metric in LOWER_IS_BETTER
        sub = sub.sort_values("mean", ascending=not lower)  # matplotlib draws the first row at the bottom
        y = np.arange(len(sub))
        colours = _significance(sub, lower)
        mean, lo, hi = (100 * sub[c].to_numpy() for c in ("mean", "lo", "hi"))
        ax.hlines(y, lo, hi, colors=colours, linewidth=1.5)
        is_base = (sub["label"] == sub["baseline"]).to_numpy()
        ax.scatter(mean[~is_base], y[~is_base], c=np.array(colours)[~is_base], s=22, zorder=3)
        ax.scatter(mean[is_base], y[is_base], c=BASELINE, marker="D", s=30, zorder=3)
        if is_base.any():
            ax.axvline(mean[is_base][0], color=BASELINE, linestyle="--", linewidth=0.8)
        labels = [f"{label} (baseline)" if b else label for label, b in zip(sub["label"], is_base)]
        ax.set_yticks(y, labels, fontsize="small")
        for tick, colour in zip(ax.get_yticklabels(), colours):
            tick.set_color(colour)
        over = ", ".join(sorted(set(sub["interval"])))
        ax.set_title(f"{dataset} / {setting}\n{metric} (%), 95% interval over {over}", fontsize="small")
        ax.set_ylim(-0.7, len(sub) - 0.3)
        ax.grid(axis="x", alpha=0.3)
    _legend(fig, f"{protocol}: mean and 95% interval per method, best on top")
    _save(fig, out_png)


def plot_differences(table: pd.DataFrame, protocol: str, out_png: str | os.PathLike) -> None:
    """Paired-difference plot of ``protocol``: per panel each method minus the baseline, in
    percentage points with its 95% interval, sorted; hollow markers where the two runs did not
    score the same units (unpaired). A panel without a baseline says so."""
    panels = _panels(table, protocol)
    fig, axes = _figure(panels, lambda sub: max(1, len(sub) - 1))
    for ax, ((dataset, setting, metric), sub) in zip(axes, panels):
        lower = metric in LOWER_IS_BETTER
        ax.set_title(f"{dataset} / {setting}\n{metric}: method − {sub['baseline'].iloc[0] or 'baseline'} "
                     "(points), 95% interval", fontsize="small")
        note = sub["note"].iloc[0] or "no method besides the baseline"
        sub = sub.dropna(subset=["diff"]).sort_values("diff", ascending=not lower)
        if sub.empty:
            ax.text(0.5, 0.5, f"no difference: {note}", ha="center", va="center", transform=ax.transAxes,
                    fontsize="small")
            ax.set_axis_off()
            continue
        y = np.arange(len(sub))
        colours = _significance(sub, lower)
        diff, lo, hi = (100 * sub[c].to_numpy() for c in ("diff", "diff_lo", "diff_hi"))
        ax.hlines(y, lo, hi, colors=colours, linewidth=1.5)
        paired = sub["paired"].astype(bool).to_numpy()
        ax.scatter(diff[paired], y[paired], c=np.array(colours)[paired], s=22, zorder=3)
        ax.scatter(diff[~paired], y[~paired], facecolors="white", edgecolors=np.array(colours)[~paired], s=22,
                   zorder=3)
        ax.axvline(0, color=BASELINE, linewidth=0.8)
        labels = [label if p else f"{label} (unpaired)" for label, p in zip(sub["label"], paired)]
        ax.set_yticks(y, labels, fontsize="small")
        for tick, colour in zip(ax.get_yticklabels(), colours):
            tick.set_color(colour)
        ax.set_ylim(-0.7, len(sub) - 0.3)
        ax.grid(axis="x", alpha=0.3)
    _legend(fig, f"{protocol}: difference from the baseline on the same episodes/queries")
    _save(fig, out_png)


def plot_ranks(results: list[dict], out_png: str | os.PathLike) -> None:
    """One critical-difference diagram (scikit-posthocs) per ranked setting and protocol family:
    methods on the mean-rank axis, joined by a bar where Nemenyi's test finds no difference; below
    them, one line per setting and family that could not be ranked, saying why."""
    import scikit_posthocs as sp

    ranked = [r for r in results if "refused" not in r]
    refused = [f"{r['setting']} / {r['family']} ({r['metric']}): {r['refused'].removeprefix('cannot rank: ')}"
               for r in results if "refused" in r] or ([] if ranked else ["nothing to rank"])
    heights = [1.2 + 0.2 * len(r["mean_rank"]) for r in ranked] + ([0.3 + 0.22 * len(refused)] if refused else [])
    fig = Figure(figsize=(9, sum(heights) + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(heights), 1, squeeze=False, height_ratios=heights)[:, 0]
    for ax, r in zip(axes, ranked):
        sp.critical_difference_diagram(r["mean_rank"], r["posthoc"], ax=ax, alpha=ALPHA,
                                       label_props={"fontsize": "small"})
        ax.set_title(f"{r['setting']} / {r['family']} ({r['metric']}): mean rank over {r['n_blocks']} blocks, "
                     f"Friedman p = {r['p']:.3g}", fontsize="small")
    if refused:
        axes[-1].text(0, 1, "Not ranked:\n" + "\n".join(refused), va="top", fontsize="x-small",
                      transform=axes[-1].transAxes)
        axes[-1].set_axis_off()
    _save(fig, out_png)


def figures_html(paths) -> str:
    """The PNGs as one HTML fragment of ``<img>`` elements carrying their data (base64), for a
    page that can only include text files (the HTML report's start page, via ``raw:: html``)."""
    parts = []
    for path in map(Path, paths):
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}" '
                     f'style="max-width: 100%"><figcaption>{html.escape(path.name)}</figcaption></figure>')
    return "\n".join(parts) + "\n"
