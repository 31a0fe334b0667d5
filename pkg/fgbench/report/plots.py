"""Per-protocol bar charts of the summary table (matplotlib, Agg backend)."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fgbench.io import atomic_path
from fgbench.report.aggregate import run_label

__all__ = ["MAIN_METRICS", "main_metrics", "plot_protocol"]

#: Headline metric(s) per protocol; ``fewshot_*`` protocols use accuracy.
MAIN_METRICS = {"retrieval": ["recall@1", "map@r"], "closed_set": ["accuracy", "ece"]}


def main_metrics(protocol: str) -> list[str]:
    """Return the metric(s) plotted for ``protocol``."""
    if protocol.startswith("fewshot"):
        return ["accuracy"]
    return MAIN_METRICS.get(protocol, [])


def _error(sub: pd.DataFrame) -> np.ndarray:
    """Across-seed CI where available, else the episode CI, else NaN (no bar)."""
    return sub["ci95"].fillna(sub["ci95_episodes"]).to_numpy()


def plot_protocol(summary: pd.DataFrame, protocol: str, out_png: str | os.PathLike) -> None:
    """Write a grouped bar chart of ``protocol``'s main metric(s) to ``out_png``.

    One panel per main metric; groups on the x axis are ``dataset / setting``, one
    bar per method and layer (``method (layer)``), values in percent with 95% CI error bars (across seeds, or over
    episodes for single-seed runs).  Raises ``ValueError`` if the summary has no
    row for the protocol's main metric(s).
    """
    metrics = [m for m in main_metrics(protocol)
               if ((summary["protocol"] == protocol) & (summary["metric"] == m)).any()]
    if not metrics:
        raise ValueError(f"no {main_metrics(protocol) or 'known'} metric for protocol {protocol!r} in summary")
    data = summary[(summary["protocol"] == protocol) & summary["metric"].isin(metrics)]
    data = data.assign(label=[run_label(m, layer) for m, layer in zip(data["method"], data["layer"])])
    methods = sorted(data["label"].unique())
    width = 0.8 / len(methods)
    groups = {m: sorted(set(zip(g["dataset"], g["setting"]))) for m, g in data.groupby("metric")}
    n_groups = max(map(len, groups.values()))

    fig = Figure(figsize=(max(4.0, 1.2 + 0.35 * n_groups * len(methods)) * len(metrics), 4.5),
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        x = np.arange(len(groups[metric]))
        for i, method in enumerate(methods):
            sub = (data[(data["metric"] == metric) & (data["label"] == method)]
                   .set_index(["dataset", "setting"]).reindex(groups[metric]))
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, 100 * sub["mean"].to_numpy(), width,
                   yerr=100 * _error(sub), capsize=3, label=method)
        ax.set_xticks(x, [f"{d}\n{s}" for d, s in groups[metric]])
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{protocol}: {metric}")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    axes[-1].legend(title="method (layer)", fontsize="small", loc="best")
    fig.supxlabel("error bars: 95% CI across seeds (over episodes for single-seed runs)",
                  fontsize="x-small", color="gray")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
