"""RidgeProbe (the streamed ridge classifier behind cutoff='auto') and reduce_features."""

import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier
from sklearn.preprocessing import StandardScaler

from keras_classpca.hybrid.probe import RidgeProbe, reduce_features

pytestmark = pytest.mark.backend_independent


def _mixture(n, d, k, seed, shift=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(size=(k, d)) * shift
    scales = np.exp(rng.normal(size=d))  # unequal feature scales: standardisation matters
    return (rng.normal(size=(n, d)) + centers[y]) * scales, y


@pytest.mark.parametrize("alpha", [1e-3, 1.0, 30.0])
def test_streamed_probe_predicts_like_sklearn_ridge_on_standardised_features(alpha):
    x, y = _mixture(900, 7, 4, seed=1, shift=0.7)
    train, test = slice(0, 600), slice(600, None)
    probe = RidgeProbe(4, alpha=alpha)
    for start in range(0, 600, 128):  # uneven streamed batches
        probe.partial_fit(x[start : min(start + 128, 600)], y[start : min(start + 128, 600)])
    scaler = StandardScaler().fit(x[train])
    # Same objective: ||Y - Xs w||² / n + alpha ||w||²  <=>  sklearn alpha * n.
    reference = RidgeClassifier(alpha=alpha * 600).fit(scaler.transform(x[train]), y[train])
    predicted = reference.predict(scaler.transform(x[test]))
    assert probe.score(x[test], predicted) == 1.0
    # and the score is an accuracy against the true labels
    assert probe.score(x[test], y[test]) == pytest.approx(np.mean(predicted == y[test]))
    if alpha <= 1.0:  # chance is 0.25: the data is informative and so is the probe
        assert probe.score(x[test], y[test]) > 0.6


def test_probe_has_an_intercept_for_unequal_class_frequencies():
    # No signal in x, 85 % of class 1: a ridge classifier predicts the majority class.
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(2000, 4)), (rng.random(2000) < 0.85).astype(int)
    probe = RidgeProbe(2).partial_fit(x[:1500], y[:1500])
    assert probe.score(x[1500:], y[1500:]) == pytest.approx(np.mean(y[1500:] == 1))


def test_probe_refits_after_more_data_and_handles_constant_features():
    x, y = _mixture(400, 5, 3, seed=2, shift=2.0)
    x[:, 2] = 3.0  # zero variance: must not produce NaN
    probe = RidgeProbe(3).partial_fit(x[:30], y[:30])
    small = probe.score(x[200:], y[200:])
    probe.partial_fit(x[30:200], y[30:200])
    full = RidgeProbe(3).partial_fit(x[:200], y[:200])
    assert probe.score(x[200:], y[200:]) == full.score(x[200:], y[200:])
    assert np.isfinite(small) and full.score(x[200:], y[200:]) > 0.8


def test_probe_is_near_chance_on_labels_independent_of_features():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(3000, 6)), rng.integers(0, 2, 3000)
    probe = RidgeProbe(2).partial_fit(x[:2000], y[:2000])
    assert abs(probe.score(x[2000:], y[2000:]) - 0.5) < 0.06


def test_reduce_features_pools_maps_over_a_partition_of_the_grid():
    h, w, c = 7, 5, 2
    # One-hot maps: each position must land in exactly one cell, divided by its area.
    eye = np.eye(h * w * c).reshape(h * w * c, h, w, c)
    reduced = reduce_features(eye, max_features=18)  # grid int(sqrt(18 / 2)) = 3 per side
    assert reduced.shape == (h * w * c, 3 * 3 * c)
    assert np.all(np.count_nonzero(reduced, axis=1) == 1)
    cell_of = np.argmax(reduced, axis=1)
    assert np.all(cell_of % c == np.arange(h * w * c) % c)  # channels stay apart
    area = np.bincount(cell_of, minlength=3 * 3 * c)
    assert area.sum() == h * w * c and area.min() >= 1
    # each nonzero value is 1 / (area of its cell): a mean over the cell
    np.testing.assert_allclose(reduced.max(axis=1), 1.0 / area[cell_of])
    # pooling a random map: cell means weighted by cell areas give the map's sum
    x = np.random.default_rng(0).normal(size=(4, h, w, c))
    pooled = reduce_features(x, max_features=18)
    np.testing.assert_allclose(
        (pooled * area).reshape(4, 9, c).sum(axis=1), x.sum(axis=(1, 2))
    )


def test_reduce_features_leaves_small_inputs_alone_and_projects_long_vectors():
    x = np.random.default_rng(1).normal(size=(6, 2, 2, 3))
    np.testing.assert_array_equal(reduce_features(x), x.reshape(6, -1))
    long = np.random.default_rng(2).normal(size=(50, 3000))
    reduced = reduce_features(long, max_features=512)
    assert reduced.shape == (50, 512)
    np.testing.assert_array_equal(reduced, reduce_features(long, max_features=512))  # seeded
    # a Gaussian projection scaled by 1/sqrt(m) roughly preserves norms
    ratio = np.linalg.norm(reduced, axis=1) / np.linalg.norm(long, axis=1)
    assert np.all(np.abs(ratio - 1) < 0.15)
    # a map with more channels than max_features: no pooling grid fits, then projected
    wide = np.random.default_rng(3).normal(size=(2, 3, 3, 40))
    assert reduce_features(wide, max_features=32).shape == (2, 32)
