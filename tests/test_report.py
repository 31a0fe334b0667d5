"""Tests for fgbench.report (aggregation, Markdown, plots) and fgbench.io."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fgbench.io import atomic_path, atomic_write_bytes, atomic_write_text
from fgbench.report import load_metrics, plot_protocol, summarise, write_summary

T975_2DOF = 4.302653  # scipy.stats.t.ppf(0.975, 2)

# value per (method, seed) for fewshot_5way/accuracy; retrieval is shifted by -0.1
ACC = {"proto": {0: 0.5, 1: 0.6, 2: 0.7}, "arcface": {0: 0.8, 1: 0.8, 2: 0.9}}


def _row(method, seed, protocol, metric, value, ci95, n, dataset="cub", setting="coarse_to_fine"):
    return dict(dataset=dataset, setting=setting, method=method, seed=seed, protocol=protocol,
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
    assert f"| proto | 60.00 ± {100 * T975_2DOF * 0.1 / math.sqrt(3):.2f} |" in md
    assert "42.00 ± 1.23ᵉ" in md and "± over episodes (1 seed)" in md
    assert "| 33.00 |" in md  # single seed, no episode CI
    assert "| arcface | 50.00 ± 2.00ᵉ | – |" in md  # arcface has no open_set retrieval
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.md"]


@pytest.mark.parametrize("protocol", ["fewshot_5way", "retrieval"])
def test_plot_protocol(metric_files, tmp_path, protocol):
    s = summarise(load_metrics(metric_files))
    png = tmp_path / "plots" / f"{protocol}.png"
    plot_protocol(s, protocol, png)
    assert png.stat().st_size > 5000
    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG"
    assert list(png.parent.iterdir()) == [png]


def test_plot_unknown_protocol(metric_files, tmp_path):
    s = summarise(load_metrics(metric_files))
    with pytest.raises(ValueError, match="fewshot_intra"):
        plot_protocol(s, "fewshot_intra", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


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
