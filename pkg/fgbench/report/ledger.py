"""The reproduction ledger: published numbers beside what fgbench's paper configs produce.

``workflow/ledger.yaml`` is data, one entry per published number (see the header of that file
for its keys). :func:`load_ledger` reads and checks it; :func:`ledger_table` joins it with the
summaries of the experiments' runs (``results/<experiment>/tables/summary.csv``): fgbench's value
is the summary row with the entry's dataset, setting, method, layer, protocol and metric (the
mean over seeds), the gap is fgbench minus published, and an entry without a run says so.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd
import yaml

from fgbench.errors import ConfigError
from fgbench.io import atomic_write_text

__all__ = ["FIELDS", "COLUMNS", "load_ledger", "expected_target", "targets", "ledger_table",
           "format_ledger_markdown", "write_ledger"]

#: The keys of a ledger entry: required ones, then optional ones (None when absent).
REQUIRED = ("paper", "reference", "dataset", "setting", "method", "layer", "protocol", "metric",
            "published", "experiment", "target")
OPTIONAL = ("interval", "interval_kind", "backbone", "epochs", "note")
FIELDS = REQUIRED + OPTIONAL
#: The ledger table's columns; values in % as the papers print them.
COLUMNS = ["paper", "reference", "dataset", "backbone", "epochs", "setting", "method", "layer", "protocol",
           "metric", "published", "published_ci", "interval_kind", "fgbench", "fgbench_ci", "fgbench_ci_kind",
           "n_seeds", "gap", "status", "experiment", "target", "note"]
#: What ledger.csv holds (the report draws it on its start page: the provenance columns stay in the YAML).
CSV_COLUMNS = ["paper", "dataset", "backbone", "epochs", "method", "layer", "protocol", "metric", "published",
               "published_ci", "fgbench", "fgbench_ci", "n_seeds", "gap", "status", "experiment"]
#: status: a run's value exists / the experiment or its row is not in the results / no config has the setting.
RUN, NOT_RUN, NO_CONFIG = "run", "not run", "no config"


def expected_target(row: dict) -> str:
    """The metrics file (``{seed}`` left in) that holds ``row``'s number: the paths of workflow/paper.smk."""
    return (f"results/{row['experiment']}/metrics/{row['dataset']}/{row['setting']}/{row['method']}/"
            f"seed{{seed}}/{row['protocol']}.json")


def targets(row: dict, seeds) -> list[str]:
    """``row``'s metrics files, one per seed (none for an entry without experiment)."""
    return [] if row["target"] is None else [row["target"].format(seed=s) for s in seeds]


def _check_row(row, i: int, where: str) -> dict:
    if not isinstance(row, dict):
        raise ConfigError(f"{where}: rows[{i}] must be a mapping of {', '.join(REQUIRED)}; got {row!r}")
    unknown = sorted(set(row) - set(FIELDS))
    missing = [k for k in REQUIRED if k not in row]
    if unknown or missing:
        problem = f"unknown key(s) {unknown}" if unknown else f"lacks key(s) {missing}"
        raise ConfigError(f"{where}: rows[{i}] {problem}; keys: {', '.join(FIELDS)}")
    row = {**dict.fromkeys(OPTIONAL), **row}
    for key in ("published", "interval"):
        value = row[key]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{where}: rows[{i}].{key} must be a number (in %), got {value!r}")
    if row["published"] is None:
        raise ConfigError(f"{where}: rows[{i}].published must be a number (in %), got None")
    if (row["experiment"] is None) != (row["target"] is None):
        raise ConfigError(f"{where}: rows[{i}] sets only one of 'experiment' and 'target'; "
                          "set both, or both null (no config has the published setting)")
    if row["target"] is not None and row["target"] != expected_target(row):
        raise ConfigError(f"{where}: rows[{i}].target is {row['target']!r}, but its experiment, dataset, setting, "
                          f"method and protocol make {expected_target(row)!r}")
    return row


def load_ledger(path: str | os.PathLike) -> list[dict]:
    """The checked entries of the ledger file ``path`` (optional keys filled with None)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read the ledger {path}: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise ConfigError(f"{path}: expected a mapping with a list 'rows' of ledger entries")
    return [_check_row(row, i, str(path)) for i, row in enumerate(data["rows"])]


def _value(row: dict, summaries: dict) -> dict:
    """fgbench's value of one entry, in % (empty when there is none)."""
    summary = summaries.get(row["experiment"])
    if summary is None:
        return {}
    keys = ("dataset", "setting", "method", "layer", "protocol", "metric")
    match = summary[(summary[list(keys)] == pd.Series({k: row[k] for k in keys})).all(axis=1)]
    if match.empty:
        return {}
    found = match.iloc[0]
    # Across seeds when there are several, else over episodes (as the summary and the papers' tables).
    ci, kind = (found["ci95"], "seeds") if not math.isnan(found["ci95"]) else (found["ci95_episodes"], "episodes")
    mean = round(100 * found["mean"], 2)
    return {"fgbench": mean, "fgbench_ci": None if math.isnan(ci) else round(100 * ci, 2),
            "fgbench_ci_kind": None if math.isnan(ci) else kind, "n_seeds": int(found["n_seeds"]),
            "gap": round(mean - row["published"], 2)}


def ledger_table(rows: list[dict], summaries: dict) -> pd.DataFrame:
    """One line per ledger entry (:data:`COLUMNS`), joined with ``summaries``
    (``{experiment: summary DataFrame}``; an experiment without results is left out)."""
    lines = []
    for row in rows:
        value = _value(row, summaries) if row["experiment"] is not None else {}
        status = NO_CONFIG if row["experiment"] is None else RUN if value else NOT_RUN
        lines.append({**row, "published_ci": row["interval"], **value, "status": status})
    table = pd.DataFrame(lines, columns=COLUMNS)
    return table.astype({"n_seeds": "Int64", "epochs": "Int64"})  # whole numbers, blank when absent


def _pm(value, ci) -> str:
    return "" if pd.isna(value) else f"{value:.2f}" + ("" if pd.isna(ci) else f" ± {ci:.2f}")


def format_ledger_markdown(table: pd.DataFrame) -> str:
    """The ledger as Markdown: published, fgbench, gap per entry; 'not run' where no result exists."""
    parts = ["# Reproduction ledger", "",
             "Published numbers (in %, ± as the source gives it) beside fgbench's paper configs: fgbench is the "
             "mean over seeds (± the 95% interval across seeds, or over episodes with one seed); gap = fgbench - "
             "published. Entries come from workflow/ledger.yaml.", "",
             "| paper | dataset | epochs | method (layer) | protocol | metric | published | fgbench | gap | experiment |",
             "|---|---|---:|---|---|---|---:|---:|---:|---|"]
    for r in table.itertuples(index=False):
        fgbench = _pm(r.fgbench, r.fgbench_ci) if r.status == RUN else r.status
        gap = f"{r.gap:+.2f}" if r.status == RUN else "—"
        epochs = "" if pd.isna(r.epochs) else int(r.epochs)
        experiment = f"none: {r.note}" if pd.isna(r.experiment) else r.experiment
        parts.append(f"| {r.paper} | {r.dataset} | {epochs} | {r.method} ({r.layer}) | {r.protocol} | {r.metric} | "
                     f"{_pm(r.published, r.published_ci)} | {fgbench} | {gap} | {experiment} |")
    return "\n".join(parts) + "\n"


def read_summaries(paths: dict) -> dict:
    """``{experiment: summary DataFrame}`` of ``{experiment: summary.csv path}``."""
    return {name: pd.read_csv(path) for name, path in paths.items()}


def write_ledger(table: pd.DataFrame, csv_path, md_path) -> None:
    """Atomically write the ledger table as CSV (:data:`CSV_COLUMNS`) and Markdown."""
    atomic_write_text(csv_path, table[CSV_COLUMNS].to_csv(index=False))
    atomic_write_text(md_path, format_ledger_markdown(table))
