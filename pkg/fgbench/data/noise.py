"""Label noise for the noisy-label experiments (LSD, Zeng et al. 2022): symmetric noise on the
training labels only. Torch-free."""

import numpy as np


def symmetric_label_noise(labels: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Symmetric label noise, as LSD's ``basic_dataset_scaffold_noisy.py`` (``noisy_prepare`` +
    ``symm_noisy``) draws it.

    Each label is kept with probability ``1 - ratio``, otherwise replaced by one of the other
    C - 1 classes uniformly (C = number of distinct labels): the row of the transition matrix
    P = ratio / (C - 1) off the diagonal, 1 - ratio on it. One ``multinomial(1, P[y_i], 1)``
    draw per label, in order, from ``np.random.RandomState(seed)``, so with labels
    0..C-1 the flips equal LSD's for the same seed. Other label values are mapped to their rank
    among the distinct labels (LSD's sorted class order) and back.

    Args:
        labels: (N,) integer labels.
        ratio: noise rate r in [0, 1).
        seed: seed of the ``RandomState``.
    Returns:
        A new array of the same shape and dtype; ``labels`` is not modified. ratio 0: a copy.
    Raises:
        ValueError: ratio outside [0, 1), or ratio > 0 with fewer than two classes.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"label noise ratio {ratio} is outside [0, 1)")
    labels = np.asarray(labels)
    if ratio == 0:
        return labels.copy()
    classes, y = np.unique(labels, return_inverse=True)
    y = y.reshape(-1)
    c = len(classes)
    if c < 2:
        raise ValueError("symmetric label noise needs at least two classes")
    row = np.full(c, ratio / (c - 1))  # P[i] is this row with 1 - ratio at i, set in place
    flipper = np.random.RandomState(seed)
    noisy = np.empty_like(y)
    for n, i in enumerate(y):
        row[i] = 1.0 - ratio
        noisy[n] = np.flatnonzero(flipper.multinomial(1, row, 1)[0])[0]
        row[i] = ratio / (c - 1)
    return classes[noisy].reshape(labels.shape).astype(labels.dtype, copy=False)
