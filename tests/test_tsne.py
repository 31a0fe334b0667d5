"""Tests for fgbench.report.tsne: stratified subsample, the two-panel plot, the CLI."""

import numpy as np
import pytest
from PIL import Image

from fgbench.cli import main
from fgbench.errors import ConfigError
from fgbench.report.options import validate_report
from fgbench.report.tsne import plot_tsne, stratified_subsample


def _arrays(n_fine=6, per_class=10, dim=8, seed=0):
    """Fine classes in pairs under one coarse class; layers head (clustered) and backbone."""
    rng = np.random.RandomState(seed)
    fine = np.repeat(np.arange(n_fine), per_class)
    coarse = fine // 2
    head = rng.randn(n_fine, dim)[fine] + 0.3 * rng.randn(len(fine), dim)
    return {"layers": np.array(["head", "backbone"]), "fine": fine, "coarse": coarse, "index": np.arange(len(fine)),
            "features_head": head.astype(np.float32),
            "features_backbone": rng.randn(len(fine), 4).astype(np.float32),
            "fine_names": np.array([f"fine{i}" for i in range(n_fine)]),
            "coarse_names": np.array([f"coarse{i}" for i in range(n_fine // 2)])}


def test_stratified_subsample():
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    keep = stratified_subsample(labels, 10, seed=3)
    assert len(keep) == 10 and (np.diff(keep) > 0).all()
    np.testing.assert_array_equal(np.bincount(labels[keep]), [5, 3, 2])
    np.testing.assert_array_equal(keep, stratified_subsample(labels, 10, seed=3))
    assert not np.array_equal(keep, stratified_subsample(labels, 10, seed=4))
    # Largest remainder: 7 * (0.5, 0.3, 0.2) = 3.5, 2.1, 1.4 -> 3 + 1, 2, 1.
    np.testing.assert_array_equal(np.bincount(labels[stratified_subsample(labels, 7)]), [4, 2, 1])
    np.testing.assert_array_equal(stratified_subsample(labels, 100), np.arange(100))
    with pytest.raises(ValueError, match="max_points"):
        stratified_subsample(labels, 0)


def test_plot_tsne_two_panels(tmp_path):
    arrays = _arrays()
    png = tmp_path / "plots" / "tsne.png"
    fig = plot_tsne(arrays, "head", png, max_points=40, name="ancor, toy")
    assert png.stat().st_size > 5000 and list(png.parent.iterdir()) == [png]
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]  # two panels side by side
    assert len(fig.axes) == 2
    coarse_ax, fine_ax = fig.axes
    assert "coarse" in coarse_ax.get_title() and "fine" in fine_ax.get_title()
    assert [t.get_text() for t in coarse_ax.get_legend().get_texts()] == ["coarse0", "coarse1", "coarse2"]
    assert [t.get_text() for t in fine_ax.get_legend().get_texts()] == [f"fine{i}" for i in range(6)]
    assert sum(len(c.get_offsets()) for c in fine_ax.collections) == 40
    assert "ancor, toy: layer head" in fig._suptitle.get_text()


def test_many_classes_get_a_colour_bar(tmp_path):
    fig = plot_tsne(_arrays(n_fine=24, per_class=2), "backbone", tmp_path / "t.png")
    assert len(fig.axes) == 3  # two panels and the fine panel's colour bar
    assert fig.axes[1].get_legend() is None and fig.axes[0].get_legend() is not None


def test_cli_tsne_uses_the_first_layer(tmp_path):
    path = tmp_path / "test.npz"
    np.savez(path, **_arrays())
    out = tmp_path / "seed0.png"
    assert main(["tsne", "--embeddings", str(path), "--points", "30", "--out", str(out)]) == 0
    assert out.stat().st_size > 5000
    assert main(["tsne", "--embeddings", str(path), "--layer", "logits", "--out", str(out)]) == 2


def test_validate_report_section():
    assert validate_report(None) == {"tsne": True, "tsne_points": 2000}
    assert validate_report({"tsne": False}) == {"tsne": False, "tsne_points": 2000}
    for section, message in [
        ({"tsne": "yes"}, "'report.tsne' must be true or false"),
        ({"tsne_points": 5}, "'report.tsne_points' must be an integer >= 10, got 5"),
        ({"tsne_points": True}, "'report.tsne_points'"),
        ({"tsne_point": 100}, r"unknown key\(s\) \['tsne_point'\] in 'report'"),
        ([1], "'report' must be a mapping"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate_report(section)
