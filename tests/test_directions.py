"""Fisher discriminant directions and sign pairs (keras_classpca.core.directions)."""

import numpy as np
import pytest

from keras_classpca.core.directions import (
    discriminant_directions,
    fix_signs,
    sign_pair_columns,
)

pytestmark = pytest.mark.backend_independent


def _class_statistics(x, y):
    labels = np.unique(y)
    counts = np.array([np.sum(y == c) for c in labels])
    means = np.stack([x[y == c].mean(axis=0) for c in labels])
    covariances = np.stack([np.cov(x[y == c].T, bias=True) for c in labels])
    return counts, means, covariances


def test_recovers_a_low_variance_separating_direction():
    # Three classes whose means differ only along one low-variance axis, hidden under
    # large shared variance elsewhere: class-PCA ranks that axis last, LDA first.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    y = np.repeat([0, 1, 2], 400)
    z = rng.normal(size=(1200, 6)) * np.array([5.0, 4.0, 3.0, 2.0, 1.5, 0.3])
    z[:, 5] += np.array([-1.0, 0.0, 1.0])[y]
    x = z @ q.T
    directions, ratios = discriminant_directions(*_class_statistics(x, y), 2)
    assert abs(directions[:, 0] @ q[:, 5]) > 0.999
    assert ratios[0] > 5.0 and ratios[1] < 0.05 * ratios[0]
    np.testing.assert_allclose(np.linalg.norm(directions, axis=0), 1.0)


def test_matches_the_generalized_eigenproblem():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 150)
    x = rng.normal(size=(600, 5)) @ rng.normal(size=(5, 5)) + rng.normal(size=(4, 5))[y] * 2
    counts, means, covariances = _class_statistics(x, y)
    directions, ratios = discriminant_directions(counts, means, covariances, 3, ridge=0.0)
    weights = counts / counts.sum()
    within = np.einsum("k,kij->ij", weights, covariances)
    centred = means - weights @ means
    between = (centred * weights[:, None]).T @ centred
    for j in range(3):  # between v = ratio * within v
        v = directions[:, j]
        np.testing.assert_allclose(between @ v, ratios[j] * (within @ v), rtol=1e-8, atol=1e-10)
    assert np.all(np.diff(ratios) <= 0)


def test_deterministic_signs_and_bad_counts():
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 100)
    x = rng.normal(size=(300, 4)) + np.eye(3, 4)[y]
    stats = _class_statistics(x, y)
    a, _ = discriminant_directions(*stats, 2)
    b, _ = discriminant_directions(*stats, 2)
    assert np.array_equal(a, b)
    assert np.all(a[np.argmax(np.abs(a), axis=0), [0, 1]] > 0)
    with pytest.raises(ValueError, match=r"`n_directions` must lie in \[1, 2\]"):
        discriminant_directions(*stats, 3)


def test_sign_pairs_lose_nothing_through_a_relu():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(50, 7))
    kernel, bias = rng.normal(size=(7, 4)), rng.normal(size=4)
    columns, signs = sign_pair_columns(np.ones(4, dtype=bool))  # every filter paired
    paired_kernel, paired_bias = kernel[:, columns] * signs, bias[columns] * signs
    assert paired_kernel.shape == (7, 8) and paired_bias.shape == (8,)
    h = np.maximum(x @ paired_kernel + paired_bias, 0.0)
    np.testing.assert_allclose(h[:, 0::2] - h[:, 1::2], x @ kernel + bias, atol=1e-12)


def test_float32_rounding_of_tied_entries_does_not_flip_a_column():
    # An antisymmetric filter: its two largest entries are +a and -a. Float32 products
    # leave them about 1e-5 apart (relative), in either order: the sign must not follow.
    filter_ = np.array([1.31989, 0.0, -1.31989, 0.5, 0.0, -0.5])
    rng = np.random.default_rng(0)
    for _ in range(20):
        noisy = filter_ * (1.0 + 3e-5 * rng.standard_normal(filter_.shape))
        fixed = fix_signs(noisy[:, None])[:, 0]
        assert fixed[0] > 0 and fixed[2] < 0
    # A real difference (beyond the tie tolerance) still decides.
    assert fix_signs(np.array([[1.0], [-1.01]]))[:, 0].tolist() == [-1.0, 1.01]
