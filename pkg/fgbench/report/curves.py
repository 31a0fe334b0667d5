"""Training curves of one run (matplotlib, Agg backend), drawn from its ``train_log.csv``.

The training loop (:mod:`fgbench.train.loop`) writes one row per epoch: ``epoch``, ``lr``,
``loss``, the method's own terms (``*_loss``, ``*accuracy``, others such as vMF's ``beta``),
``val_recall@1`` (empty for label-free methods, which keep their last epoch), ``seconds``, and
the throughput: ``images_per_s`` and ``data_wait`` (the fraction of step time spent waiting for
data). The plot has one panel per kind of column: loss terms; validation Recall@1 and training
accuracies (in %); the learning rate; the throughput (images/s, and data waiting in % on a
second axis); any other logged term. The epoch the run selected
(``best_epoch`` in the ``config.yaml`` written beside the log) is marked in every panel.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fgbench.errors import FgbenchError
from fgbench.io import atomic_path

__all__ = ["ACCURACY_PANEL", "THROUGHPUT_PANEL", "VAL_COLUMN", "best_epoch", "curve_panels", "plot_curves", "read_train_log"]

VAL_COLUMN = "val_recall@1"
ACCURACY_PANEL = "Recall@1 and accuracy (%)"
THROUGHPUT_PANEL = "throughput"
WAIT_COLUMN = "data_wait"
#: Bookkeeping columns: the x axis and the wall time are not curves.
_NOT_CURVES = {"epoch", "seconds"}


def read_train_log(path: str | os.PathLike) -> pd.DataFrame:
    """The log as numbers, one row per epoch; ``FgbenchError`` naming ``path`` when it is
    missing, empty, lacks ``epoch`` or ``loss``, or holds a value that is not a number."""
    path = Path(path)
    if not path.is_file():
        raise FgbenchError(f"training log {path} not found (written by `fgbench train`)")
    try:
        log = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise FgbenchError(f"training log {path} is empty (no header, no epoch)") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise FgbenchError(f"training log {path} is not a CSV file: {e}") from None
    missing = [c for c in ("epoch", "loss") if c not in log.columns]
    if missing:
        raise FgbenchError(f"training log {path} lacks column(s) {', '.join(missing)}; "
                           f"its columns: {', '.join(map(str, log.columns))}")
    if log.empty:
        raise FgbenchError(f"training log {path} has a header but no epoch")
    try:
        return log.apply(pd.to_numeric)
    except (ValueError, TypeError) as e:
        raise FgbenchError(f"training log {path} holds a value that is not a number ({e})") from None


def best_epoch(config_path: str | os.PathLike | None) -> int | None:
    """``best_epoch`` of the run's resolved config, or None when the file or key is absent
    (the curves are still worth drawing without the mark)."""
    if config_path is None or not Path(config_path).is_file():
        return None
    try:
        value = (yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}).get("best_epoch")
    except (yaml.YAMLError, AttributeError) as e:
        raise FgbenchError(f"run config {config_path} is not a YAML mapping ({e})") from None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def curve_panels(columns) -> dict[str, list[str]]:
    """Which columns each panel draws (panels without columns are left out)."""
    columns = [c for c in columns if c not in _NOT_CURVES]
    losses = [c for c in columns if c == "loss" or c.endswith("_loss")]
    accuracies = [c for c in columns if c == VAL_COLUMN or c.endswith("accuracy")]
    rate = [c for c in columns if c == "lr"]
    throughput = [c for c in columns if c in ("images_per_s", WAIT_COLUMN)]
    other = [c for c in columns if c not in {*losses, *accuracies, *rate, *throughput}]
    panels = {"loss": losses, ACCURACY_PANEL: accuracies, "learning rate": rate, THROUGHPUT_PANEL: throughput,
              "other terms": other}
    return {title: cols for title, cols in panels.items() if cols}


def _draw(ax, log: pd.DataFrame, title: str, cols: list[str]):
    """Draw the panel's columns; returns its second y axis (data waiting), or None."""
    twin, scale = None, 100.0 if title == ACCURACY_PANEL else 1.0
    for col in cols:
        values = log[col]
        if values.isna().all():  # label-free methods: no validation score to draw
            continue
        if col == WAIT_COLUMN:
            twin = _draw_wait(ax, log)
            continue
        emphasis = {"linewidth": 2.2} if col in ("loss", VAL_COLUMN) else {"linewidth": 1.2}
        # markers, so that a one-epoch run still shows its points
        ax.plot(log["epoch"], scale * values, marker="o", markersize=3, label=col, **emphasis)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if title == "learning rate":
        if log["lr"].gt(0).all() and log["lr"].max() > 10 * log["lr"].min():
            ax.set_yscale("log")  # warm-up and decay span decades
        else:
            ax.set_ylim(bottom=0)  # a constant rate reads as constant, not as noise around an offset
    if title == THROUGHPUT_PANEL:
        ax.set_ylim(bottom=0)
    return twin


def _draw_wait(ax, log: pd.DataFrame):
    """Data waiting in % of step time, on a second y axis (0-100) of the throughput panel."""
    wait = ax.twinx()
    wait.plot(log["epoch"], 100 * log[WAIT_COLUMN], color="tab:gray", linestyle=":", marker="s", markersize=3,
              linewidth=1.2, label="data wait (% of step time)")
    wait.set_ylim(0, 100)
    wait.set_ylabel("data wait (%)", fontsize="small")
    ax.set_ylabel("images/s", fontsize="small")
    return wait


def _legend(ax, twin) -> None:
    """One legend per panel, with the lines of its second axis (``twin``, or None) too."""
    handles, labels = [], []
    for axis in (ax,) if twin is None else (ax, twin):
        h, lab = axis.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    if handles:
        ax.legend(handles, labels, fontsize="x-small", loc="best")


def _mark_best(axes, epoch: int | None) -> None:
    if epoch is None:
        return
    for i, ax in enumerate(axes):  # one legend entry is enough
        ax.axvline(epoch, color="crimson", linestyle="--", linewidth=1,
                   label=f"selected (epoch {epoch})" if i == 0 else "_nolegend_")


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def plot_curves(log_path: str | os.PathLike, out_png: str | os.PathLike,
                config_path: str | os.PathLike | None = None, name: str = "") -> None:
    """Write the training curves of the run logged in ``log_path`` to ``out_png``.

    ``config_path`` defaults to the ``config.yaml`` beside the log; its ``best_epoch`` is marked.
    A label-free run (no validation Recall@1) says so in its accuracy panel, or gets no such
    panel when it logs no accuracy at all.
    """
    log = read_train_log(log_path)
    config_path = Path(log_path).with_name("config.yaml") if config_path is None else config_path
    panels = curve_panels(log.columns)
    fig = Figure(figsize=(4.2 * len(panels), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    # a shared epoch axis: a panel with nothing to draw (label-free runs) keeps the run's epochs
    axes = fig.subplots(1, len(panels), squeeze=False, sharex=True)[0]
    twins = [_draw(ax, log, title, cols) for ax, (title, cols) in zip(axes, panels.items())]
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if len(log) == 1:
        axes[0].set_xlim(log["epoch"].iloc[0] - 1, log["epoch"].iloc[0] + 1)
    _mark_best(axes, best_epoch(config_path))
    for ax, twin, (title, cols) in zip(axes, twins, panels.items()):
        if VAL_COLUMN in cols and log[VAL_COLUMN].isna().all():
            ax.text(0.5, 0.5, "no validation Recall@1\n(label-free: last epoch kept)", ha="center",
                    va="center", transform=ax.transAxes, fontsize="small", color="gray")
        _legend(ax, twin)
    epochs = len(log)
    timing = f", {_duration(log['seconds'].sum())}" if "seconds" in log else ""
    fig.suptitle(f"{name or Path(log_path).parent}: {epochs} epoch{'s' * (epochs != 1)}{timing}", fontsize="medium")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
