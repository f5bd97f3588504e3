"""When have a layer's class statistics seen enough samples? `samples="auto"`.

The method's promise is that a fraction of the data fixes the class subspaces. So the
statistics are streamed in chunks and, at sample counts growing geometrically
(`first`, `growth × first`, ...), the layer is solved from what was seen so far and
each class's filters are compared with those of the previous check point.

The change of a class is measured on its current matrix `C` (covariance or second
moment): `1 − tr(P_prev C) / tr(P_curr C)`, where `P` projects onto the span of the
class's filters — the share of the variance the best span captures that the previous
span misses. It is zero when the spans agree, and, unlike the principal angles
themselves, it does not count rotations inside a (nearly) degenerate eigenspace,
which change no output the layer can give. The layer's change is the mean over
classes (the worst group for grouped convolutions); streaming stops once it is below
`tolerance`.
"""

import numpy as np

from keras_classpca.core.subspace import orthonormal_basis

# Measured on Fashion-MNIST and digits (docs/benchmarks.md, `bench_default`).
DEFAULT_TOLERANCE = 0.01
DEFAULT_FIRST = 1024
DEFAULT_GROWTH = 2.0


def captured_variance_change(matrices, previous, current):
    """Mean over classes of `1 − tr(P_prev C) / tr(P_curr C)` (see the module doc).

    Args:
        matrices: `{label: C}`, each class's current `(d, d)` matrix.
        previous, current: `Solution`s (anything with `components` `(d, m)` and
            `component_classes` `(m,)`); columns of other labels (Fisher directions,
            class -1) are ignored.

    Example:

    >>> import numpy as np
    >>> from collections import namedtuple
    >>> S = namedtuple("S", "components component_classes")
    >>> e, c = np.eye(3), {0: np.diag([4.0, 1.0, 1.0])}
    >>> captured_variance_change(c, S(e[:, :1], [0]), S(e[:, :1], [0]))
    0.0
    >>> captured_variance_change(c, S(e[:, 1:2], [0]), S(e[:, :1], [0]))
    0.75
    """
    changes = []
    prev_classes = np.asarray(previous.component_classes)
    curr_classes = np.asarray(current.component_classes)
    for label, matrix in matrices.items():
        best = _captured(matrix, current.components[:, curr_classes == label])
        if best <= 0:
            continue
        kept = _captured(matrix, previous.components[:, prev_classes == label])
        changes.append(max(0.0, 1.0 - kept / best))
    return float(np.mean(changes)) if changes else 0.0


def _captured(matrix, vectors):
    if not vectors.shape[1] or not np.any(vectors):
        return 0.0
    basis = orthonormal_basis(vectors)
    return float(np.trace(basis.T @ matrix @ basis))


class SubspaceConvergence:
    """Decides when a stream of class statistics may stop (`samples="auto"`).

    Call `check(class_pcas, seen)` after each batch with the layer's `ClassPCA`s (one
    per group) and the samples seen; it solves only at the check points and returns
    True once the change since the previous check point (`captured_variance_change`)
    is below `tolerance`.

    Args:
        tolerance: the largest change (1 − overlap, see `class_subspace_change`)
            between two check points that counts as converged.
        first: samples at the first check point.
        growth: each check point is this many times the previous one.

    Attributes:
        history: `[samples, change]` at every check point after the first.
        converged_at: samples seen when it converged (None while not converged).

    Example:

    >>> import numpy as np
    >>> from keras_classpca.core.class_pca import ClassPCA
    >>> rng = np.random.default_rng(0)
    >>> pca, monitor = ClassPCA(4), SubspaceConvergence(first=200)
    >>> for start in range(0, 20_000, 100):
    ...     y = rng.integers(0, 2, 100)
    ...     x = rng.normal(size=(100, 6)) * (1 + 4 * np.eye(6)[y])
    ...     _ = pca.partial_fit(x, y)
    ...     if monitor.check([pca], start + 100):
    ...         break
    >>> monitor.converged_at < 20_000
    True
    """

    def __init__(self, tolerance=DEFAULT_TOLERANCE, first=DEFAULT_FIRST, growth=DEFAULT_GROWTH):
        if not 0 < tolerance < 1:
            raise ValueError(f"`tolerance` must be in (0, 1); received {tolerance!r}.")
        if first < 1 or growth <= 1:
            raise ValueError(
                f"`first` must be >= 1 and `growth` > 1; received {first!r}, {growth!r}."
            )
        self.tolerance = tolerance
        self.growth = growth
        self.next_check = first
        self.previous = None
        self.history = []
        self.converged_at = None

    def check(self, class_pcas, seen):
        """True when the statistics after `seen` samples count as converged."""
        if self.converged_at is not None:
            return True
        if seen < self.next_check:
            return False
        while self.next_check <= seen:
            self.next_check = int(np.ceil(self.next_check * self.growth))
        try:
            current = [class_pca.solve() for class_pca in class_pcas]
        except ValueError:  # too few samples of some class to solve yet
            return False
        if self.previous is not None:
            change = max(
                captured_variance_change(
                    {label: pca.class_matrix(label) for label in pca.classes_}, p, c)
                for pca, p, c in zip(class_pcas, self.previous, current)
            )
            self.history.append([int(seen), change])
            if change < self.tolerance:
                self.converged_at = int(seen)
                return True
        self.previous = current
        return False
