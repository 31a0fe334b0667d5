"""Reporting: aggregate per-run metrics into summary tables, the papers' tables, plots and
t-SNE maps. Submodules load on first use, so reading :mod:`fgbench.report.options` at DAG time
does not import pandas or matplotlib."""

import importlib

_EXPORTS = {
    "format_markdown": "aggregate", "load_metrics": "aggregate", "run_label": "aggregate",
    "summarise": "aggregate", "write_summary": "aggregate",
    "main_metrics": "plots", "plot_forest": "plots", "plot_differences": "plots", "plot_ranks": "plots",
    "comparisons": "comparisons", "load_runs": "comparisons", "ranks": "comparisons",
    "coarse_to_fine_tables": "tables", "paper_tables": "tables", "write_paper_tables": "tables",
    "plot_tsne": "tsne",
    "REPORT_DEFAULTS": "options", "validate_report": "options",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
