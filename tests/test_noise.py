"""Symmetric label noise: rate, flips to other classes only, seeding, LSD's draws."""

import numpy as np
import pytest

from fgbench.data.noise import symmetric_label_noise


def lsd_symm_noisy(y, class_num, ratio, seed):
    """LSD's ``noisy_prepare`` + ``symm_noisy`` (``basic_dataset_scaffold_noisy.py``), written
    out: the full transition matrix, one multinomial draw per label."""
    P = np.ones((class_num, class_num)) * (ratio / (class_num - 1))
    for i in range(class_num):
        P[i, i] = 1.0 - ratio
    flipper = np.random.RandomState(seed)
    new_y = y.copy()
    for idx in range(len(y)):
        new_y[idx] = np.where(flipper.multinomial(1, P[y[idx], :], 1)[0] == 1)[0][0]
    return new_y


@pytest.fixture(scope="module")
def labels():
    return np.random.RandomState(123).randint(0, 10, size=100_000)


@pytest.fixture(scope="module")
def noisy(labels):
    return symmetric_label_noise(labels, 0.3, seed=0)


def test_flip_rate_matches_ratio(labels, noisy):
    # binomial standard deviation sqrt(0.3 * 0.7 / 1e5) = 0.0014; a flip to the label itself
    # would count as kept and pull the rate down to 0.3 * 9/10 = 0.27
    assert (noisy != labels).mean() == pytest.approx(0.3, abs=0.006)
    for c in range(10):  # per class too
        assert (noisy[labels == c] != c).mean() == pytest.approx(0.3, abs=0.02)


def test_flipped_labels_are_uniform_over_the_other_classes(labels, noisy):
    flipped = noisy != labels
    assert not (noisy[flipped] == labels[flipped]).any()
    # the step from the old to the new label, over all 30k flips: uniform over 1..9 (standard
    # deviation of each share 0.0018)
    steps = np.bincount((noisy[flipped] - labels[flipped]) % 10, minlength=10)
    assert steps[0] == 0
    np.testing.assert_allclose(steps[1:] / flipped.sum(), 1 / 9, atol=0.008)
    # and from one class to every other (about 3000 flips: standard deviation 0.0057)
    counts = np.bincount(noisy[flipped & (labels == 3)], minlength=10)
    assert counts[3] == 0
    np.testing.assert_allclose(np.delete(counts, 3) / counts.sum(), 1 / 9, atol=0.025)


def test_two_classes_always_flip_to_the_other(labels):
    y = labels % 2
    noisy = symmetric_label_noise(y, 0.4, seed=1)
    assert (noisy != y).mean() == pytest.approx(0.4, abs=0.006)  # uniform over both would give 0.2
    assert set(np.unique(noisy)) == {0, 1}


def test_seeding(labels):
    a = symmetric_label_noise(labels[:5000], 0.5, seed=7)
    assert np.array_equal(a, symmetric_label_noise(labels[:5000], 0.5, seed=7))
    b = symmetric_label_noise(labels[:5000], 0.5, seed=8)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a != labels[:5000], b != labels[:5000])  # different positions flip


def test_same_draws_as_lsd(labels):
    y = labels[:3000]
    for ratio, seed in ((0.2, 0), (0.5, 3)):
        np.testing.assert_array_equal(symmetric_label_noise(y, ratio, seed), lsd_symm_noisy(y, 10, ratio, seed))


def test_label_values_dtype_and_class_set_are_kept():
    y = np.array([3, 7, 20, 3, 7, 20, 41, 41] * 500, dtype=np.int16)
    before = y.copy()
    noisy = symmetric_label_noise(y, 0.6, seed=2)
    assert noisy.dtype == np.int16 and noisy.shape == y.shape
    np.testing.assert_array_equal(np.unique(noisy), [3, 7, 20, 41])
    np.testing.assert_array_equal(y, before)  # the input is not modified
    # the same flips as on the ranks 0..3 of the values
    ranks = np.searchsorted([3, 7, 20, 41], y)
    np.testing.assert_array_equal(np.searchsorted([3, 7, 20, 41], noisy), symmetric_label_noise(ranks, 0.6, seed=2))


def test_ratio_zero_and_invalid_ratios():
    y = np.arange(10) % 3
    same = symmetric_label_noise(y, 0.0, seed=0)
    np.testing.assert_array_equal(same, y)
    assert same is not y
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
            symmetric_label_noise(y, bad, seed=0)
    with pytest.raises(ValueError, match="at least two classes"):
        symmetric_label_noise(np.zeros(5, dtype=int), 0.2, seed=0)
