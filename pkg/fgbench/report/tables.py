"""The papers' tables: coarse-to-fine few-shot (SCGM, ANCOR), retrieval (RevDML, LSD, STML) and
closed-set accuracy and calibration (vMF).

Each is one table per dataset with one row per method and layer (a combination of two models is
a row too, its layer ``"A+B"``, listed after the single models) and one column per
(protocol, metric). Cells are ``mean ± ci`` in percent with 2 decimals: the across-seed 95%
interval, or with one seed the interval over episodes (few-shot only), marked ``ᵉ``; ``—``
where a method lacks a column. Optional columns appear only when some row has them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fgbench.io import atomic_write_text
from fgbench.report.aggregate import EPISODE_MARK, format_cell

__all__ = ["TABLES", "coarse_to_fine_tables", "format_markdown_tables", "markdown_rows", "paper_tables", "write_paper_tables"]

MISSING = "—"


@dataclass(frozen=True)
class TableKind:
    """Which summary rows make a table and how its columns are named."""

    title: str
    note: str
    settings: tuple  # the settings it covers (rows of other settings are ignored)
    columns: dict  # (protocol, metric) -> header, always shown
    optional: dict = field(default_factory=dict)  # shown only when present
    setting_column: bool = False  # several settings per dataset: say which one


TABLES = {
    "coarse_to_fine": TableKind(
        title="Coarse-to-fine few-shot accuracy",
        note=("Trained on coarse labels, evaluated on fine classes of the test split; accuracy in %, ± the 95% "
              f"confidence half-width across seeds (with one seed: over episodes, marked {EPISODE_MARK}). "
              "Intra-class: ways drawn inside one coarse class, at most 5 (ANCOR) or all its subclasses (SCGM)."),
        settings=("coarse_to_fine",),
        columns={("fewshot_5way", "accuracy"): "5-way", ("fewshot_all", "accuracy"): "all-way",
                 ("fewshot_intra", "accuracy"): "intra-class (ANCOR, ≤5 ways)",
                 ("fewshot_intra_all", "accuracy"): "intra-class (SCGM, all subclasses)"},
        optional={("fewshot_5way_5shot", "accuracy"): "5-way 5-shot",
                  ("fewshot_all_5shot", "accuracy"): "all-way 5-shot"},
    ),
    "retrieval": TableKind(
        title="Retrieval",
        note=("Test images of every setting queried against each other (query excluded), in %, ± the 95% "
              "confidence half-width across seeds (none with one seed). MAP@R and R-Precision as in "
              "'A Metric Learning Reality Check'; NMI with k-means over the number of test classes."),
        settings=("open_set", "closed_set", "coarse_to_fine"),
        columns={("retrieval", "map@r"): "MAP@R", ("retrieval", "r_precision"): "R-Precision",
                 ("retrieval", "nmi"): "NMI"},
        optional={("retrieval", f"recall@{k}"): f"R@{k}" for k in (1, 2, 4, 8, 10, 100, 1000)}
        | {("retrieval", "f1"): "F1"},
        setting_column=True,
    ),
    "closed_set": TableKind(
        title="Closed-set accuracy and calibration",
        note=("Classifier accuracy on the test split and expected calibration error (15 equal-mass bins, L2, "
              "as the vMF paper), in %, ± the 95% confidence half-width across seeds."),
        settings=("closed_set",),
        columns={("closed_set", "accuracy"): "accuracy", ("closed_set", "ece"): "ECE"},
    ),
}


def _row_order(key: tuple) -> tuple:
    *_, method, layer = key
    return ("+" in layer, *key)  # single models first, combinations after


def paper_tables(summary: pd.DataFrame, kind: str) -> dict:
    """``{dataset: DataFrame}`` of table ``kind`` (see TABLES), datasets sorted by name; columns
    (``setting``,) ``method``, ``layer``, then the headers; cells are formatted strings."""
    spec = TABLES[kind]
    wanted = {**spec.columns, **spec.optional}
    rows = summary[summary["setting"].isin(spec.settings)]
    rows = rows[pd.MultiIndex.from_frame(rows[["protocol", "metric"]]).isin(list(wanted))]
    index = ["setting", "method", "layer"] if spec.setting_column else ["method", "layer"]
    tables = {}
    for dataset, sub in rows.groupby("dataset", sort=True):
        present = set(zip(sub["protocol"], sub["metric"]))
        headers = {**spec.columns, **{k: h for k, h in spec.optional.items() if k in present}}
        keys = sorted(set(zip(*(sub[c] for c in index))), key=_row_order)
        cells = {key: dict.fromkeys(headers.values(), MISSING) for key in keys}
        for _, row in sub.iterrows():
            cells[tuple(row[c] for c in index)][headers[(row["protocol"], row["metric"])]] = format_cell(row)[0]
        tables[dataset] = pd.DataFrame([{**dict(zip(index, key)), **cells[key]} for key in keys],
                                       columns=[*index, *headers.values()])
    return tables


def coarse_to_fine_tables(summary: pd.DataFrame) -> dict:
    return paper_tables(summary, "coarse_to_fine")


def format_markdown_tables(tables: dict, kind: str) -> str:
    """Markdown of :func:`paper_tables`' result: one section per dataset."""
    spec = TABLES[kind]
    parts = [f"# {spec.title}", "", spec.note, ""]
    if not tables:
        parts += [f"No run of this benchmark has a {' or '.join(spec.settings)} setting with these metrics.", ""]
    for dataset, table in tables.items():
        parts += [f"## {dataset}", "", *markdown_rows(table, labels=3 if spec.setting_column else 2), ""]
    return "\n".join(parts)


def markdown_rows(table: pd.DataFrame, labels: int) -> list:
    """The lines of one Markdown table: ``labels`` left-aligned label columns, then numbers."""
    headers = list(table.columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * labels + "---:|" * (len(headers) - labels)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]


def write_paper_tables(summary: pd.DataFrame, folder: str | os.PathLike) -> None:
    """Atomically write ``{kind}.md`` and ``{kind}.csv`` (column ``dataset`` first) for every kind."""
    for kind in TABLES:
        tables = paper_tables(summary, kind)
        frames = [t.assign(dataset=d) for d, t in tables.items()]
        csv = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["dataset"])
        csv = csv[["dataset", *[c for c in csv.columns if c != "dataset"]]]
        atomic_write_text(Path(folder) / f"{kind}.csv", csv.to_csv(index=False))
        atomic_write_text(Path(folder) / f"{kind}.md", format_markdown_tables(tables, kind))
