"""`snakemake --report` opened in headless Chromium: the tables render, the training curves are in.

Snakemake's HTML report is a JavaScript single-page app: the results are JSON in <script> tags
and an item's content is drawn only when it is clicked (CSV and Markdown items not even then:
they are download links), and no URL hash or query selects a view. What the app draws on
opening is the start page: the workflow description (workflow/report/workflow.rst, rendered by
docutils) beside the rule graph. That description builds the papers' tables from their CSV
files, so loading the page puts real <table> elements into the DOM: the DOM dump shows them, and
so does a screenshot. The summary CSV is a table in its caption, shown when the item is selected.
Only the first test needs Chromium; the others read the report's embedded JSON.
"""

import base64
import csv
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import FASHION_DEBIAN
from test_workflow import snakemake, tiny_config, write_config

WINDOW = (1400, 1000)
RUNS = [("coarse_to_fine", "supervised_coarse"), ("open_set", "lsd")]


def chromium(url: str, *flags: str, profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url``. React's render and the rule graph (vega) may finish after the
    load event; the virtual-time budget lets pending tasks and timers run (up to 10 virtual
    seconds) before the screenshot or DOM dump. A profile folder of its own keeps this Chromium
    apart from any other running."""
    cmd = [shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu",
           f"--user-data-dir={profile}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
           "--virtual-time-budget=10000", *flags, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


class TableRows(HTMLParser):
    """The rows (lists of cell texts) of every <table> in a page, and the page's visible text
    (scripts and styles left out: the report's data also sits in <script> tags as JSON)."""

    def __init__(self):
        super().__init__()
        self.rows, self.text, self._skip, self._cell = [], [], 0, None

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1
        elif tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._skip:
            return
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def report_json(html: str, name: str):
    """The JSON the report assigns to ``var <name>`` in its ``<script id="<name>">`` (the bundled
    libraries declare variables of the same names)."""
    script = html.index(f'<script id="{name}">')
    start = html.index(f"var {name} = ", script) + len(f"var {name} = ")
    return json.JSONDecoder().raw_decode(html, start)[0]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """A tiny benchmark (two methods in two settings, one epoch, two protocols) and its report,
    built once for the module's tests (conftest's real_fashion is per test: its check is here)."""
    if not all((FASHION_DEBIAN / f).exists() for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")):
        pytest.skip("Fashion-MNIST not on disk: `make setup` installs Debian's dataset-fashion-mnist")
    workdir = tmp_path_factory.mktemp("html_report")
    cfg = tiny_config(FASHION_DEBIAN, combinations=[], report={"tsne": False})
    cfg["benchmark"] = {"fashion_mnist": {setting: [method] for setting, method in RUNS}}
    cfg["protocols"] = {name: cfg["protocols"][name] for name in ("fewshot_5way", "retrieval")}
    write_config(workdir, cfg)
    snakemake(workdir)
    snakemake(workdir, "--report", "report.html")
    return workdir


@pytest.mark.workflow
def test_start_page_renders_the_papers_tables(report):
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    url = (report / "report.html").as_uri()
    shot = report / "start.png"
    chromium(url, f"--screenshot={shot}", profile=report / "chromium")
    with Image.open(shot) as image:
        assert image.size == WINDOW
        gray = image.convert("L")
        # a drawn page: dark text on a light background, anti-aliased (not one blank colour)
        assert gray.getextrema()[1] - gray.getextrema()[0] > 150
        assert len(gray.getcolors(256)) > 50

    page = TableRows()
    page.feed(chromium(url, "--dump-dom", profile=report / "chromium").stdout)
    summary = pd.read_csv(report / "results/tables/summary.csv")
    row = summary.query("setting == 'coarse_to_fine' and method == 'supervised_coarse' and layer == 'backbone' "
                        "and protocol == 'fewshot_5way' and metric == 'accuracy'").iloc[0]
    # one seed: the interval is over episodes, marked ᵉ; percent with two decimals
    assert row["n_seeds"] == 1
    cell = f"{100 * row['mean']:.2f} ± {100 * row['ci95_episodes']:.2f}ᵉ"
    assert ["fashion_mnist", "supervised_coarse", "backbone", cell] in [r[:4] for r in page.rows]
    # the retrieval table: one row per setting, method and layer, R@1 in percent
    r1 = summary.query("method == 'lsd' and protocol == 'retrieval' and metric == 'recall@1'")["mean"].item()
    header = next(r for r in page.rows if r[:4] == ["dataset", "setting", "method", "layer"])
    lsd = next(r for r in page.rows if r[:4] == ["fashion_mnist", "open_set", "lsd", "head"])
    assert lsd[header.index("R@1")] == f"{100 * r1:.2f}"
    text = " ".join("".join(page.text).split())
    assert "Coarse-to-fine few-shot accuracy (%)" in text and "Training curves" in text  # menu entry


@pytest.mark.workflow
def test_report_holds_every_runs_training_curves(report):
    html = (report / "report.html").read_text(encoding="utf-8")
    results, categories = report_json(html, "results"), report_json(html, "categories")
    curves = [path for sub in categories["Training curves"].values() for path in sub]
    expected = {f"results/plots/curves/fashion_mnist/{s}/{m}/seed0.png": (s, m) for s, m in RUNS}
    assert sorted(curves) == sorted(expected)
    for path, (setting, method) in expected.items():
        entry = results[path]
        assert entry["labels"] == {"dataset": "fashion_mnist", "setting": setting, "method": method, "seed": "0"}
        assert entry["mime_type"] == "image/png"
        assert f"Training curves of {method} on fashion_mnist" in entry["caption"]
        # the embedded image is the plot the rule wrote
        assert base64.b64decode(entry["data_uri"].split("base64,", 1)[1]) == (report / path).read_bytes()


@pytest.mark.workflow
def test_summary_csv_is_a_table_in_its_description(report):
    """A CSV item opens no view in the report (its eye button downloads the file), so the
    summary's caption, shown when the item is selected, holds the CSV as a table."""
    html = (report / "report.html").read_text(encoding="utf-8")
    caption = report_json(html, "results")["results/tables/summary.csv"]["caption"]
    table = TableRows()
    table.feed(caption)
    with open(report / "results/tables/summary.csv", newline="", encoding="utf-8") as fh:
        assert table.rows == list(csv.reader(fh))  # every row, every cell as written


@pytest.mark.workflow
def test_recipe_card_is_a_table_in_its_description(report):
    """The recipe card (rule recipes) is in the report, its CSV drawn in its caption; the
    learning rate there is the config's."""
    html = (report / "report.html").read_text(encoding="utf-8")
    results, categories = report_json(html, "results"), report_json(html, "categories")
    assert [path for sub in categories["Recipes"].values() for path in sub] == ["results/tables/recipes.csv"]
    table = TableRows()
    table.feed(results["results/tables/recipes.csv"]["caption"])
    assert table.rows[0] == ["key", "supervised_coarse", "lsd"]
    assert ["train.lr", "0.001", "0.001"] in table.rows and ["train.epochs", "1", "1"] in table.rows
