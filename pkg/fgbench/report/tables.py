"""The coarse-to-fine table in the format of the SCGM and ANCOR papers.

For every dataset with a ``coarse_to_fine`` setting: one row per method and layer (a
combination of two models is a row too, its layer ``"A+B"``), one column per few-shot
protocol: 5-way, all-way, intra-class with ANCOR's cap of 5 ways, intra-class with SCGM's all
subclasses, and the 5-shot columns when the benchmark ran them. Cells are few-shot accuracy in
percent, ``mean ± ci`` with 2 decimals (the across-seed 95% interval, or with one seed the
interval over episodes, marked ``ᵉ``, which is what the papers print); ``—`` where a method
lacks a protocol.
"""

from __future__ import annotations

import os

import pandas as pd

from fgbench.io import atomic_write_text
from fgbench.report.aggregate import EPISODE_MARK, format_cell

__all__ = ["C2F_COLUMNS", "SETTING", "coarse_to_fine_tables", "format_c2f_markdown", "write_c2f_tables"]

SETTING = "coarse_to_fine"
#: Protocol -> column header, in the papers' order.
C2F_COLUMNS = {
    "fewshot_5way": "5-way",
    "fewshot_all": "all-way",
    "fewshot_intra": "intra-class (ANCOR, ≤5 ways)",
    "fewshot_intra_all": "intra-class (SCGM, all subclasses)",
}
#: Shown only when a dataset has them.
FIVE_SHOT_COLUMNS = {
    "fewshot_5way_5shot": "5-way 5-shot",
    "fewshot_all_5shot": "all-way 5-shot",
}
MISSING = "—"


def _row_order(key: tuple) -> tuple:
    method, layer = key
    return ("+" in layer, method, layer)  # single models first, combinations after


def coarse_to_fine_tables(summary: pd.DataFrame) -> dict:
    """``{dataset: DataFrame}`` for every dataset with a coarse_to_fine setting, sorted by name.

    Columns ``method``, ``layer``, then the protocol headers of :data:`C2F_COLUMNS` (always)
    and :data:`FIVE_SHOT_COLUMNS` (when present); cells are formatted strings.
    """
    acc = summary[(summary["setting"] == SETTING) & (summary["metric"] == "accuracy")]
    tables = {}
    for dataset, sub in acc.groupby("dataset", sort=True):
        columns = dict(C2F_COLUMNS)
        columns.update({p: h for p, h in FIVE_SHOT_COLUMNS.items() if (sub["protocol"] == p).any()})
        sub = sub[sub["protocol"].isin(columns)]
        keys = sorted(set(zip(sub["method"], sub["layer"])), key=_row_order)
        cells = {key: dict.fromkeys(columns.values(), MISSING) for key in keys}
        for _, row in sub.iterrows():
            cells[(row["method"], row["layer"])][columns[row["protocol"]]] = format_cell(row)[0]
        tables[dataset] = pd.DataFrame(
            [{"method": m, "layer": layer, **cells[(m, layer)]} for m, layer in keys],
            columns=["method", "layer", *columns.values()])
    return tables


def format_c2f_markdown(tables: dict) -> str:
    """Markdown of :func:`coarse_to_fine_tables`' result: one section per dataset."""
    parts = ["# Coarse-to-fine few-shot accuracy", "",
             "Trained on coarse labels, evaluated on fine classes of the test split; accuracy in %, "
             "± the 95% confidence half-width across seeds (with one seed: over episodes, marked "
             f"{EPISODE_MARK}). Intra-class: ways drawn inside one coarse class, at most 5 (ANCOR) or "
             "all its subclasses (SCGM).", ""]
    if not tables:
        parts += ["No dataset in this benchmark has a coarse_to_fine setting.", ""]
    for dataset, table in tables.items():
        headers = list(table.columns)
        parts += [f"## {dataset}", "",
                  "| " + " | ".join(headers) + " |",
                  "|---|---|" + "---:|" * (len(headers) - 2)]
        parts += ["| " + " | ".join(map(str, row)) + " |" for row in table.itertuples(index=False)]
        parts.append("")
    return "\n".join(parts)


def write_c2f_tables(summary: pd.DataFrame, csv_path: str | os.PathLike, md_path: str | os.PathLike) -> None:
    """Atomically write the coarse-to-fine tables as Markdown and as one CSV (column
    ``dataset`` first; the 5-shot columns are empty for datasets without them)."""
    tables = coarse_to_fine_tables(summary)
    frames = [t.assign(dataset=d) for d, t in tables.items()]
    columns = ["dataset", "method", "layer", *C2F_COLUMNS.values(), *FIVE_SHOT_COLUMNS.values()]
    csv = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    csv = csv[[c for c in columns if c in csv.columns]]
    atomic_write_text(csv_path, csv.to_csv(index=False))
    atomic_write_text(md_path, format_c2f_markdown(tables))
