"""Closed-set classification metrics of class probabilities: accuracy and expected calibration
error (ECE), as the vMF paper reports them (Scott, Gallagher, Mozer, ICCV 2021; its
``eval_utils.calc_ece_em_quant``).

Inputs: ``probs`` (N, C), one row of class probabilities per test image (the ``probs`` layer of
an embeddings file), and ``labels`` (N,), the true classes in 0..C-1 (closed-set runs train and
test on the same classes, so the ``fine`` labels of the file are the classifier's classes).

Confidence is the maximum probability of a row, the prediction its argmax (ties: the lowest
class), correct when it equals the label.

- ``ece`` (the paper's): 15 **equal-mass** bins, L2 norm. Rows are sorted by confidence (stable
  sort: ties keep their index order; the paper's ``np.argsort`` leaves their order unspecified)
  and the row at sorted position i goes to bin min(B-1, floor(i / N * B)), so bin sizes differ
  by at most one when N is not a multiple of B. ECE = sqrt(sum_b (n_b / N) (acc_b - conf_b)^2).
- ``ece_l1_ew{B}``: the usual ECE (Guo et al., ICML 2017): B **equal-width** bins of confidence,
  (0, 1/B], (1/B, 2/B], ..., L1 norm: sum_b (n_b / N) |acc_b - conf_b|.
"""

import numpy as np


def _predictions(probs, labels):
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],) or probs.shape[0] == 0:
        raise ValueError(f"probs must be (N, C) and labels (N,), N >= 1; got {probs.shape} and {labels.shape}")
    return probs.max(1), (probs.argmax(1) == labels).astype(np.float64)


def accuracy(probs, labels) -> float:
    """Fraction of rows whose argmax is the label."""
    return float(_predictions(probs, labels)[1].mean())


def per_image_accuracy(probs, labels) -> np.ndarray:
    """1.0 / 0.0 per row: whether its argmax is the label (their mean is :func:`accuracy`)."""
    return _predictions(probs, labels)[1]


def equal_mass_bins(confidence, n_bins: int):
    """Bin index of every row: by rank of confidence, ``n_bins`` bins of (nearly) equal size,
    exactly as the paper's ``calc_ece_em_quant`` (with a stable sort)."""
    n = len(confidence)
    bins = np.empty(n, dtype=int)
    bins[np.argsort(confidence, kind="stable")] = np.minimum(n_bins - 1, np.floor(np.arange(n) / n * n_bins)).astype(int)
    return bins


def _binned_error(confidence, correct, bins, n_bins: int, power: float) -> float:
    """(sum_b (n_b / N) |acc_b - conf_b|^power)^(1/power) over the non-empty bins."""
    n = np.bincount(bins, minlength=n_bins)
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins)
    used = n > 0
    gap = np.abs(acc[used] / n[used] - conf[used] / n[used])
    return float((np.sum(n[used] * gap**power) / len(bins)) ** (1 / power))


def ece_equal_mass(probs, labels, n_bins: int = 15, power: float = 2) -> float:
    """The paper's ECE: equal-mass bins over the maximum probability, L``power`` norm."""
    confidence, correct = _predictions(probs, labels)
    return _binned_error(confidence, correct, equal_mass_bins(confidence, n_bins), n_bins, power)


def ece_equal_width(probs, labels, n_bins: int = 15, power: float = 1) -> float:
    """The usual ECE: bins (b/B, (b+1)/B] of the maximum probability, L``power`` norm."""
    confidence, correct = _predictions(probs, labels)
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    return _binned_error(confidence, correct, bins, n_bins, power)


def closed_set_metrics(probs, labels, ece_bins: int = 15) -> dict:
    """{accuracy, ece (equal-mass, L2: the paper's), ece_l1_ew{bins} (equal-width, L1)}."""
    if isinstance(ece_bins, bool) or not isinstance(ece_bins, int) or ece_bins < 1:
        raise ValueError(f"ece_bins must be a positive integer, got {ece_bins!r}")
    return {
        "accuracy": accuracy(probs, labels),
        "ece": ece_equal_mass(probs, labels, ece_bins, power=2),
        f"ece_l1_ew{ece_bins}": ece_equal_width(probs, labels, ece_bins, power=1),
    }
