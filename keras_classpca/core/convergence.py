"""When have a layer's class statistics seen enough samples? `samples="auto"`.

The method's promise is that a fraction of the data fixes the class subspaces. So the
statistics are streamed in chunks and, at sample counts growing geometrically
(`first`, `growth × first`, ...), each class's leading eigenspace is computed from
what was seen so far — as many directions as the layer gives each class,
`ceil(n_components / n_classes)` — and compared with that of the previous check
point.

The change of a class is measured on its current matrix `C` (covariance or second
moment): `1 − tr(P_prev C) / tr(P_curr C)`, where `P` projects onto the class's
leading eigenspace — the share of the variance the best span captures that the
previous span misses. It is zero when the spans agree, and, unlike the principal
angles themselves, it does not count rotations inside a (nearly) degenerate
eigenspace, which change nothing the layer can express. The layer's change is the
mean over classes (the worst group for grouped convolutions); streaming stops once it
is below `tolerance`. A class first seen since the previous check point counts as a
change of 1 (all of its subspace is new), and with `n_classes` known the stream never
stops before every class has been seen: a stream sorted by class (a dataset read
without shuffling) is read on until its last class arrives. It measures the
statistics, not the solve: which class gets which near-duplicate filter
(deduplication) can flip between check points forever and is not a reason to read
more data.
"""

import math

import numpy as np

from keras_classpca.core.class_pca import _leading_eigenpairs, blas_threads_for

# Measured on Fashion-MNIST and digits (docs/benchmarks.md, `bench_samples`).
DEFAULT_TOLERANCE = 0.01
DEFAULT_FIRST = 1024
DEFAULT_GROWTH = 2.0


def captured_variance_change(matrix, previous, current):
    """`1 − tr(P_prev C) / tr(P_curr C)` for one class (see the module doc).

    Args:
        matrix: the class's current `(d, d)` matrix `C`, or `(basis, small)` with
            `C = basis @ small @ basis.T` (`ClassPCA.class_factor`).
        previous, current: orthonormal bases `(d, m)` of its leading eigenspace at
            the previous and at the current check point.

    Example:

    >>> import numpy as np
    >>> e, c = np.eye(3), np.diag([4.0, 1.0, 1.0])
    >>> captured_variance_change(c, e[:, :1], e[:, :1])
    0.0
    >>> captured_variance_change(c, e[:, 1:2], e[:, :1])
    0.75
    """
    best = _captured_variance(matrix, current)
    if best <= 0:
        return 0.0
    kept = _captured_variance(matrix, previous)
    return max(0.0, 1.0 - kept / best)


def _captured_variance(matrix, basis):
    """`tr(basisᵀ C basis)` for `C` given as in `captured_variance_change`."""
    if isinstance(matrix, tuple):
        factor_basis, small = matrix[:2]
        projected = factor_basis.T @ basis
        return float(np.sum(projected * (small @ projected)))
    return float(np.trace(basis.T @ matrix @ basis))


def leading_eigenspace(matrix, m):
    """Orthonormal `(d, m)` basis of the `m` leading eigenvectors of a symmetric matrix,
    computed as `ClassPCA` solves: ARPACK's Lanczos where it is faster (wide matrices,
    few vectors: 2x faster at d = 3,072, m = 26, than LAPACK's `syevr`), else `syevr`."""
    m = max(1, min(int(m), len(matrix)))
    return _leading_eigenpairs(matrix, m)[1]


class SubspaceConvergence:
    """Decides when a stream of class statistics may stop (`samples="auto"`).

    Call `check(class_pcas, seen)` after each batch with the layer's `ClassPCA`s (one
    per group) and the samples seen; at the check points it computes each class's
    leading eigenspace and returns True once the mean change since the previous check
    point (`captured_variance_change`) is below `tolerance`.

    Args:
        tolerance: the largest change (see `captured_variance_change`) between two
            check points that counts as converged (default `DEFAULT_TOLERANCE`, 0.01).
        first: samples at the first check point (`DEFAULT_FIRST`, 1,024).
        growth: each check point is this many times the previous one (2).
        n_classes: the number of classes, if known: not converged before all of them
            have been seen.

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

    def __init__(self, tolerance=None, first=None, growth=None, n_classes=None):
        # None: the module's defaults, read at construction (a benchmark may change them).
        tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
        first = DEFAULT_FIRST if first is None else first
        growth = DEFAULT_GROWTH if growth is None else growth
        if not 0 < tolerance < 1:
            raise ValueError(f"`tolerance` must be in (0, 1); received {tolerance!r}.")
        if first < 1 or growth <= 1:
            raise ValueError(
                f"`first` must be >= 1 and `growth` > 1; received {first!r}, {growth!r}."
            )
        self.tolerance = tolerance
        self.growth = growth
        self.n_classes = n_classes
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
        if self.n_classes is not None:
            missing = self.n_classes - min(len(class_pca.classes_) for class_pca in class_pcas)
            if missing >= self.tolerance * self.n_classes:
                # The classes still missing will each count as a change of 1 at the next
                # check point, so it cannot converge there: the subspaces it would
                # compare with are not computed (a thousand eigen-solves per check).
                self.previous = None
                return False
        previous = self.previous or [None] * len(class_pcas)
        with blas_threads_for(max(class_pca.n_features_in_ for class_pca in class_pcas)):
            results = [self._class_spaces(class_pca, before)
                       for class_pca, before in zip(class_pcas, previous)]
        if any(spaces is None for spaces, _ in results):
            return False  # a class has too few samples to have a subspace yet
        current = [spaces for spaces, _ in results]
        if self.n_classes is not None and any(len(now) < self.n_classes for now in current):
            self.previous = current
            return False  # classes not seen yet: the stream may be sorted by class
        if self.previous is not None:
            change = max(float(np.mean(changes or [1.0])) for _, changes in results)
            self.history.append([int(seen), change])
            if change < self.tolerance:
                self.converged_at = int(seen)
                return True
        self.previous = current
        return False

    @staticmethod
    def _class_spaces(class_pca, previous):
        """`({label: leading eigenspace basis}, [change per class since `previous`])`
        of one `ClassPCA`'s statistics; `(None, None)` while a class has too few
        samples. One class's `(d, d)` matrix at a time: only the bases are kept (a
        thousand classes of 3x3x256 patches would hold 42 GB of matrices)."""
        labels = class_pca.classes_
        components = class_pca.n_components or class_pca.n_features_in_
        per_class = math.ceil(components / max(len(labels), 1))
        if any(count <= per_class for count in class_pca.n_samples_seen_):
            return None, None
        spaces, changes = {}, []
        for label in labels:
            factor = class_pca.class_factor(label)
            if factor is not None:  # few rows against d: an m x m eigen-problem
                factor_basis, small, _ = factor
                vectors = np.linalg.eigh(small)[1][:, ::-1][:, :per_class]
                matrix, basis = (factor_basis, small), factor_basis @ vectors
            else:
                matrix = class_pca.class_matrix(label)
                basis = leading_eigenspace(matrix, per_class)
            if previous is not None:
                changes.append(  # a class new since the last check has moved all the way
                    captured_variance_change(matrix, previous[int(label)], basis)
                    if int(label) in previous else 1.0)
            spaces[int(label)] = basis
            del matrix
        return spaces, changes
