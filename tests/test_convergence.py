"""`samples="auto"`'s stopping rule (keras_classpca.core.convergence), NumPy only."""

import numpy as np
import pytest

from keras_classpca.core.class_pca import ClassPCA
from keras_classpca.core.convergence import (
    SubspaceConvergence,
    captured_variance_change,
    leading_eigenspace,
)
from keras_classpca.core.subspace import subspace_overlap
from tests.conftest import make_subspace_classes

pytestmark = pytest.mark.backend_independent

def test_change_ignores_rotations_inside_a_degenerate_eigenspace():
    # The matrix is isotropic in the plane (e0, e1): any basis of the plane is as good,
    # so a rotation within it is no change, while swapping in e2 is.
    e = np.eye(3)
    matrix = np.diag([2.0, 2.0, 0.5])
    theta = 0.7
    rotated = np.column_stack([np.cos(theta) * e[:, 0] + np.sin(theta) * e[:, 1],
                               -np.sin(theta) * e[:, 0] + np.cos(theta) * e[:, 1]])
    assert captured_variance_change(matrix, e[:, :2], rotated) == pytest.approx(0)
    # the previous span captures 2.5 of the 4.0 the current (best) one does
    assert captured_variance_change(matrix, e[:, [0, 2]], e[:, :2]) == pytest.approx(1 - 2.5 / 4)


def test_leading_eigenspace_spans_the_top_eigenvectors():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    matrix = q @ np.diag([9.0, 7.0, 5.0, 1.0, 0.5, 0.1]) @ q.T
    assert subspace_overlap(leading_eigenspace(matrix, 3), q[:, :3]) == pytest.approx(1.0)
    assert leading_eigenspace(matrix, 10).shape == (6, 6)  # capped at d


def test_leading_eigenspace_of_a_wide_matrix_spans_the_top_eigenvectors():
    # d >= 512 with few vectors: the Lanczos path, on a flat spectrum (its hard case)
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(600, 600)))
    matrix = q @ np.diag(np.linspace(2.0, 1.0, 600)) @ q.T
    basis = leading_eigenspace(matrix, 5)
    assert np.allclose(basis.T @ basis, np.eye(5), atol=1e-10)
    assert subspace_overlap(basis, q[:, :5]) == pytest.approx(1.0, abs=1e-8)


def test_stops_once_the_class_subspaces_settle_and_they_are_the_true_ones():
    data = make_subspace_classes([2, 2, 2], n_features=12, n_per_class=4000, noise=0.2, seed=1)
    order = np.random.default_rng(0).permutation(len(data.y))
    x, y = data.x[order], data.y[order]
    pca, monitor = ClassPCA(6, center=False), SubspaceConvergence(tolerance=1e-3, first=64)
    for start in range(0, len(y), 32):
        pca.partial_fit(x[start:start + 32], y[start:start + 32])
        if monitor.check([pca], start + 32):
            break
    assert monitor.converged_at is not None and monitor.converged_at < len(y) // 4
    checks = [seen for seen, _ in monitor.history]
    assert checks == sorted(checks) and checks[0] >= 128  # geometric check points
    assert monitor.history[-1][1] < 1e-3 <= max(change for _, change in monitor.history)
    solution = pca.solve()
    for label, basis in enumerate(data.bases):
        filters = solution.components[:, solution.component_classes == label]
        assert subspace_overlap(filters, basis) > 0.99


def test_never_converges_on_noise_at_a_tight_tolerance():
    rng = np.random.default_rng(2)
    pca, monitor = ClassPCA(4), SubspaceConvergence(tolerance=1e-6, first=50)
    for start in range(0, 2000, 50):
        pca.partial_fit(rng.normal(size=(50, 10)), rng.integers(0, 2, 50))
        assert not monitor.check([pca], start + 50)
    assert monitor.converged_at is None and len(monitor.history) >= 4


def test_a_class_too_small_to_solve_is_not_converged_yet():
    pca, monitor = ClassPCA(8, center=True), SubspaceConvergence(first=4)
    x = np.random.default_rng(3).normal(size=(6, 5))
    pca.partial_fit(x, np.array([0, 0, 0, 1, 1, 1]))  # 3 per class: no 4-dim subspace
    assert not monitor.check([pca], 6) and monitor.previous is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(tolerance=0.0), "tolerance"), (dict(tolerance=1.5), "tolerance"),
    (dict(first=0), "first"), (dict(growth=1.0), "growth"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SubspaceConvergence(**kwargs)



def _stream(monitor, x, y, batch=64):
    """Feeds `(x, y)` to a ClassPCA batch by batch; returns the samples read."""
    pca = ClassPCA(6, center=False)
    for start in range(0, len(y), batch):
        pca.partial_fit(x[start:start + batch], y[start:start + batch])
        if monitor.check([pca], start + batch):
            return start + batch
    return len(y)


def test_a_stream_sorted_by_class_is_read_until_its_last_class_arrives():
    # 3 classes of 3,000 samples in class order (a dataset read without shuffling): the
    # first check points see class 0 alone, and class 0 alone settles quickly.
    data = make_subspace_classes([2, 2, 2], n_features=12, n_per_class=3000, noise=0.2, seed=1)
    order = np.argsort(data.y, kind="stable")
    x, y = data.x[order], data.y[order]
    assert _stream(SubspaceConvergence(first=64), x, y) < 3000  # the trap
    assert _stream(SubspaceConvergence(first=64, n_classes=3), x, y) > 6000


def test_a_class_new_since_the_last_check_point_is_a_change_of_one():
    data = make_subspace_classes([2, 2], n_features=12, n_per_class=400, noise=0.2, seed=1)
    pca, monitor = ClassPCA(4, center=False), SubspaceConvergence(tolerance=1e-9, first=100)
    zeros, ones = data.x[data.y == 0], data.x[data.y == 1]
    pca.partial_fit(zeros[:200], np.zeros(200, int))
    assert not monitor.check([pca], 200)
    pca.partial_fit(zeros[200:], np.zeros(200, int))
    pca.partial_fit(ones, np.ones(400, int))
    assert not monitor.check([pca], 800)
    # class 0 barely moved (change near 0), class 1 is new (1): the mean is about 1/2
    assert monitor.history[-1][1] == pytest.approx(0.5, abs=0.05)


def test_n_classes_known_and_all_seen_converges_as_before():
    data = make_subspace_classes([2, 2, 2], n_features=12, n_per_class=4000, noise=0.2, seed=1)
    order = np.random.default_rng(0).permutation(len(data.y))
    x, y = data.x[order], data.y[order]
    with_count = SubspaceConvergence(tolerance=1e-3, first=64, n_classes=3)
    without = SubspaceConvergence(tolerance=1e-3, first=64)
    assert _stream(with_count, x, y) == _stream(without, x, y) < len(y)


def test_a_check_holds_one_class_matrix_at_a_time():
    # `samples="auto"` kept every class's (d, d) matrix, twice (this check point's and
    # the previous one's): 2·K·d² float64, beyond `memory_limit` and a sketch's budget.
    import weakref

    rng = np.random.default_rng(0)
    y = np.arange(2000) % 20
    x = rng.normal(size=(2000, 12)) * (1 + 3 * np.eye(12)[y % 12])
    pca = ClassPCA(20).fit(x, y)
    real, live = pca.class_matrix, []

    def tracked(label):
        assert all(ref() is None for ref in live), "an earlier class matrix is still held"
        matrix = real(label)
        live.append(weakref.ref(matrix))
        return matrix

    pca.class_matrix = tracked
    monitor = SubspaceConvergence(first=1)
    assert not monitor.check([pca], 2000)  # the first check point: nothing to compare
    assert monitor.check([pca], 4000)  # the same statistics: no change
    assert monitor.history == [[4000, 0.0]] and len(live) == 40


def test_no_eigen_solve_at_a_check_point_that_cannot_lead_to_convergence(monkeypatch):
    # 50 classes arriving one by one: while classes are missing, the next check point
    # counts each of them as a change of 1 (at least 1/50 > tolerance), so no check
    # point before the last class has come needs the class subspaces.
    import keras_classpca.core.convergence as convergence

    solves = []
    real = convergence.leading_eigenspace
    monkeypatch.setattr(convergence, "leading_eigenspace",
                        lambda matrix, m: solves.append(m) or real(matrix, m))
    rng = np.random.default_rng(0)
    n, k = 12_000, 50
    y = np.minimum(rng.integers(0, k, n), np.arange(n) // 100)  # class c from sample 100·c
    x = rng.normal(size=(n, 12)) * (1 + 3 * np.eye(12)[y % 12])
    last_arrival = int(np.flatnonzero(y == k - 1)[0])
    monitor = SubspaceConvergence(first=64, growth=1.5, n_classes=k)
    pca, checks = ClassPCA(50, center=False), []
    for start in range(0, n, 64):
        pca.partial_fit(x[start:start + 64], y[start:start + 64])
        before = len(solves)
        if monitor.check([pca], start + 64):
            break
        if len(solves) > before:
            checks.append(start + 64)
    assert checks and min(checks) > last_arrival  # skipped every check point before
    assert monitor.converged_at is not None and monitor.converged_at > last_arrival


def test_classes_held_as_rows_check_as_their_matrices(monkeypatch):
    """Wide inputs with few rows per class: the check points take each class's
    subspace from its rows' Gram, with the same changes as from its d x d matrix."""
    from keras_classpca.core import statistics as module

    rng = np.random.default_rng(0)
    d, y = 640, np.arange(450) % 3
    bases = rng.normal(size=(3, 8, d))
    x = np.einsum("nk,nkd->nd", rng.normal(size=(450, 8)) * np.geomspace(4, 1, 8),
                  bases[y]) + 0.05 * rng.normal(size=(450, d))

    def histories():
        pca, monitor = ClassPCA(6), SubspaceConvergence(tolerance=1e-9, first=60)
        for start in range(0, len(y), 30):
            pca.partial_fit(x[start:start + 30], y[start:start + 30])
            monitor.check([pca], start + 30)
        return np.array(monitor.history), sorted(pca.statistics_._held)

    held, held_classes = histories()
    monkeypatch.setattr(module, "HELD_MIN_FEATURES", 10**9)
    dense, dense_classes = histories()
    assert held_classes == [0, 1, 2] and dense_classes == []
    assert len(held) == len(dense) >= 2
    np.testing.assert_allclose(held, dense, rtol=1e-7, atol=1e-12)
    # the factored form of a matrix gives the same change as the matrix
    basis = np.linalg.qr(rng.normal(size=(d, 5)))[0]
    small = np.diag([5.0, 3.0, 2.0, 1.0, 0.5])
    matrix = basis @ small @ basis.T
    previous, current = basis[:, [0, 2]], basis[:, :2]
    assert captured_variance_change((basis, small), previous, current) == pytest.approx(
        captured_variance_change(matrix, previous, current), rel=1e-12)
