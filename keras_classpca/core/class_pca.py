"""`ClassPCA`: class-conditional principal components, streamed in float64.

The estimator behind every solved layer (Dehmamy, Rohani & Katsaggelos, arXiv
1703.04757): a converged low layer of a network is close to the leading eigenvectors of
the per-class second-moment (or covariance) matrix of its own input, a few filters per
class. This module is plain NumPy in the style of scikit-learn (`fit` returns `self`,
learned state ends in `_`); the Keras layers sit on top of it.
"""

import collections
import contextlib

import numpy as np
from threadpoolctl import ThreadpoolController

from keras_classpca.core.data_adapter import as_standard_float, iter_batches

ALLOCATIONS = ("equal", "adaptive")
SCALINGS = ("standardize", "unit", "whiten")
OFFSETS = ("center", "zero")

# Eigenvalues below this share of a class's trace count as zero: the class's spectrum
# is exhausted there and its eigenvectors are arbitrary directions of the null space.
EXHAUSTED_SHARE = 1e-10
# Class matrices up to this size are eigen-decomposed with one BLAS thread: at these
# sizes a second thread gains little, and on a busy machine OpenBLAS' spinning threads
# make `eigh` many times slower (benchmarks/bench_solve_threads.py).
SINGLE_THREAD_EIGH_MAX_DIM = 1024

Solution = collections.namedtuple(
    "Solution",
    [
        "components",  # (d, n) unit eigenvectors, grouped by class, descending within.
        "component_classes",  # (n,) class label each component came from.
        "explained_variance",  # (n,) eigenvalue of each component in its class.
        "explained_variance_ratio",  # (n,) eigenvalue / trace of its class matrix.
        "kernel",  # (d, n) components after `scaling`.
        "bias",  # (n,) per `offset`.
    ],
)


def _check_finite(x, name):
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite values.")


def labels_to_int(y, n_classes=None):
    """Validate labels (integer, or one-hot rows) and return them as an int64 vector.

    Raises a `ValueError` naming `y` for non-integer, negative or out-of-range labels,
    and for one-hot rows that are not exactly one-hot.
    """
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        if n_classes is not None and y.shape[1] != n_classes:
            raise ValueError(
                f"`y` is one-hot with {y.shape[1]} columns but n_classes={n_classes}."
            )
        if y.size and not (np.all((y == 0) | (y == 1)) and np.all(y.sum(axis=1) == 1)):
            raise ValueError(
                "`y` has 2 dimensions but is not one-hot: every row must hold a single 1 "
                "and zeros elsewhere (soft labels are not supported)."
            )
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim != 1:
        raise ValueError(
            f"`y` must be a vector of integer labels or one-hot rows; received shape {y.shape}."
        )
    if y.dtype.kind not in "biuf":
        raise ValueError(f"`y` must hold integer class labels; received dtype {y.dtype}.")
    if y.dtype.kind == "f":
        _check_finite(y, "y")
        if np.any(y != np.round(y)):
            raise ValueError("`y` must hold integer class labels; received non-integer values.")
    labels = y.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"`y` holds negative labels (min {labels.min()}); labels must be >= 0.")
    if n_classes is not None and labels.size and labels.max() >= n_classes:
        raise ValueError(
            f"`y` holds label {labels.max()}, out of range for n_classes={n_classes} "
            f"(labels must lie in [0, {n_classes - 1}])."
        )
    return labels


class _Moments:
    """Per-class count, sum and second moment, all float64: O(K·d²) memory."""

    def __init__(self, n_features):
        self.n_features = n_features
        self.count = {}
        self.total = {}
        self.outer = {}

    # Rows per step of `add`: at least CHUNK_ROWS, or as many as fit in CHUNK_BYTES of
    # float64. The step bounds the temporary sorted float64 copy; BLAS syrk is faster
    # on longer class blocks, so a step is made as long as that bound allows.
    CHUNK_ROWS = 8192
    CHUNK_BYTES = 64 << 20
    # Labels already grouped in runs this long on average (a one-class batch, data
    # sorted by class, the patches of one image) are used in place: no sort, and no
    # copy for float64 input. Shorter runs are sorted into one block per class.
    MIN_RUN_ROWS = 512

    def _slot(self, label):
        if label not in self.count:
            self.count[label] = 0
            self.total[label] = np.zeros(self.n_features)
            self.outer[label] = np.zeros((self.n_features, self.n_features))

    def add(self, x, labels):
        step = max(self.CHUNK_ROWS, self.CHUNK_BYTES // (8 * max(1, self.n_features)))
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            chunk_labels = labels[start : start + step]
            run_starts = np.flatnonzero(chunk_labels[1:] != chunk_labels[:-1]) + 1
            if len(chunk_labels) >= self.MIN_RUN_ROWS * (len(run_starts) + 1):
                starts = np.concatenate([[0], run_starts])
                block_labels = chunk_labels[starts]
            else:
                order = np.argsort(chunk_labels, kind="stable")
                chunk = np.take(chunk, order, axis=0)
                block_labels, starts = np.unique(chunk_labels[order], return_index=True)
            chunk = chunk.astype(np.float64, copy=False)
            bounds = starts.tolist() + [len(chunk)]
            for i, label in enumerate(block_labels.tolist()):
                block = chunk[bounds[i] : bounds[i + 1]]
                self._slot(label)
                self.count[label] += len(block)
                self.total[label] += block.sum(axis=0)
                # `a.T @ a` on one buffer lets NumPy call BLAS syrk (half a GEMM's work).
                self.outer[label] += block.T @ block

    def merge(self, other):
        for label in other.count:
            self._slot(label)
            self.count[label] += other.count[label]
            self.total[label] += other.total[label]
            self.outer[label] += other.outer[label]

    def copy(self):
        twin = _Moments(self.n_features)
        twin.count = dict(self.count)
        twin.total = {k: v.copy() for k, v in self.total.items()}
        twin.outer = {k: v.copy() for k, v in self.outer.items()}
        return twin


def _batch_moments(x, labels):
    """The statistics of one batch; raises for NaN/inf before anything is merged.

    Checking the batch's sums and squared norms instead of every entry is exact for
    NaN and infinities (they propagate) and also catches values whose squares overflow.
    """
    moments = _Moments(x.shape[1])
    moments.add(x, labels)
    for label in moments.count:
        if not (
            np.all(np.isfinite(moments.total[label]))
            and np.all(np.isfinite(np.diagonal(moments.outer[label])))
        ):
            _check_finite(x, "x")  # names how many entries are bad
            raise ValueError("`x` holds values too large to square in float64.")
    return moments


_blas_controller = None


def _one_blas_thread():
    """Context manager: BLAS libraries limited to one thread, restored on exit."""
    global _blas_controller
    if _blas_controller is None:  # scanning the loaded libraries costs milliseconds: once
        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def _spectrum(matrix):
    """(eigenvalues, eigenvectors, variance shares) of a symmetric matrix, largest first."""
    values, vectors = np.linalg.eigh(matrix)
    values = np.clip(values[::-1], 0.0, None)
    vectors = _fix_signs(vectors[:, ::-1])
    trace = values.sum()
    shares = values / trace if trace > 0 else np.zeros_like(values)
    return values, vectors, shares


def _fix_signs(vectors):
    """Make the largest-magnitude entry of every column positive (like `svd_flip`)."""
    rows = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[rows, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


class ClassPCA:
    """Class-conditional principal components of streamed `(x, y)` data.

    For each class `c` it accumulates, in float64 and batch by batch, the count, the sum
    and the second moment of the samples; memory is O(K·d²) whatever the number of
    samples. Solving takes the leading eigenvectors of each class's matrix (the
    uncentered second moment E[x xᵀ | c], or the covariance when `center=True`) and
    allocates `n_components` of them across the classes.

    Allocation (`allocation=`):

    - `"equal"`: `n_components // K` vectors per class; the `n_components % K` remaining
      slots go, one each, to the classes whose next eigenvalue share (eigenvalue /
      trace of the class matrix) is largest. A vector whose |cosine| with an already
      kept vector of another class exceeds `dedup_threshold` is skipped and the class's
      next vector is taken instead.
    - `"adaptive"` (the authors' rule): each class keeps its leading vectors while their
      cumulative eigenvalue share stays within `variance_share` (at least one per
      class); near-duplicates across classes (|cosine| > `dedup_threshold`, e.g. the DC
      filter every class shares) are dropped. With `n_components=None` that is the
      result; with a fixed `n_components` the kept vectors of largest share are used
      and missing slots are filled as below.

    When a class's spectrum is exhausted (its remaining eigenvalues are below
    `1e-10` of its trace, so the vectors would be arbitrary null-space directions), its
    remaining slots go to the other classes' next vectors in order of eigenvalue share.
    Deduplication is a preference, not a limit: when no distinct vector is left (a
    layer with more filters than its patches have dimensions), the skipped
    near-duplicates fill the remaining slots, largest share first. Only when fewer
    than `n_components` non-degenerate vectors exist at all does a `ValueError` say
    how many the data can give.

    Each class matrix is eigen-decomposed with `np.linalg.eigh`; up to
    `d = SINGLE_THREAD_EIGH_MAX_DIM` (1024) with one BLAS thread, which avoids the
    10-100x stalls of multithreaded OpenBLAS on a busy machine at the price of up to
    ~1.4x on an idle one (measured in docs/benchmarks.md, bench_solve_threads).

    The fitted layer weights (`kernel_`, `bias_`) are the components with two more
    choices applied:

    - `scaling`: `"standardize"` (default) scales each component so that its output has
      unit variance over all the data; `"unit"` keeps unit-norm eigenvectors (the
      authors' code); `"whiten"` divides by the square root of the class eigenvalue.
    - `offset`: `"center"` (default) sets `bias_ = -kernel_ᵀ mean_` so that the output
      has zero mean over the data; `"zero"` leaves no bias (the authors' code).

    Defaults (`center=True`, `scaling="standardize"`, `offset="center"`) follow the
    measurements in `docs/benchmarks.md`: centering and standardised outputs are what
    keep solved layers within reach of SGD.

    Args:
        n_components: number of components (filters / units) to produce. Required for
            `allocation="equal"`; `None` with `"adaptive"` keeps what the rule keeps.
        center: eigen-decompose the class covariance (True) or the uncentered second
            moment (False).
        allocation: `"equal"` or `"adaptive"`, see above.
        scaling: `"standardize"`, `"unit"` or `"whiten"`.
        offset: `"center"` or `"zero"`.
        variance_share: cumulative eigenvalue share per class for `"adaptive"`.
        dedup_threshold: |cosine| above which a vector counts as a duplicate of one kept
            from another class; `None` disables deduplication.
        n_classes: the number of classes, if known; labels must then lie in
            `[0, n_classes)` and every class must have samples.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(600, 8)), np.repeat([0, 1, 2], 200)
    >>> pca = ClassPCA(6).fit(x, y)
    >>> pca.components_.shape, pca.kernel_.shape, pca.classes_.tolist()
    ((8, 6), (8, 6), [0, 1, 2])
    """

    def __init__(
        self,
        n_components=None,
        *,
        center=True,
        allocation="equal",
        scaling="standardize",
        offset="center",
        variance_share=0.95,
        dedup_threshold=0.9,
        n_classes=None,
    ):
        self.n_components = n_components
        self.center = center
        self.allocation = allocation
        self.scaling = scaling
        self.offset = offset
        self.variance_share = variance_share
        self.dedup_threshold = dedup_threshold
        self.n_classes = n_classes
        self._check_params()
        self._moments = None
        self._solutions = {}

    # ------------------------------------------------------------------ parameters
    def _check_params(self):
        if self.n_components is not None and (
            not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1
        ):
            raise ValueError(
                f"`n_components` must be a positive integer or None; received {self.n_components!r}."
            )
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"`allocation` must be one of {ALLOCATIONS}; received {self.allocation!r}.")
        if self.scaling not in SCALINGS:
            raise ValueError(f"`scaling` must be one of {SCALINGS}; received {self.scaling!r}.")
        if self.offset not in OFFSETS:
            raise ValueError(f"`offset` must be one of {OFFSETS}; received {self.offset!r}.")
        if not isinstance(self.center, (bool, np.bool_)):
            raise TypeError(f"`center` must be True or False; received {self.center!r}.")
        if not 0.0 < float(self.variance_share) <= 1.0:
            raise ValueError(f"`variance_share` must lie in (0, 1]; received {self.variance_share!r}.")
        if self.dedup_threshold is not None and not 0.0 < float(self.dedup_threshold) <= 1.0:
            raise ValueError(
                f"`dedup_threshold` must lie in (0, 1] or be None; received {self.dedup_threshold!r}."
            )
        if self.n_classes is not None and (
            not isinstance(self.n_classes, (int, np.integer)) or self.n_classes < 1
        ):
            raise ValueError(f"`n_classes` must be a positive integer or None; received {self.n_classes!r}.")

    def get_params(self):
        """The constructor arguments, as a dict (scikit-learn style)."""
        return {
            "n_components": self.n_components,
            "center": self.center,
            "allocation": self.allocation,
            "scaling": self.scaling,
            "offset": self.offset,
            "variance_share": self.variance_share,
            "dedup_threshold": self.dedup_threshold,
            "n_classes": self.n_classes,
        }

    # ------------------------------------------------------------------ accumulation
    def _validated_batch(self, x, y, n_features):
        x = as_standard_float(x)  # bfloat16 (mixed precision) -> float32
        if x.ndim != 2:
            raise ValueError(
                f"`x` must be 2-D (n_samples, n_features); received shape {x.shape}. "
                "Flatten samples (or extract conv patches) first."
            )
        if n_features is not None and x.shape[1] != n_features:
            raise ValueError(
                f"`x` has {x.shape[1]} features but this ClassPCA was fitted on {n_features}."
            )
        if x.dtype.kind not in "biuf":
            raise TypeError(f"`x` must be numeric; received dtype {x.dtype}.")
        labels = labels_to_int(y, self.n_classes)
        if len(labels) != len(x):
            raise ValueError(
                f"`x` and `y` must have the same number of samples; received {len(x)} and {len(labels)}."
            )
        return x, labels

    def partial_fit(self, x, y):
        """Add one batch to the statistics and return `self`.

        Invalid input raises before any state changes.
        """
        n_features = None if self._moments is None else self._moments.n_features
        x, labels = self._validated_batch(x, y, n_features)
        if not len(x):
            return self
        contribution = _batch_moments(x, labels)
        if self._moments is None:
            self._moments = contribution
        else:
            self._moments.merge(contribution)
        self._solutions = {}
        return self

    def fit(self, data, y=None, *, batch_size=None, steps=None, strategy=None):
        """Fit from scratch on `(x, y)` arrays, a `tf.data.Dataset`, or batches.

        Args:
            data: `x` (with `y`), `(x, y)`, a `tf.data.Dataset` of `(x, y)` batches
                (TFDS with `as_supervised=True`), a `keras.utils.PyDataset`, or any
                iterable of `(x, y)` batches. `x` is `(n_samples, n_features)`.
            y: labels when `data` is `x`: integers or one-hot rows.
            batch_size: rows per batch when slicing arrays.
            steps: use at most this many batches.
            strategy: a `tf.distribute.Strategy`: each replica accumulates the
                statistics of its shard, one all-reduce combines them (TensorFlow
                backend; needs `n_classes`; `data` a `tf.data.Dataset`, a dataset
                function or `(x, y)` arrays). See docs/distributed.md.

        Returns:
            `self`. On any error the previous state is kept.
        """
        if strategy is not None:
            from keras_classpca.distributed import fit_with_strategy

            return fit_with_strategy(
                self, data, y, strategy=strategy, batch_size=batch_size, steps=steps
            )
        moments = None
        for x_batch, y_batch in iter_batches(data, y, batch_size=batch_size, steps=steps):
            n_features = None if moments is None else moments.n_features
            x_batch, labels = self._validated_batch(x_batch, y_batch, n_features)
            contribution = _batch_moments(x_batch, labels)
            if moments is None:
                moments = contribution
            else:
                moments.merge(contribution)
        if moments is None:
            raise ValueError("`data` is empty: no samples to fit ClassPCA on.")
        previous = self._moments, self._solutions
        self._moments, self._solutions = moments, {}
        if self.n_components is not None or self.allocation == "adaptive":
            try:
                self.solve()  # surface errors (too few samples, ...) at fit time
            except ValueError:
                self._moments, self._solutions = previous
                raise
        return self

    def merge(self, other):
        """Add the statistics of another `ClassPCA` (e.g. a shard) and return `self`.

        The sum of shards' statistics equals one pass over all the data.
        """
        if not isinstance(other, ClassPCA):
            raise TypeError(f"`other` must be a ClassPCA; received {type(other).__name__}.")
        if other._moments is None:
            return self
        if self._moments is not None and other._moments.n_features != self._moments.n_features:
            raise ValueError(
                f"Cannot merge statistics over {other._moments.n_features} features into "
                f"{self._moments.n_features} features."
            )
        if self.n_classes is not None and max(other._moments.count) >= self.n_classes:
            raise ValueError(
                f"`other` holds label {max(other._moments.count)}, out of range for "
                f"n_classes={self.n_classes}."
            )
        if self._moments is None:
            self._moments = _Moments(other._moments.n_features)
        self._moments.merge(other._moments)
        self._solutions = {}
        return self

    # ------------------------------------------------------------------ solving
    def _require_fitted(self):
        if self._moments is None:
            raise ValueError(
                "This ClassPCA has no statistics yet: call `fit(x, y)` or `partial_fit(x, y)` first."
            )

    @property
    def is_fitted(self):
        """Whether statistics have been accumulated."""
        return self._moments is not None

    @property
    def classes_(self):
        self._require_fitted()
        if self.n_classes is not None:
            return np.arange(self.n_classes)
        return np.array(sorted(self._moments.count), dtype=np.int64)

    @property
    def n_features_in_(self):
        self._require_fitted()
        return self._moments.n_features

    @property
    def n_samples_seen_(self):
        """Samples seen per class, aligned with `classes_`."""
        self._require_fitted()
        return np.array([self._moments.count.get(int(c), 0) for c in self.classes_], dtype=np.int64)

    @property
    def mean_(self):
        """Mean over all samples (all classes)."""
        self._require_fitted()
        m = self._moments
        return sum(m.total.values()) / sum(m.count.values())

    @property
    def covariance_(self):
        """Covariance over all samples (all classes), float64 `(d, d)`."""
        self._require_fitted()
        m = self._moments
        n = sum(m.count.values())
        mean = self.mean_
        return sum(m.outer.values()) / n - np.outer(mean, mean)

    def class_matrix(self, label):
        """The matrix eigen-decomposed for one class (covariance or second moment)."""
        self._require_fitted()
        m = self._moments
        label = int(label)
        n = m.count.get(label, 0)
        if n == 0:
            raise ValueError(f"Class {label} has no samples.")
        matrix = m.outer[label] / n
        if self.center:
            class_mean = m.total[label] / n
            matrix = matrix - np.outer(class_mean, class_mean)
        return (matrix + matrix.T) / 2.0

    def _class_spectra(self):
        spectra = []
        small = self.n_features_in_ <= SINGLE_THREAD_EIGH_MAX_DIM
        with _one_blas_thread() if small else contextlib.nullcontext():
            for label in self.classes_.tolist():
                spectra.append(_spectrum(self.class_matrix(label)))
        return spectra

    def _quotas(self, n_components, spectra):
        classes = self.classes_
        counts = self.n_samples_seen_
        rank_loss = 1 if self.center else 0
        if self.allocation == "adaptive":
            quotas = []
            for label, count, (_, _, shares) in zip(classes, counts, spectra):
                if count <= rank_loss:
                    raise ValueError(
                        f"Class {label} has {count} sample(s); with center=True each class "
                        "needs at least 2 samples."
                    )
                cumulative = np.cumsum(shares)
                quotas.append(max(1, int(np.searchsorted(cumulative, self.variance_share, side="right"))))
            return quotas
        k = len(classes)
        base, remainder = divmod(n_components, k)
        quotas = [base] * k
        if remainder:
            # The remaining slots go to the classes whose next vector explains most.
            next_share = [spectra[i][2][base] if base < len(spectra[i][2]) else 0.0 for i in range(k)]
            for i in sorted(range(k), key=lambda i: (-next_share[i], i))[:remainder]:
                quotas[i] += 1
        for label, count, quota in zip(classes, counts, quotas):
            if quota and count - rank_loss < quota:
                raise ValueError(
                    f"Class {label} has {count} sample(s) but must supply {quota} "
                    f"component(s); needs at least {quota + rank_loss} "
                    f"(center={self.center}). Use more data, fewer components or "
                    "allocation='adaptive'."
                )
        return quotas

    def solve(self, n_components=None):
        """Solve for `n_components` (default: `self.n_components`) -> `Solution`.

        Pure function of the statistics: repeated calls give bit-identical results.
        """
        self._require_fitted()
        n_components = self.n_components if n_components is None else n_components
        if n_components is None and self.allocation == "equal":
            raise ValueError("`n_components` is required with allocation='equal'.")
        if n_components is not None and (
            not isinstance(n_components, (int, np.integer)) or n_components < 1
        ):
            raise ValueError(f"`n_components` must be a positive integer; received {n_components!r}.")
        key = None if n_components is None else int(n_components)
        if key not in self._solutions:
            self._solutions[key] = self._solve(key)
        return self._solutions[key]

    def _solve(self, n_components):
        classes = self.classes_
        d = self.n_features_in_
        if n_components is not None and n_components > len(classes) * d:
            raise ValueError(
                f"n_components={n_components} exceeds what {len(classes)} classes x {d} "
                f"features can give ({len(classes) * d})."
            )
        for label, count in zip(classes, self.n_samples_seen_):
            if count == 0:
                raise ValueError(f"Class {label} (of n_classes={self.n_classes}) has no samples.")
        spectra = self._class_spectra()
        quotas = self._quotas(n_components, spectra)
        threshold = self.dedup_threshold

        kept = []  # (class index, vector index)
        kept_vectors = np.zeros((d, 0))
        kept_classes = []

        def is_duplicate(ci, vector):
            if threshold is None or not kept:
                return False
            cosines = np.abs(vector @ kept_vectors)
            other = np.array(kept_classes) != ci
            return bool(np.any(cosines[other] > threshold))

        def take(ci, vi):
            nonlocal kept_vectors
            kept.append((ci, vi))
            kept_classes.append(ci)
            kept_vectors = np.column_stack([kept_vectors, spectra[ci][1][:, vi]])

        cursor = [0] * len(classes)  # next unexamined vector of each class
        for ci, quota in enumerate(quotas):
            shares = spectra[ci][2]
            taken = 0
            while taken < quota and cursor[ci] < d and shares[cursor[ci]] > EXHAUSTED_SHARE:
                vi = cursor[ci]
                cursor[ci] += 1
                if not is_duplicate(ci, spectra[ci][1][:, vi]):
                    take(ci, vi)
                    taken += 1

        if n_components is not None and len(kept) > n_components:
            # Adaptive rule kept more than asked: keep those of largest share.
            by_share = sorted(range(len(kept)), key=lambda j: (-spectra[kept[j][0]][2][kept[j][1]], j))
            kept = [kept[j] for j in sorted(by_share[:n_components])]
        # Exhausted or deduplicated classes hand their slots to the best next vectors.
        while n_components is not None and len(kept) < n_components:
            best = None
            for ci in range(len(classes)):
                while cursor[ci] < d and spectra[ci][2][cursor[ci]] > EXHAUSTED_SHARE:
                    if not is_duplicate(ci, spectra[ci][1][:, cursor[ci]]):
                        break
                    cursor[ci] += 1
                if cursor[ci] < d and spectra[ci][2][cursor[ci]] > EXHAUSTED_SHARE:
                    share = spectra[ci][2][cursor[ci]]
                    if best is None or share > best[0]:
                        best = (share, ci)
            if best is None:
                break
            ci = best[1]
            take(ci, cursor[ci])
            cursor[ci] += 1
        if n_components is not None and len(kept) < n_components:
            # No distinct vector is left (e.g. 32 filters over 9-dimensional 3x3
            # patches): the layer still needs its filters, so near-duplicates skipped
            # above are used after all, largest eigenvalue share first.
            taken = set(kept)
            spare = sorted(
                (
                    (-spectra[ci][2][vi], ci, vi)
                    for ci in range(len(classes))
                    for vi in range(d)
                    if (ci, vi) not in taken and spectra[ci][2][vi] > EXHAUSTED_SHARE
                ),
            )
            if len(kept) + len(spare) < n_components:
                raise ValueError(
                    f"The data can give only {len(kept) + len(spare)} distinct "
                    f"non-degenerate component(s); n_components={n_components} were "
                    "requested. Use fewer components or more varied data."
                )
            for _, ci, vi in spare[: n_components - len(kept)]:
                take(ci, vi)

        kept.sort()  # group by class, descending share within a class
        components = np.column_stack([spectra[ci][1][:, vi] for ci, vi in kept])
        variance = np.array([spectra[ci][0][vi] for ci, vi in kept])
        ratio = np.array([spectra[ci][2][vi] for ci, vi in kept])
        component_classes = classes[[ci for ci, _ in kept]]
        kernel = components * self._scales(components, variance)
        if self.offset == "center":
            bias = -(self.mean_ @ kernel)
        else:
            bias = np.zeros(kernel.shape[1])
        return Solution(components, component_classes, variance, ratio, kernel, bias)

    def _scales(self, components, variance):
        if self.scaling == "unit":
            return np.ones(components.shape[1])
        if self.scaling == "whiten":
            floor = 1e-12 * max(float(variance.max()), 1e-300)
            return 1.0 / np.sqrt(np.maximum(variance, floor))
        # "standardize": unit variance of each output over all the data.
        output_variance = np.einsum("ij,ik,kj->j", components, self.covariance_, components)
        floor = 1e-12 * max(float(output_variance.max()), 1e-300)
        return 1.0 / np.sqrt(np.maximum(output_variance, floor))

    # ------------------------------------------------------------------ fitted state
    @property
    def components_(self):
        """Unit eigenvectors `(n_features, n_components)`, grouped by class."""
        return self.solve().components

    @property
    def component_classes_(self):
        return self.solve().component_classes

    @property
    def explained_variance_(self):
        return self.solve().explained_variance

    @property
    def explained_variance_ratio_(self):
        return self.solve().explained_variance_ratio

    @property
    def n_components_(self):
        return self.solve().components.shape[1]

    @property
    def kernel_(self):
        """Layer kernel `(n_features, n_components)`: components after `scaling`."""
        return self.solve().kernel

    @property
    def bias_(self):
        """Layer bias `(n_components,)` per `offset`."""
        return self.solve().bias

    def transform(self, x):
        """`x @ kernel_ + bias_`: what the solved linear layer computes."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"`x` must have shape (n_samples, {self.n_features_in_}); received {x.shape}."
            )
        return x @ self.kernel_ + self.bias_

    def copy(self):
        """An independent copy with the same parameters and statistics."""
        twin = ClassPCA(**self.get_params())
        twin._moments = None if self._moments is None else self._moments.copy()
        return twin

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"ClassPCA({params})"
