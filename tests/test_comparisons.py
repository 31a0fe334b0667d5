"""Tests for the comparison tables (fgbench.report.comparisons), their LaTeX (fgbench.report.tables)
and plots (fgbench.report.plots), from metrics files with per-unit files beside them."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from fgbench.cli import main
from fgbench.evaluate.units import write_units
from fgbench.report.comparisons import (_baseline_cell, comparisons, format_comparisons, headline, load_runs, ranks,
                                        read_comparisons, write_comparisons)
from fgbench.report.plots import plot_differences, plot_forest, plot_ranks
from fgbench.report.tables import latex_table

BASELINES = {"open_set": "base (head)"}
N_UNITS = 200


def write_run(root, method, seed, units, draws="episodes-v1", protocol="fewshot_5way", dataset="cub",
              setting="open_set", layer="head", extra_rows=()):
    """A metrics file (accuracy = the units' mean) and its per-unit file; returns the JSON path."""
    path = root / dataset / setting / method / f"seed{seed}" / f"{protocol}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    row = dict(dataset=dataset, setting=setting, method=method, layer=layer, seed=seed, protocol=protocol,
               metric="accuracy", value=float(np.mean(units)), ci95=0.01, n=len(units), config_hash="x",
               fgbench_version="0")
    path.write_text(json.dumps([row, *({**row, **extra} for extra in extra_rows)]))
    write_units(path.with_suffix(".npz"), draws, {layer: {"accuracy": np.asarray(units)}})
    return path


@pytest.fixture
def runs_dir(tmp_path):
    """Three methods on shared episodes (a common difficulty per episode), one with other draws."""
    rng = np.random.default_rng(0)
    root = tmp_path / "metrics"
    difficulty = rng.normal(0, 0.15, N_UNITS)
    paths = []
    for seed in (0, 1, 2):
        for method, mean in (("base", 0.50), ("better", 0.56), ("same", 0.50)):
            units = mean + difficulty + rng.normal(0, 0.03, N_UNITS) + rng.normal(0, 0.003)
            nmi = mean + rng.normal(0, 0.01)
            paths.append(write_run(root, method, seed, units, extra_rows=[{"metric": "nmi", "value": nmi}]))
        other = 0.56 + rng.normal(0, 0.15, N_UNITS)
        paths.append(write_run(root, "redrawn", seed, other, draws="episodes-v2"))
    return paths


def test_load_runs_reads_the_units_beside_each_file(runs_dir):
    runs = load_runs(runs_dir)
    acc = runs[(runs["method"] == "base") & (runs["metric"] == "accuracy")]
    assert len(acc) == 3 and all(len(u) == N_UNITS for u in acc["units"])
    assert acc["draws"].eq("episodes-v1").all()
    assert runs.loc[runs["metric"] == "nmi", "units"].isna().all()  # no per-unit values for NMI


def test_units_that_disagree_with_the_json_are_refused(tmp_path):
    path = write_run(tmp_path, "m", 0, np.full(10, 0.5))
    write_units(path.with_suffix(".npz"), "h", {"head": {"accuracy": np.full(10, 0.7)}})
    with pytest.raises(ValueError, match=r"fewshot_5way.npz.*'head/accuracy'"):
        load_runs([path])


def test_comparison_table(runs_dir):
    table = comparisons(load_runs(runs_dir), BASELINES, n_boot=500)
    acc = table[table["metric"] == "accuracy"].set_index("label")
    assert acc.loc["better (head)", "paired"] and acc.loc["better (head)", "test"] == "paired t over seeds"
    base = acc.loc["base (head)"]
    seed_means = {m: [np.load(p.with_suffix(".npz"))["head/accuracy"].mean() for p in runs_dir
                      if f"/{m}/" in str(p)] for m in ("base", "better")}
    assert acc.loc["better (head)", "p"] == pytest.approx(
        stats.ttest_rel(seed_means["better"], seed_means["base"]).pvalue)
    assert acc.loc["better (head)", "diff"] == pytest.approx(np.mean(seed_means["better"]) - base["mean"])
    assert acc.loc["better (head)", "diff_lo"] > 0
    # the pairing is real: other draws are compared unpaired, and the table says so
    assert not acc.loc["redrawn (head)", "paired"]
    assert acc.loc["redrawn (head)", "test"] == "unpaired Welch t over seeds"
    assert acc.loc["better (head)", "group"] == 1 and acc.loc["base (head)", "group"] > 1
    assert acc["interval"].eq("seeds × units").all()
    # NMI has no per-unit values: an interval over seeds only
    nmi = table[table["metric"] == "nmi"].set_index("label")
    assert nmi["interval"].eq("seeds").all()
    md = format_comparisons(table)
    assert "## cub / open_set / fewshot_5way / accuracy" in md and "unpaired Welch t over seeds" in md
    assert "| **better (head)** |" in md


def test_one_seed_is_an_interval_over_units_only(runs_dir):
    one_seed = [p for p in runs_dir if "seed0" in str(p)]
    table = comparisons(load_runs(one_seed), BASELINES, n_boot=300)
    acc = table[table["metric"] == "accuracy"].set_index("label")
    assert acc["interval"].eq("units (1 seed)").all()
    assert acc.loc["better (head)", "test"] == "paired t over units"
    tex = latex_table(table[table["metric"] == "accuracy"].assign(protocol="retrieval", metric="map@r"), "retrieval", "cub")
    assert tex.count(r"\textsuperscript{\dag}") == 4 + 1  # every cell, and the note under the table
    assert r"one seed: interval over episodes or queries only} \\" in tex


def test_an_absent_baseline_is_said_not_failed(runs_dir):
    table = comparisons(load_runs(runs_dir), {"open_set": "triplet (head)"}, n_boot=200)
    assert table["note"].eq("baseline triplet (head) absent").all() and table["diff"].isna().all()
    assert "Baseline: triplet (head); baseline triplet (head) absent." in format_comparisons(table)
    assert table["group"].notna().all()  # rank groups need no baseline


def test_the_baseline_is_found_on_the_only_layer_a_protocol_scores(tmp_path):
    """Closed set scores the probs layer; a baseline named on its first embedded layer (head) is
    compared there, while a method with two layers in the table stays ambiguous (absent)."""
    rng = np.random.default_rng(1)
    paths = [write_run(tmp_path, method, 0, rng.random(N_UNITS) < p, protocol="closed_set", setting="closed_set",
                       layer="probs") for method, p in (("softmax", 0.8), ("vmf", 0.7))]
    table = comparisons(load_runs(paths), {"closed_set": "softmax (head)"}, n_boot=200).set_index("label")
    assert table["baseline"].eq("softmax (probs)").all() and table["note"].eq("").all()
    diff = np.mean(np.asarray(load_runs(paths[1:])["units"].iloc[0]) - load_runs(paths[:1])["units"].iloc[0])
    assert table.loc["vmf (probs)", "diff"] == pytest.approx(diff)
    assert _baseline_cell("softmax (head)", {"softmax (probs)": 0, "softmax (logits)": 0}) is None


def test_files_round_trip_and_the_headline(runs_dir, tmp_path):
    table = comparisons(load_runs(runs_dir), BASELINES, n_boot=200)
    write_comparisons(table, ranks(table), tmp_path)
    back = read_comparisons(tmp_path / "comparisons.csv")
    assert back["paired"].astype(str).tolist() == table["paired"].astype(str).tolist()
    assert back["note"].eq("").all()
    pd.testing.assert_frame_equal(back.drop(columns="paired"), table.drop(columns="paired"), check_dtype=False)
    head = pd.read_csv(tmp_path / "comparisons_headline.csv", keep_default_na=False)
    assert len(head) == 4 and "base (head) (baseline)" in head["method (layer)"].tolist()
    assert head.set_index("method (layer)").loc["redrawn (head)", "Δ vs baseline [95%]"].endswith("unpaired")
    assert headline(table).shape == head.shape


def test_ranks_refuse_a_missing_block_and_say_which(runs_dir, tmp_path):
    rng = np.random.default_rng(1)
    extra = [write_run(tmp_path / "m2", m, 0, rng.uniform(size=50), protocol="fewshot_all") for m in ("base", "better")]
    table = comparisons(load_runs([*runs_dir, *extra]), BASELINES, n_boot=100)
    [result] = ranks(table)
    assert "same (head) lacks cub/fewshot_all" in result["refused"]
    assert "redrawn (head) lacks cub/fewshot_all" in result["refused"]


def ranked_table(n_methods=4, datasets=("a", "b", "c")):
    rng = np.random.default_rng(2)
    rows = [dict(dataset=d, setting="open_set", method=f"m{i}", layer="head", seed=0, protocol="fewshot_5way",
                 metric="accuracy", value=0.0, ci95=np.nan, n=60, config_hash="", fgbench_version="",
                 draws="h", units=0.4 + 0.05 * i + rng.normal(0, 0.1, 60))
            for d in datasets for i in range(n_methods)]
    runs = pd.DataFrame(rows)
    runs["value"] = [u.mean() for u in runs["units"]]
    return comparisons(runs, {"open_set": "m0 (head)"}, n_boot=200)


def test_ranks_across_datasets():
    [result] = ranks(ranked_table())
    assert result["blocks"] == ["a/fewshot_5way", "b/fewshot_5way", "c/fewshot_5way"]
    assert "refused" not in result and result["mean_rank"].index[0] == "m3 (head)"


def test_latex_marks_the_best_and_the_not_worse(runs_dir):
    table = comparisons(load_runs(runs_dir), BASELINES, n_boot=300)
    tex = latex_table(table, "coarse_to_fine", "cub")
    assert "No run of cub has a coarse_to_fine setting" in tex and r"\begin{tabular}" not in tex
    # an open-set table: the retrieval kind covers open_set; give it the retrieval protocol
    retrieval = table.assign(protocol="retrieval", metric=table["metric"].replace({"accuracy": "map@r"}))
    tex = latex_table(retrieval, "retrieval", "cub")
    lines = tex.splitlines()
    assert r"\toprule" in lines and r"\bottomrule" in lines and lines[-1] == r"\end{tabular}"
    assert r"Setting & Method (layer) & MAP@R & R-Precision & NMI \\" in lines
    map_r = {line.split(" & ")[1]: line.split(" & ")[2:4] for line in lines if line.startswith("open\\_set & ")}
    best = table[(table["metric"] == "accuracy") & table["best"]].iloc[0]
    half = 50 * (best["hi"] - best["lo"])
    assert map_r[best["label"]][0] == rf"$\mathbf{{{100 * best['mean']:.2f} \pm {half:.2f}}}$"
    assert map_r["base (head)"][0].startswith("$") and map_r["base (head)"][1] == "--"  # worse; no R-Precision
    tied = table[(table["metric"] == "accuracy") & (table["group"] == 1) & ~table["best"]]
    for label in tied["label"]:
        assert map_r[label][0].startswith(r"\underline{$")


def test_plots_are_drawn(runs_dir, tmp_path):
    table = comparisons(load_runs(runs_dir), BASELINES, n_boot=200)
    for plot in (plot_forest, plot_differences):
        png = tmp_path / f"{plot.__name__}.png"
        plot(table, "fewshot_5way", png)
        with Image.open(png) as im:
            assert im.format == "PNG" and im.size[1] > 250
    with pytest.raises(ValueError, match="retrieval"):
        plot_forest(table, "retrieval", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
    plot_ranks(ranks(ranked_table()) + ranks(table), tmp_path / "ranks.png")
    assert (tmp_path / "ranks.png").stat().st_size > 5000


def test_figures_html_holds_the_images(tmp_path):
    import base64
    import re

    from fgbench.report.plots import figures_html

    pngs = [tmp_path / "a.png", tmp_path / "b<c.png"]
    for i, png in enumerate(pngs):
        Image.new("RGB", (4 + i, 4)).save(png)
    page = figures_html(pngs)
    data = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert [base64.b64decode(d) for d in data] == [p.read_bytes() for p in pngs]
    assert 'alt="b&lt;c.png"' in page


def test_cli_compare_latex_and_report(runs_dir, tmp_path):
    out = tmp_path / "tables"
    spec = json.dumps({"baseline": BASELINES, "test": "t", "resamples": 200})
    assert main(["compare", "--spec", spec, "--out-dir", str(out), "--ranks-plot", str(tmp_path / "ranks.png"),
                 *map(str, runs_dir)]) == 0
    assert {p.name for p in out.iterdir()} == {"comparisons.csv", "comparisons.md", "comparisons_headline.csv",
                                               "ranks.csv", "ranks.md"}
    assert "Not ranked" in (out / "ranks.md").read_text(encoding="utf-8")
    assert main(["latex", "--comparisons", str(out / "comparisons.csv"), "--out-dir", str(out),
                 "retrieval/cub"]) == 0
    assert (out / "retrieval_cub.tex").read_text().startswith("% fgbench: Retrieval, cub")
    assert main(["report", "--comparisons", str(out / "comparisons.csv"), "--protocol", "fewshot_5way",
                 "--out", str(tmp_path / "f.png"), "--differences", str(tmp_path / "d.png")]) == 0
    assert (tmp_path / "f.png").exists() and (tmp_path / "d.png").exists()
    assert main(["latex", "--comparisons", str(out / "comparisons.csv"), "--out-dir", str(out), "nope/cub"]) == 2
    assert main(["figures", "--out", str(tmp_path / "p.html"), str(tmp_path / "f.png"), "none.png"]) == 2
    assert not (tmp_path / "p.html").exists()
