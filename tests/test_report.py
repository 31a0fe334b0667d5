"""Tests for fgbench.report (aggregation, Markdown, plots, the coarse-to-fine table) and fgbench.io."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fgbench.io import atomic_path, atomic_write_bytes, atomic_write_text
from fgbench.report import load_metrics, summarise, write_summary
from fgbench.report.tables import coarse_to_fine_tables, format_markdown_tables, paper_tables, write_paper_tables

T975_2DOF = 4.302653  # scipy.stats.t.ppf(0.975, 2)

# value per (method, seed) for fewshot_5way/accuracy; retrieval is shifted by -0.1
ACC = {"proto": {0: 0.5, 1: 0.6, 2: 0.7}, "arcface": {0: 0.8, 1: 0.8, 2: 0.9}}


def _row(method, seed, protocol, metric, value, ci95, n, dataset="cub", setting="coarse_to_fine", layer="head"):
    return dict(dataset=dataset, setting=setting, method=method, layer=layer, seed=seed, protocol=protocol,
                metric=metric, value=value, ci95=ci95, n=n, config_hash="abc123", fgbench_version="0.1.0")


def _write(root, rows):
    r = rows[0]
    path = root / r["dataset"] / r["setting"] / r["method"] / f"seed{r['seed']}" / f"{r['protocol']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def metric_files(tmp_path):
    root = tmp_path / "results" / "metrics"
    paths = []
    for method, by_seed in ACC.items():
        for seed, acc in by_seed.items():
            paths.append(_write(root, [_row(method, seed, "fewshot_5way", "accuracy", acc, 0.01 * (seed + 1), 600)]))
            paths.append(_write(root, [
                _row(method, seed, "retrieval", "recall@1", acc - 0.1, None, 5000),
                _row(method, seed, "retrieval", "map@r", acc - 0.3, None, 5000)]))
    # a single-seed run in another setting
    paths.append(_write(root, [_row("proto", 0, "fewshot_5way", "accuracy", 0.42, 0.0123, 600, setting="open_set")]))
    paths.append(_write(root, [_row("proto", 0, "retrieval", "recall@1", 0.33, None, 4000, setting="open_set")]))
    # ... and one where arcface lacks the retrieval protocol
    paths.append(_write(root, [_row("arcface", 0, "fewshot_5way", "accuracy", 0.5, 0.02, 600, setting="open_set")]))
    return paths


@pytest.fixture
def two_layer_files(metric_files, tmp_path):
    """metric_files plus proto's backbone layer (coarse_to_fine fewshot_5way: 0.3, 0.4, 0.5)."""
    root = tmp_path / "results" / "metrics_backbone"
    extra = [_write(root, [_row("proto", seed, "fewshot_5way", "accuracy", 0.3 + 0.1 * seed, 0.01, 600,
                                layer="backbone")]) for seed in (0, 1, 2)]
    return metric_files + extra


def _get(summary, **keys):
    mask = np.logical_and.reduce([summary[k] == v for k, v in keys.items()])
    (row,) = summary[mask].to_dict("records")
    return row


def test_load_metrics(metric_files):
    df = load_metrics(metric_files)
    assert len(df) == 2 * 3 * 3 + 3
    assert df["ci95"].isna().sum() == 2 * 3 * 2 + 1


def test_summary_mean_and_ci(metric_files):
    s = summarise(load_metrics(metric_files))
    assert len(s) == 2 * 3 + 3
    row = _get(s, setting="coarse_to_fine", method="proto", protocol="fewshot_5way", metric="accuracy")
    assert row["n_seeds"] == 3 and row["seeds"] == "0,1,2"
    assert row["mean"] == pytest.approx(0.6)
    assert row["ci95"] == pytest.approx(T975_2DOF * 0.1 / math.sqrt(3), rel=1e-6)
    assert row["ci95_episodes"] == pytest.approx(0.02)  # mean of 0.01, 0.02, 0.03
    ret = _get(s, setting="coarse_to_fine", method="proto", protocol="retrieval", metric="recall@1")
    assert ret["mean"] == pytest.approx(0.5) and math.isnan(ret["ci95_episodes"])


def test_summary_single_seed(metric_files):
    s = summarise(load_metrics(metric_files))
    row = _get(s, setting="open_set", method="proto", protocol="fewshot_5way", metric="accuracy")
    assert row["n_seeds"] == 1 and row["seeds"] == "0"
    assert row["mean"] == pytest.approx(0.42)
    assert math.isnan(row["ci95"])
    assert row["ci95_episodes"] == pytest.approx(0.0123)


def test_write_summary(metric_files, tmp_path):
    s = summarise(load_metrics(metric_files))
    out = tmp_path / "report"
    write_summary(s, out / "summary.csv", out / "summary.md")
    csv = pd.read_csv(out / "summary.csv")
    assert len(csv) == len(s) and csv["mean"].max() <= 1.0
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "## cub / coarse_to_fine" in md and "## cub / open_set" in md
    assert "| method | fewshot_5way/accuracy | retrieval/map@r | retrieval/recall@1 |" in md
    assert f"| proto (head) | 60.00 ± {100 * T975_2DOF * 0.1 / math.sqrt(3):.2f} |" in md
    assert "42.00 ± 1.23ᵉ" in md and "± over episodes (1 seed)" in md
    assert "| 33.00 |" in md  # single seed, no episode CI
    assert "| arcface (head) | 50.00 ± 2.00ᵉ | – |" in md  # arcface has no open_set retrieval
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.md"]


def test_layers_are_separate_rows(two_layer_files, tmp_path):
    s = summarise(load_metrics(two_layer_files))
    backbone = _get(s, setting="coarse_to_fine", method="proto", layer="backbone", protocol="fewshot_5way")
    head = _get(s, setting="coarse_to_fine", method="proto", layer="head", protocol="fewshot_5way")
    assert backbone["mean"] == pytest.approx(0.4) and head["mean"] == pytest.approx(0.6)
    write_summary(s, tmp_path / "s.csv", tmp_path / "s.md")
    md = (tmp_path / "s.md").read_text(encoding="utf-8")
    section = md[md.index("## cub / coarse_to_fine"):md.index("## cub / open_set")]
    labels = [line.split(" | ")[0][2:] for line in section.splitlines() if line.startswith("| ") and "method" not in line]
    assert labels == ["arcface (head)", "proto (backbone)", "proto (head)"]
    assert "| proto (backbone) | 40.00 ± " in md and "| – | – |" in md  # backbone: no retrieval rows
    assert pd.read_csv(tmp_path / "s.csv").query("method == 'proto' and setting == 'coarse_to_fine'")["layer"].nunique() == 2


def test_duplicate_rows_differ_by_layer_only_are_fine(metric_files, tmp_path):
    path = metric_files[0]
    rows = json.loads(path.read_text())
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{**rows[0], "layer": "backbone"}]))
    assert len(load_metrics([path, other])) == 2


def _summary_row(dataset, setting, method, layer, protocol, mean, ci95, ci95_episodes, n_seeds=3, metric="accuracy"):
    return dict(dataset=dataset, setting=setting, method=method, layer=layer, protocol=protocol, metric=metric,
                n_seeds=n_seeds, mean=mean, ci95=ci95, ci95_episodes=ci95_episodes, seeds="0")


@pytest.fixture
def c2f_summary():
    nan = float("nan")
    rows = [
        _summary_row("living17", "coarse_to_fine", "ancor", "backbone", "fewshot_5way", 0.89234, 0.0055, 0.004),
        _summary_row("living17", "coarse_to_fine", "ancor", "backbone", "fewshot_all", 0.45141, 0.0012, 0.001),
        _summary_row("living17", "coarse_to_fine", "ancor", "backbone", "fewshot_intra_all", 0.7, 0.01, 0.02),
        _summary_row("living17", "coarse_to_fine", "ancor", "head", "fewshot_5way", 0.8, nan, 0.0123, n_seeds=1),
        _summary_row("living17", "coarse_to_fine", "ens", "backbone+head", "fewshot_5way", 0.9, 0.001, 0.002),
        _summary_row("living17", "coarse_to_fine", "scgm_g", "head", "fewshot_intra", 0.6, 0.02, 0.01),
        _summary_row("living17", "coarse_to_fine", "scgm_g", "head", "fewshot_5way_5shot", 0.95, 0.003, 0.001),
        _summary_row("living17", "coarse_to_fine", "scgm_g", "head", "retrieval", 0.5, nan, nan, metric="recall@1"),
        _summary_row("living17", "open_set", "triplet", "head", "fewshot_5way", 0.5, 0.01, 0.01),  # not c2f
        _summary_row("cifar100", "coarse_to_fine", "ancor", "backbone", "fewshot_all", 0.2984, nan, nan, n_seeds=1),
        _summary_row("cub", "open_set", "triplet", "head", "fewshot_5way", 0.5, 0.01, 0.01),  # no c2f setting
    ]
    return pd.DataFrame(rows)


def test_coarse_to_fine_table_cells(c2f_summary):
    tables = coarse_to_fine_tables(c2f_summary)
    assert list(tables) == ["cifar100", "living17"]  # cub has no coarse_to_fine setting
    liv = tables["living17"]
    assert list(liv.columns) == ["method", "layer", "5-way", "all-way", "intra-class (ANCOR, ≤5 ways)",
                                 "intra-class (SCGM, all subclasses)", "5-way 5-shot"]  # no all-way 5-shot run
    assert list(zip(liv["method"], liv["layer"])) == [
        ("ancor", "backbone"), ("ancor", "head"), ("scgm_g", "head"), ("ens", "backbone+head")]
    cell = liv.set_index(["method", "layer"])
    assert cell.loc[("ancor", "backbone"), "5-way"] == "89.23 ± 0.55"
    assert cell.loc[("ancor", "backbone"), "all-way"] == "45.14 ± 0.12"
    assert cell.loc[("ancor", "backbone"), "intra-class (ANCOR, ≤5 ways)"] == "—"
    assert cell.loc[("ancor", "backbone"), "intra-class (SCGM, all subclasses)"] == "70.00 ± 1.00"
    assert cell.loc[("ancor", "head"), "5-way"] == "80.00 ± 1.23ᵉ"  # one seed: the episode interval
    assert cell.loc[("scgm_g", "head"), "intra-class (ANCOR, ≤5 ways)"] == "60.00 ± 2.00"
    assert cell.loc[("scgm_g", "head"), "5-way 5-shot"] == "95.00 ± 0.30"
    assert cell.loc[("ens", "backbone+head"), "5-way 5-shot"] == "—"
    cifar = tables["cifar100"]
    assert cifar.to_dict("records") == [{"method": "ancor", "layer": "backbone", "5-way": "—", "all-way": "29.84",
                                          "intra-class (ANCOR, ≤5 ways)": "—", "intra-class (SCGM, all subclasses)": "—"}]


def test_paper_table_files(c2f_summary, tmp_path):
    write_paper_tables(c2f_summary, tmp_path)
    md = (tmp_path / "coarse_to_fine.md").read_text(encoding="utf-8")
    assert md.index("## cifar100") < md.index("## living17") and "## cub" not in md
    assert "| method | layer | 5-way | all-way | intra-class (ANCOR, ≤5 ways) | intra-class (SCGM, all subclasses) | 5-way 5-shot |" in md
    assert "| ancor | backbone | 89.23 ± 0.55 | 45.14 ± 0.12 | — | 70.00 ± 1.00 | — |" in md
    csv = pd.read_csv(tmp_path / "coarse_to_fine.csv", keep_default_na=False)
    assert list(csv.columns[:3]) == ["dataset", "method", "layer"] and len(csv) == 5
    assert csv.query("dataset == 'living17' and method == 'ens'")["5-way"].item() == "90.00 ± 0.10"
    # the retrieval table has the one retrieval row, with its setting; no closed-set run: said so
    retrieval = pd.read_csv(tmp_path / "retrieval.csv", keep_default_na=False, dtype=str)
    assert retrieval.to_dict("records") == [{"dataset": "living17", "setting": "coarse_to_fine", "method": "scgm_g",
                                             "layer": "head", "MAP@R": "—", "R-Precision": "—", "NMI": "—", "R@1": "50.00"}]
    assert "No run of this benchmark has a closed_set setting" in (tmp_path / "closed_set.md").read_text(encoding="utf-8")
    assert format_markdown_tables({}, "coarse_to_fine").startswith("# Coarse-to-fine")


def test_closed_set_table_cells():
    rows = [_summary_row("mnist", "closed_set", m, "probs", "closed_set", v, 0.002, float("nan"), metric=metric)
            for m, metric, v in (("vmf", "accuracy", 0.9912), ("vmf", "ece", 0.0031), ("softmax", "accuracy", 0.99))]
    table = paper_tables(pd.DataFrame(rows), "closed_set")["mnist"]
    assert table.to_dict("records") == [
        {"method": "softmax", "layer": "probs", "accuracy": "99.00 ± 0.20", "ECE": "—"},
        {"method": "vmf", "layer": "probs", "accuracy": "99.12 ± 0.20", "ECE": "0.31 ± 0.20"}]


def test_cli_tables_writes_the_papers_tables(metric_files, tmp_path):
    from fgbench.cli import main

    out = tmp_path / "tables"
    argv = ["aggregate", "--csv", str(out / "summary.csv"), "--markdown", str(out / "summary.md"), *map(str, metric_files)]
    assert main(argv) == 0
    assert main(["tables", "--summary", str(out / "summary.csv"), "--out-dir", str(out)]) == 0
    md = (out / "coarse_to_fine.md").read_text(encoding="utf-8")
    assert "## cub" in md and f"| proto | head | 60.00 ± {100 * T975_2DOF * 0.1 / math.sqrt(3):.2f} | — |" in md
    assert {p.name for p in out.iterdir()} >= {f"{k}.{e}" for k in ("coarse_to_fine", "retrieval", "closed_set") for e in ("md", "csv")}


@pytest.mark.parametrize("content", [
    "not json",
    json.dumps({"value": 0.5}),
    json.dumps([{"dataset": "cub", "value": 0.5}]),
    json.dumps([_row("m", 0, "retrieval", "recall@1", "high", None, 10)]),
])
def test_malformed_file(metric_files, tmp_path, content):
    bad = tmp_path / "bad_metrics.json"
    bad.write_text(content)
    with pytest.raises(ValueError, match="bad_metrics.json"):
        load_metrics([*metric_files, bad])


def test_duplicate_rows(metric_files):
    with pytest.raises(ValueError, match="duplicate"):
        load_metrics([metric_files[0], metric_files[0]])


def test_atomic_write(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer failed")
    assert target.read_text() == "second"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "sub" / "new.txt") as tmp:
            raise RuntimeError("writer failed")
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["out.txt"]


# --- Training curves (fgbench.report.curves, `fgbench curves`) ---------------------------------

SCGM_LOG = """epoch,lr,loss,cls_loss,subclass_loss,train_accuracy,val_recall@1,seconds
0,0.001,9.5,0.62,2.75,0.84,0.9505,15.7
1,0.001,8.6,0.33,2.71,0.90,0.9620,12.6
2,0.001,8.1,0.27,2.70,0.92,0.9533,12.5
"""
STML_LOG = """epoch,lr,loss,rc_loss,kl_loss,val_recall@1,seconds
0,0.001,0.48,0.48,2e-06,,17.9
1,0.0005,0.50,0.50,4e-07,,17.4
"""


def _run_dir(tmp_path, log_text, best=None):
    run = tmp_path / "models" / "seed0"
    run.mkdir(parents=True)
    (run / "train_log.csv").write_text(log_text)
    if best is not None:
        (run / "config.yaml").write_text(f"method: scgm_a\nseed: 0\nbest_epoch: {best}\n")
    return run


def test_curve_panels_group_the_logged_columns():
    from fgbench.report.curves import ACCURACY_PANEL, curve_panels

    scgm = SCGM_LOG.splitlines()[0].split(",")
    assert curve_panels(scgm) == {"loss": ["loss", "cls_loss", "subclass_loss"],
                                  ACCURACY_PANEL: ["train_accuracy", "val_recall@1"], "learning rate": ["lr"]}
    lsd = ["epoch", "lr", "loss", "base_loss", "kd_loss", "kd_weight", "val_recall@1", "seconds"]
    assert curve_panels(lsd)["other terms"] == ["kd_weight"]


def _plotted(monkeypatch):
    """Record what plot_curves draws: each line's label and y values, and the epoch markers."""
    from matplotlib.axes import Axes

    lines, marks = {}, []
    plot, axvline = Axes.plot, Axes.axvline
    monkeypatch.setattr(Axes, "plot", lambda self, x, y, **k: (lines.__setitem__(k["label"], list(y)), plot(self, x, y, **k))[1])
    monkeypatch.setattr(Axes, "axvline", lambda self, x, **k: (marks.append(x), axvline(self, x, **k))[1])
    return lines, marks


def test_curves_plot_every_term_and_mark_the_selected_epoch(tmp_path, monkeypatch):
    from fgbench.report.curves import plot_curves

    run = _run_dir(tmp_path, SCGM_LOG, best=1)
    lines, marks = _plotted(monkeypatch)
    out = tmp_path / "plots" / "curves.png"
    plot_curves(run / "train_log.csv", out, name="scgm_a")
    assert set(lines) == {"loss", "cls_loss", "subclass_loss", "train_accuracy", "val_recall@1", "lr"}
    assert lines["val_recall@1"] == pytest.approx([95.05, 96.20, 95.33])  # in %
    assert lines["loss"] == pytest.approx([9.5, 8.6, 8.1])
    assert marks == [1, 1, 1]  # best_epoch of the config.yaml beside the log, in every panel
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 3 * im.height / 2
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]  # no temporary file left


def test_curves_of_a_label_free_run(tmp_path, monkeypatch):
    from fgbench.report.curves import plot_curves

    run = _run_dir(tmp_path, STML_LOG)  # no config.yaml: nothing to mark
    lines, marks = _plotted(monkeypatch)
    plot_curves(run / "train_log.csv", tmp_path / "stml.png")
    assert set(lines) == {"loss", "rc_loss", "kl_loss", "lr"}  # the empty val_recall@1 is not drawn
    assert marks == []
    assert (tmp_path / "stml.png").stat().st_size > 5000


def test_curves_draw_the_throughput_with_data_waiting_in_percent(tmp_path, monkeypatch):
    from fgbench.report.curves import THROUGHPUT_PANEL, curve_panels, plot_curves

    log = SCGM_LOG.replace("seconds\n", "seconds,images_per_s,data_wait\n").replace(",15.7\n", ",15.7,410.5,0.31\n")
    log = log.replace(",12.6\n", ",12.6,520.0,0.12\n").replace(",12.5\n", ",12.5,530.2,0.1\n")
    assert curve_panels(log.splitlines()[0].split(","))[THROUGHPUT_PANEL] == ["images_per_s", "data_wait"]
    run = _run_dir(tmp_path, log, best=1)
    lines, _ = _plotted(monkeypatch)
    plot_curves(run / "train_log.csv", tmp_path / "curves.png")
    assert lines["images_per_s"] == pytest.approx([410.5, 520.0, 530.2])
    assert lines["data wait (% of step time)"] == pytest.approx([31, 12, 10])


@pytest.mark.parametrize("content, message", [
    (None, "not found"),
    ("", "is empty"),
    ("epoch,lr,loss,seconds\n", "has a header but no epoch"),
    ("epoch,lr,seconds\n0,0.1,3\n", "lacks column(s) loss"),
    ("epoch,lr,loss\n0,0.1,high\n", "not a number"),
])
def test_curves_cli_rejects_a_bad_log(tmp_path, capsys, content, message):
    from fgbench.cli import main

    log = tmp_path / "run" / "train_log.csv"
    if content is not None:
        log.parent.mkdir()
        log.write_text(content)
    out = tmp_path / "curves" / "seed0.png"
    assert main(["curves", "--log", str(log), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fgbench: error: training log {log} ") and message in err and "\n" not in err
    assert not out.exists()
