"""t-SNE of one run's test embeddings, coloured by coarse and by fine label.

Both seed codebases draw t-SNE plots of L2-normalised embeddings (shared/reference/c2f-methods.md,
section 5.7): ANCOR with sklearn's ``TSNE(metric="cosine")`` on one all-way episode coloured by
coarse class, SCGM on 2000 random embeddings coloured by coarse class. Here: up to
``max_points`` test images (a seeded subsample stratified by fine class), one layer's
L2-normalised features, ``TSNE(metric="cosine", init="pca", perplexity=min(30, n - 1),
random_state=seed)``, and two panels of the same map, coloured by coarse and by fine label.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fgbench.evaluate import layer_features
from fgbench.io import atomic_path

__all__ = ["LEGEND_MAX_CLASSES", "plot_tsne", "stratified_subsample", "tsne_embedding"]

#: Panels with at most this many classes get a legend with class names; more get a colour bar.
LEGEND_MAX_CLASSES = 20


def stratified_subsample(labels: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` items, each class keeping its share.

    Every index when there are no more than ``max_points``; otherwise class c gets
    ``max_points * n_c / n`` items rounded by largest remainder (ties to the smaller class
    id), drawn without replacement with ``np.random.RandomState(seed)``.
    """
    labels = np.asarray(labels)
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    n = len(labels)
    if n <= max_points:
        return np.arange(n)
    classes, counts = np.unique(labels, return_counts=True)
    share = max_points * counts / n
    quota = np.floor(share).astype(int)
    extra = np.argsort(-(share - quota), kind="stable")[: max_points - quota.sum()]
    quota[extra] += 1
    rng = np.random.RandomState(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(picks))


def tsne_embedding(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of L2-normalised ``features`` (N >= 2): cosine metric, PCA init."""
    from sklearn.manifold import TSNE  # slow import: only when plotting

    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"t-SNE needs at least 2 feature vectors, got shape {x.shape}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    tsne = TSNE(n_components=2, metric="cosine", init="pca", perplexity=min(30.0, len(x) - 1.0),
                random_state=seed)
    return tsne.fit_transform(x)


def _names(arrays, key: str, labels: np.ndarray) -> dict:
    names = arrays.get(key)
    return {c: str(names[c]) if names is not None and 0 <= c < len(names) else str(c) for c in np.unique(labels)}


def _panel(ax, xy, labels, names: dict, title: str):
    classes = sorted(names)
    if len(classes) <= LEGEND_MAX_CLASSES:
        palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for i, c in enumerate(classes):
            m = labels == c
            ax.scatter(xy[m, 0], xy[m, 1], s=6, color=palette(i % palette.N), label=names[c], linewidths=0)
        ax.legend(fontsize="x-small", markerscale=2, loc="best", frameon=False)
    else:
        points = ax.scatter(xy[:, 0], xy[:, 1], s=6, c=labels, cmap="turbo", linewidths=0)
        ax.figure.colorbar(points, ax=ax, label="class id")
    ax.set_title(title, fontsize="medium")
    ax.set_xticks([])
    ax.set_yticks([])


def plot_tsne(arrays: dict, layer: str, out_png: str | os.PathLike, max_points: int = 2000, seed: int = 0,
              name: str = "") -> Figure:
    """Write a two-panel t-SNE plot of ``layer`` to ``out_png`` (coarse | fine labels); return
    the figure.

    ``arrays``: an embeddings file's arrays (:func:`fgbench.evaluate.load_embeddings`);
    ``name``: what the figure title calls the run (e.g. method, dataset and seed). Class names
    come from ``coarse_names``/``fine_names`` when the file has them.
    """
    features = layer_features(arrays, layer)
    fine, coarse = np.asarray(arrays["fine"]), np.asarray(arrays["coarse"])
    keep = stratified_subsample(fine, max_points, seed)
    xy = tsne_embedding(features[keep], seed)

    fig = Figure(figsize=(12, 5.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_coarse, ax_fine = fig.subplots(1, 2)
    _panel(ax_coarse, xy, coarse[keep], _names(arrays, "coarse_names", coarse[keep]), "coloured by coarse class")
    _panel(ax_fine, xy, fine[keep], _names(arrays, "fine_names", fine[keep]), "coloured by fine class")
    title = f"{name}: layer {layer}" if name else f"layer {layer}"
    fig.suptitle(f"t-SNE of {title} ({len(keep)} test images, cosine)")
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return fig
