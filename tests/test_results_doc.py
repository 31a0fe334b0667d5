"""docs/results.md's tables (fgbench.report.results_doc): rendered from a summary.csv, and the
committed ones are what the committed default-run summary renders."""

import math

import pandas as pd
import pytest

from conftest import REPO
from fgbench.cli import main
from fgbench.errors import FgbenchError
from fgbench.report.results_doc import END, START, generated_part, render, update_doc

DOC = REPO / "docs/results.md"
SUMMARY = REPO / "docs/default-run/summary.csv"


def test_docs_tables_are_those_of_the_committed_summary():
    _, tables, _ = generated_part(DOC.read_text(encoding="utf-8"), str(DOC))
    assert tables == render(pd.read_csv(SUMMARY))
    assert main(["results-doc", "--summary", str(SUMMARY), "--doc", str(DOC), "--check"]) == 0


def row(setting, method, layer, protocol, metric, mean, ci95=math.nan, ci95_episodes=math.nan):
    return dict(dataset="fashion_mnist", setting=setting, method=method, layer=layer, protocol=protocol, metric=metric,
                n_seeds=1, mean=mean, ci95=ci95, ci95_episodes=ci95_episodes, seeds="0")


SUMMARY_ROWS = [
    row("coarse_to_fine", "ancor", "backbone", "fewshot_5way", "accuracy", 0.64, ci95_episodes=0.007),
    row("coarse_to_fine", "ancor", "backbone", "fewshot_all", "accuracy", 0.4936, ci95_episodes=0.0038),
    row("coarse_to_fine", "cascade_sup+ancor", "logits+backbone", "fewshot_5way", "accuracy", 0.71, ci95_episodes=0.0074),
    row("open_set", "stml", "head", "retrieval", "recall@1", 0.9194),
    row("open_set", "stml", "head", "retrieval", "map@r", 0.3999),
    row("coarse_to_fine", "ancor", "backbone", "retrieval", "map@r", 0.2),  # not an open-set row
    row("closed_set", "vmf", "probs", "closed_set", "accuracy", 0.8721),
    row("closed_set", "vmf", "probs", "closed_set", "ece", 0.2795),
]


def test_render_from_a_hand_made_summary():
    text = render(pd.DataFrame(SUMMARY_ROWS))
    # coarse-to-fine: the few-shot columns with a value (intra-class ones are left out), combinations last
    assert ("| method | layer | 5-way | all-way |\n|---|---|---:|---:|\n"
            "| ancor | backbone | 64.00 ± 0.70ᵉ | 49.36 ± 0.38ᵉ |\n"
            "| cascade_sup+ancor | logits+backbone | 71.00 ± 0.74ᵉ | — |\n") in text
    # open set only: MAP@R and R@1, no R-Precision or NMI column without values
    assert "| method | layer | MAP@R | R@1 |\n|---|---|---:|---:|\n| stml | head | 39.99 | 91.94 |\n" in text
    assert "20.00" not in text
    assert "in %: vmf 87.21 / 27.95." in text


def test_update_doc_rewrites_only_between_the_markers(tmp_path):
    summary = tmp_path / "summary.csv"
    pd.DataFrame(SUMMARY_ROWS).to_csv(summary, index=False)
    doc = tmp_path / "results.md"
    doc.write_text(f"# Title\n\nbefore\n\n{START}\nold table\n{END}\n\nafter\n")
    assert update_doc(summary, doc, check=True) and "old table" in doc.read_text()
    assert update_doc(summary, doc)
    assert doc.read_text() == f"# Title\n\nbefore\n\n{START}\n{render(pd.DataFrame(SUMMARY_ROWS))}{END}\n\nafter\n"
    assert not update_doc(summary, doc)
    # a stale doc fails the check, naming the command that regenerates it
    doc.write_text(f"{START}\nold\n{END}\n")
    assert main(["results-doc", "--summary", str(summary), "--doc", str(doc), "--check"]) == 2


def test_a_doc_without_markers_is_refused(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("no markers\n")
    with pytest.raises(FgbenchError, match="must hold the line"):
        update_doc(SUMMARY, doc)
