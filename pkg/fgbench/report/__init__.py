"""Reporting: aggregate per-run metrics into summary tables and plots."""

from fgbench.report.aggregate import format_markdown, load_metrics, summarise, write_summary
from fgbench.report.plots import main_metrics, plot_protocol

__all__ = ["format_markdown", "load_metrics", "main_metrics", "plot_protocol", "summarise", "write_summary"]
