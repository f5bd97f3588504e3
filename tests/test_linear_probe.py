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


def test_reduce_features_leaves_small_inputs_alone_and_projects_long_vectors():
    x = np.random.default_rng(1).normal(size=(6, 2, 2, 3))
    np.testing.assert_array_equal(reduce_features(x), x.reshape(6, -1))
    long = np.random.default_rng(2).normal(size=(50, 3000))
    reduced = reduce_features(long, max_features=512)
    assert reduced.shape == (50, 512)
    np.testing.assert_array_equal(reduced, reduce_features(long, max_features=512))  # seeded
    # the count sketch preserves norms and inner products in expectation
    ratio = np.linalg.norm(reduced, axis=1) / np.linalg.norm(long, axis=1)
    assert np.all(np.abs(ratio - 1) < 0.15)
    gram, sketched = long @ long.T, reduced @ reduced.T
    # (error of an inner product about |a| |b| / sqrt(512): 4 % of a squared norm here)
    assert np.abs(sketched - gram).mean() < 0.08 * np.diag(gram).mean()
    # every input value goes to one output: a one-hot input comes out one-hot (±1)
    unit = np.eye(3000)[[5, 2999]]
    assert np.array_equal(np.abs(reduce_features(unit, max_features=512)).sum(axis=1), [1, 1])
    # a map with more channels than max_features: no pooling grid fits, then projected
    wide = np.random.default_rng(3).normal(size=(2, 3, 3, 40))
    assert reduce_features(wide, max_features=32).shape == (2, 32)
