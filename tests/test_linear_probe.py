"""The leave-one-out ridge probe behind cutoff='auto' and reduce_features."""

import numpy as np
import pytest

from keras_classpca.hybrid.probe import loo_ridge_accuracy, reduce_features

pytestmark = pytest.mark.backend_independent


def _mixture(n, d, k, seed, shift=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(size=(k, d)) * shift
    scales = np.exp(rng.normal(size=d))  # unequal feature scales: standardisation matters
    return (rng.normal(size=(n, d)) + centers[y]) * scales, y


def test_loo_probe_equals_refitting_without_each_sample():
    x, y = _mixture(90, 6, 3, seed=0, shift=0.8)
    for features in (x, np.tile(x, 20)):  # primal (d < n) and dual (d > n) forms
        z = features - features.mean(axis=0)
        z /= np.sqrt((z * z).mean(axis=0))
        targets, correct = np.eye(3)[y], 0
        for i in range(len(y)):
            rest = np.arange(len(y)) != i
            a, t = z[rest], targets[rest]
            am, tm = a.mean(axis=0), t.mean(axis=0)
            w = np.linalg.solve((a - am).T @ (a - am) + 1e-2 * len(y) * np.eye(z.shape[1]),
                                (a - am).T @ (t - tm))
            correct += np.argmax(tm + (z[i] - am) @ w) == y[i]
        assert loo_ridge_accuracy(features, y, 3) == pytest.approx(correct / len(y))


def test_loo_probe_has_an_intercept_for_unequal_class_frequencies():
    # No signal in x, 85 % of class 1: a ridge classifier predicts the majority class.
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(1500, 4)), (rng.random(1500) < 0.85).astype(int)
    assert loo_ridge_accuracy(x, y, 2) == pytest.approx(np.mean(y == 1), abs=0.01)


def test_loo_probe_is_near_chance_without_signal_and_high_with_it():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2000, 6)), rng.integers(0, 2, 2000)
    assert abs(loo_ridge_accuracy(x, y, 2) - 0.5) < 0.05
    x, y = _mixture(600, 7, 4, seed=1, shift=2.0)
    x[:, 2] = 3.0  # a constant feature must not produce NaN
    assert loo_ridge_accuracy(x, y, 4) > 0.9


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
