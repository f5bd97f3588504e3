"""`samples="auto"`'s stopping rule (keras_classpca.core.convergence), NumPy only."""

from collections import namedtuple

import numpy as np
import pytest

from keras_classpca.core.class_pca import ClassPCA
from keras_classpca.core.convergence import SubspaceConvergence, captured_variance_change
from keras_classpca.core.subspace import subspace_overlap
from tests.conftest import make_subspace_classes

pytestmark = pytest.mark.backend_independent

Solution = namedtuple("Solution", "components component_classes")


def test_change_ignores_rotations_inside_a_degenerate_eigenspace():
    # Class 0's matrix is isotropic in the plane (e0, e1): any basis of the plane is as
    # good, so a rotation within it is no change, while swapping in e2 is.
    e = np.eye(3)
    matrices = {0: np.diag([2.0, 2.0, 0.5])}
    theta = 0.7
    rotated = np.column_stack([np.cos(theta) * e[:, 0] + np.sin(theta) * e[:, 1],
                               -np.sin(theta) * e[:, 0] + np.cos(theta) * e[:, 1]])
    plane = Solution(e[:, :2], [0, 0])
    assert captured_variance_change(matrices, plane, Solution(rotated, [0, 0])) == pytest.approx(0)
    half = Solution(e[:, [0, 2]], [0, 0])
    # the previous span captures 2.5 of the 4.0 the current (best) one does
    assert captured_variance_change(matrices, half, plane) == pytest.approx(1 - 2.5 / 4.0)


def test_change_is_the_mean_over_classes_and_skips_fisher_directions():
    e = np.eye(4)
    matrices = {0: np.diag([3.0, 1.0, 1.0, 1.0]), 1: np.diag([1.0, 3.0, 1.0, 1.0])}
    previous = Solution(e[:, [0, 2, 3]], [0, 1, -1])  # class 1 had a poor direction
    current = Solution(e[:, [0, 1, 2]], [0, 1, -1])
    assert captured_variance_change(matrices, previous, current) == pytest.approx((0 + 2 / 3) / 2)


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
    pca.partial_fit(x, np.array([0, 0, 0, 1, 1, 1]))  # 3 per class cannot give 4 centred
    assert not monitor.check([pca], 6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(tolerance=0.0), "tolerance"), (dict(tolerance=1.5), "tolerance"),
    (dict(first=0), "first"), (dict(growth=1.0), "growth"),
])
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SubspaceConvergence(**kwargs)
