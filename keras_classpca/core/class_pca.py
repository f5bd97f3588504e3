"""`ClassPCA`: class-conditional principal components of streamed data.

The estimator behind every solved layer (Dehmamy, Rohani & Katsaggelos, arXiv
1703.04757): a converged low layer of a network is close to the leading eigenvectors of
the per-class second-moment (or covariance) matrix of its own input, a few filters per
class. This module is plain NumPy in the style of scikit-learn: `__init__` only stores
its parameters, they are validated at `fit`, `fit` returns `self`, learned state ends
in `_` and exists only after fitting; the Keras layers sit on top of it. The statistics
it solves are a public `ClassStatistics` (`statistics_`, `from_statistics`).
"""

import collections
import contextlib
import functools
import heapq
import inspect
import numbers

import numpy as np
from threadpoolctl import ThreadpoolController

from keras_classpca._warnings import warn
from keras_classpca.core.data_adapter import (
    as_arrays,
    as_standard_float,
    iter_batches,
    readable_data,
)
from keras_classpca.core.directions import (
    discriminant_directions,
    fix_signs,
    sign_pair_columns,
)
from keras_classpca.core.sketch import ClassSketch, check_sketch_memory, sketch_nbytes
from keras_classpca.core.statistics import (
    PRODUCT_DTYPES,
    ClassStatistics,
    _is_backend_tensor,
    check_memory,
    format_bytes,
    memory_budget,
    statistics_nbytes,
)

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
# Only the leading eigenpairs are computed (`scipy.linalg.eigh(subset_by_index=...)`,
# LAPACK `syevr`) while they are fewer than this share of `d`; above it the full
# decomposition is as fast (measured in benchmarks/bench_accumulate.py: at d = 800 the
# leading 7 take 0.027 s against 0.075 s for all 800, at d = 2304 1.8 s against 4.5 s).
SUBSET_MAX_SHARE = 1 / 3
# From d = LANCZOS_MIN_DIM on, while k <= LANCZOS_MAX_SHARE * d, the leading pairs come
# from ARPACK's Lanczos (`scipy.sparse.linalg.eigsh`): 2-9x faster than syevr there
# (d = 800, k = 7: 11 ms against 26 ms; d = 2304: 83 ms against 0.75 s), slower below
# (d = 400, flat spectra). After LANCZOS_MAX_RESTARTS without convergence (spectra with
# fewer non-zero eigenvalues than asked) it falls back to syevr. Measured in
# benchmarks/bench_accumulate.py.
LANCZOS_MIN_DIM = 512
LANCZOS_MAX_SHARE = 1 / 16
LANCZOS_MAX_RESTARTS = 20
# Ritz pairs stop at a residual of LANCZOS_TOLERANCE times their eigenvalue, not at
# machine precision: the class matrices come from float32 products (relative error
# ~1e-7), so tighter pairs only refine rounding. It saves about a fifth of the
# products with the matrix on the flat spectra of conv patches (10 classes of the
# benchmark's conv2 workload: 342 -> 267 ms, subspaces equal to 1e-13).
LANCZOS_TOLERANCE = 1e-10
EIGEN_SOLVERS = ("exact", "randomized")
RANDOMIZED_OVERSAMPLING = 10
RANDOMIZED_ITERATIONS = 4
# sketch_size="auto": rows per class when exact statistics do not fit in memory —
# SKETCH_ROWS_PER_COMPONENT times the components a class gets, at least
# SKETCH_MIN_ROWS. Set on Fashion-MNIST pixels and the benchmark CNN's conv2 patches
# (bench_sketch: 32 rows left subspace residuals of 2e-2 and 0.27 there, 64 rows
# 6e-3 and 3e-2); the synthetic d = 2,304 case of bench_sketch was not used to set it.
SKETCH_MIN_ROWS = 64
SKETCH_ROWS_PER_COMPONENT = 8

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


class NotFittedError(ValueError, AttributeError):
    """A fitted attribute or method was used before `fit` (as scikit-learn's).

    A `ValueError` and an `AttributeError`, so that `hasattr(unfitted, "components_")`
    is False.
    """


class InvalidParameterError(ValueError, TypeError):
    """A constructor parameter has an invalid value (raised by `fit`, not `__init__`)."""


def _is_int(value):
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


def _is_real(value):
    return isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


# name -> (what is allowed, test). Checked by `fit`, `partial_fit` and `solve`, in the
# manner of scikit-learn's `_parameter_constraints`.
_PARAMETER_CONSTRAINTS = {
    "n_components": (
        "a positive integer or None",
        lambda v: v is None or (_is_int(v) and v >= 1),
    ),
    "center": ("True or False", lambda v: isinstance(v, (bool, np.bool_))),
    "allocation": (f"one of {ALLOCATIONS}", lambda v: isinstance(v, str) and v in ALLOCATIONS),
    "scaling": (f"one of {SCALINGS}", lambda v: isinstance(v, str) and v in SCALINGS),
    "offset": (f"one of {OFFSETS}", lambda v: isinstance(v, str) and v in OFFSETS),
    "variance_share": ("a number in (0, 1]", lambda v: _is_real(v) and 0.0 < float(v) <= 1.0),
    "dedup_threshold": (
        "a number in (0, 1] or None",
        lambda v: v is None or (_is_real(v) and 0.0 < float(v) <= 1.0),
    ),
    "n_classes": ("a positive integer or None", lambda v: v is None or (_is_int(v) and v >= 1)),
    "discriminant": (
        "a non-negative integer or 'auto'",
        lambda v: (isinstance(v, str) and v == "auto") or (_is_int(v) and v >= 0),
    ),
    "sign_pairs": (
        "True, False or 'spare'",
        lambda v: isinstance(v, (bool, np.bool_)) or (isinstance(v, str) and v == "spare"),
    ),
    "product_dtype": (
        f"one of {PRODUCT_DTYPES} or None",
        lambda v: v is None or (isinstance(v, str) and v in PRODUCT_DTYPES),
    ),
    "memory_limit": (
        "a positive number of bytes or None",
        lambda v: v is None or (_is_real(v) and float(v) > 0),
    ),
    "eigen_solver": (
        f"one of {EIGEN_SOLVERS}", lambda v: isinstance(v, str) and v in EIGEN_SOLVERS
    ),
    "sketch_size": (
        "'auto', None or a positive integer",
        lambda v: v is None or (isinstance(v, str) and v == "auto") or (_is_int(v) and v >= 1),
    ),
}


def _check_finite(x, name):
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise ValueError(f"`{name}` contains {bad} NaN or infinite values.")


class OvercompleteWarning(UserWarning):
    """More components asked than input features: some are combinations of others.
    Layer solves (`adapt`, `hybridize`) silence it: the layer's shape is the model's,
    and a trained kernel of that shape has the same rank."""


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
            binary = bool(np.all((y == 0) | (y == 1)))
            sums = y.sum(axis=1)
            if binary and np.any(sums > 1):
                why = " (rows with several 1s: multi-label targets, which class-PCA cannot use"
            elif binary:  # 0/1 entries, a row without its 1
                why = (f" (row {int(np.argmax(sums == 0))} is all zeros: a sample without "
                       "a class")
            else:
                why = " (soft or smoothed labels are not supported: pass the class ids"
            raise ValueError(
                "`y` has 2 dimensions but is not one-hot: every row must hold a single 1 "
                "and zeros elsewhere" + why
                + "; without class labels, solve label-free with `x` alone)."
            )
        return np.argmax(y, axis=1).astype(np.int64)
    if y.ndim != 1:
        raise ValueError(
            f"`y` must be a vector of integer labels or one-hot rows; received shape {y.shape}."
        )
    if y.dtype.kind not in "biuf":
        raise ValueError(
            f"Unknown label type: `y` must hold integer class labels; received dtype {y.dtype}."
            + (" Encode them as integers first, as the model's loss needs too: "
               "`np.unique(y, return_inverse=True)[1]`, scikit-learn's LabelEncoder, or "
               "a keras.layers.StringLookup in the data pipeline."
               if y.dtype.kind in "OUS" else "")
        )
    if y.dtype.kind == "f":
        _check_finite(y, "y")
        if np.any(y != np.round(y)):
            raise ValueError(
                "`y` must hold integer class labels; received non-integer values (a "
                "regression target? class-PCA needs classes: solve label-free with `x` "
                "alone, the PCA of each layer's input)."
            )
    # (floats compared as float64: float16 cannot hold int64's maximum, and the cast warns)
    largest = (float(y.max()) if y.dtype.kind == "f" else int(y.max())) if y.size else 0
    if y.dtype.kind in "uf" and largest >= 2**63:
        raise ValueError(
            f"`y` holds label {y.max()!r}, too large for a class index (labels must be "
            "integers 0, 1, ... up to the number of classes - 1)."
        )
    labels = y.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"`y` holds negative labels (min {labels.min()}); labels must be >= 0.")
    if n_classes is not None and labels.size and labels.max() >= n_classes:
        raise ValueError(
            f"`y` holds label {labels.max()}, out of range for n_classes={n_classes} "
            f"(labels must lie in [0, {n_classes - 1}])."
        )
    return labels


_blas_controller = None


def _one_blas_thread():
    """Context manager: BLAS libraries limited to one thread, restored on exit."""
    global _blas_controller
    if _blas_controller is None:  # scanning the loaded libraries costs milliseconds: once
        import scipy.linalg  # noqa: F401  (SciPy's own BLAS must be loaded to be seen)

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def blas_threads_for(width):
    """Context manager for dense linear algebra on matrices `width` wide: one BLAS
    thread up to `SINGLE_THREAD_EIGH_MAX_DIM`, the library's default above (where a
    second thread pays even when the machine is busy)."""
    return _one_blas_thread() if width <= SINGLE_THREAD_EIGH_MAX_DIM else contextlib.nullcontext()


def _subspace_iteration(matrix, k):
    """The `k` leading eigenpairs of a symmetric PSD matrix, ascending like `eigh`:
    seeded block power iteration on `k + RANDOMIZED_OVERSAMPLING` directions, then
    Rayleigh-Ritz."""
    d = len(matrix)
    block = min(d, k + RANDOMIZED_OVERSAMPLING)
    basis = np.random.default_rng(0).normal(size=(d, block))
    for _ in range(RANDOMIZED_ITERATIONS):
        basis, _ = np.linalg.qr(matrix @ basis)
    values, vectors = np.linalg.eigh(basis.T @ matrix @ basis)
    return values[-k:], basis @ vectors[:, -k:]


def _leading_eigenpairs(matrix, k):
    """The `k` leading eigenpairs of a symmetric matrix, ascending like `eigh`:
    Lanczos (ARPACK) where it is faster, else LAPACK `syevr`; deterministic."""
    import scipy.linalg

    d = len(matrix)
    if d >= LANCZOS_MIN_DIM and k <= LANCZOS_MAX_SHARE * d:
        import scipy.sparse.linalg

        # A fixed start vector makes the result reproducible (ARPACK's default is random).
        start = np.random.default_rng(0).uniform(-1.0, 1.0, d)
        try:
            values, vectors = scipy.sparse.linalg.eigsh(
                matrix, k=k, which="LA", tol=LANCZOS_TOLERANCE, v0=start,
                maxiter=LANCZOS_MAX_RESTARTS,
            )
        except scipy.sparse.linalg.ArpackError:  # includes ArpackNoConvergence
            pass
        else:
            order = np.argsort(values)
            return values[order], vectors[:, order]
    return scipy.linalg.eigh(matrix, subset_by_index=[d - k, d - 1], driver="evr")


class _Spectrum:
    """The leading eigenpairs of one symmetric class matrix, computed as far as needed.

    Asking for pair `i` beyond those computed recomputes at least twice as many; only
    the leading `k` are computed (`_leading_eigenpairs`: Lanczos or LAPACK `syevr`)
    while `k` is small against `d`, else all of them (`numpy.linalg.eigh`). Values are
    clipped at 0 and in descending order; vectors have deterministic signs. The matrix comes from
    `make_matrix()` each time it is needed and is not kept: a solve over K classes
    holds one class matrix at a time besides the statistics, not K of them.
    """

    def __init__(self, make_matrix, first, randomized=False):
        self.make_matrix = make_matrix
        self.randomized = randomized
        self.k = 0
        self._compute(first)

    def _compute(self, k):
        matrix = self.make_matrix()
        d = self.d = len(matrix)
        self.trace = max(float(np.trace(matrix)), 0.0)
        k = min(d, max(int(k), 1))
        if k >= SUBSET_MAX_SHARE * d:
            values, vectors = np.linalg.eigh(matrix)
            k = d
        elif self.randomized:
            values, vectors = _subspace_iteration(matrix, k)
        else:
            values, vectors = _leading_eigenpairs(matrix, k)
        self.values = np.clip(values[::-1], 0.0, None)
        self.vectors = fix_signs(vectors[:, ::-1])
        self.k = k

    def ensure(self, k):
        if k > self.k:
            self._compute(max(k, 2 * self.k))

    def value(self, i):
        self.ensure(i + 1)
        return self.values[i]

    def share(self, i):
        """Eigenvalue `i` over the trace (0 for an all-zero matrix)."""
        return self.value(i) / self.trace if self.trace > 0 else 0.0

    def vector(self, i):
        self.ensure(i + 1)
        return self.vectors[:, i]

    def alive(self, i):
        """Whether pair `i` exists and is not in the exhausted (null) part."""
        return i < self.d and self.share(i) > EXHAUSTED_SHARE


class _FactoredSpectrum(_Spectrum):
    """All eigenpairs of a class matrix given as `basis @ small @ basis.T` (a sketch's
    class matrix); beyond the basis the values are 0 (exhausted), and the shares are
    relative to the exact `trace`."""

    def __init__(self, basis, small, trace):
        self.d = len(basis)
        self.trace = trace
        values, vectors = np.linalg.eigh(small)
        self.values = np.clip(values[::-1], 0.0, None)
        self.vectors = fix_signs(basis @ vectors[:, ::-1])
        self.k = len(self.values)

    def ensure(self, k):
        pass

    def value(self, i):
        return self.values[i] if i < self.k else 0.0

    def alive(self, i):
        return i < self.k and self.share(i) > EXHAUSTED_SHARE


def _as_dense(x):
    """`x` as a real NumPy array (or a backend tensor, kept); clear errors otherwise."""
    if _is_backend_tensor(x):
        return x
    if type(x).__module__.startswith("scipy.sparse"):
        raise TypeError(
            "Sparse input is not supported by ClassPCA: pass a dense array (x.toarray())."
        )
    x = as_standard_float(x)  # bfloat16 (mixed precision) -> float32
    if x.dtype.kind == "c":
        raise ValueError("Complex data not supported: `x` must be real.")
    if x.dtype.kind == "O":
        try:
            x = x.astype(np.float64)
        except (TypeError, ValueError) as error:
            raise TypeError(f"`x` must be numeric; {error}") from None
    if x.dtype.kind not in "biuf":
        raise TypeError(f"`x` must be numeric; received dtype {x.dtype}.")
    return x


class _Moments:
    """The statistics of a `ClassPCA` pickled by keras-classpca 0.1.0 (per-class
    `count`, `total` and `outer` dicts): only ever unpickled, and turned into
    `ClassStatistics` by `ClassPCA.__setstate__`."""

    def to_statistics(self):
        labels = sorted(self.count)
        if not labels:
            return None
        return ClassStatistics.from_arrays(
            [self.count[label] for label in labels], [self.total[label] for label in labels],
            [self.outer[label] for label in labels], classes=np.array(labels, dtype=np.int64))


class ClassPCA:
    """Class-conditional principal components of streamed `(x, y)` data.

    For each class `c` it accumulates, batch by batch, the count, the sum and the second
    moment of the samples in float64 (`ClassStatistics`; memory O(K·d²) whatever the
    number of samples). Solving takes the leading eigenvectors of each class's matrix
    (the uncentered second moment E[x xᵀ | c], or the covariance when `center=True`) and
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
    how many the data can give. More components than features (`n_components > d`)
    give a kernel of rank at most `d`: that warns.

    Only the leading eigenpairs a class needs are computed while they are fewer than a
    third of `d` (ARPACK's Lanczos for `d >= 512` and at most `d / 16` pairs, else
    SciPy's `syevr` with `subset_by_index`), else all of them;
    up to `d = SINGLE_THREAD_EIGH_MAX_DIM` (1024) with one BLAS thread, which avoids the
    10-100x stalls of multithreaded OpenBLAS on a busy machine (docs/benchmarks.md).

    Precision (`product_dtype=`): the products of each chunk of rows are computed in
    float32 for data of float32 precision or less and in float64 for float64 data, and
    always summed across chunks in float64, about a per-class reference point so that
    data far from the origin lose nothing to the shift. Float32 products carry a
    relative error of about 1e-7 of each class's largest eigenvalue: components whose
    eigenvalues are within ~1e-5 of that (ill-conditioned data) or closer to each other
    than that are only as good as float32 allows; `product_dtype="float64"` costs about
    twice the time.

    The fitted layer weights (`kernel_`, `bias_`) are the components with two more
    choices applied:

    - `scaling`: `"standardize"` (default) scales each component so that its output has
      unit variance over all the data; `"unit"` keeps unit-norm eigenvectors (the
      authors' code); `"whiten"` divides by the square root of the class eigenvalue.
    - `offset`: `"center"` (default) sets `bias_ = -kernel_ᵀ mean_` so that the output
      has zero mean over the data; `"zero"` leaves no bias (the authors' code). A
      Keras layer built with `use_bias=False` has nowhere to put this bias: solved,
      its outputs keep their mean (a BatchNormalization after it, the usual reason for
      `use_bias=False`, removes it).

    Two remedies for what a frozen solved layer loses (`core/directions.py`):

    - `discriminant`: that many of the directions are the Fisher discriminant
      directions of the class means against the pooled within-class covariance (at most
      K - 1), computed from the same statistics; class-PCA keeps each class's
      high-variance directions, these separate the classes. `"auto"` takes K - 1 but at
      most half of the directions. Their `component_classes_` entry is -1.
    - `sign_pairs`: `n_components / 2` directions, each followed by its negative (the
      Saak transform), so a ReLU after the layer discards nothing. `"spare"` pairs only
      the filters a layer has beyond its `d` input features (32 filters over 3×3
      patches, d = 9): max(d, n_components / 2) directions, the leading ones (by
      eigenvalue share) followed by their negatives. Without it those spare filters are
      further class directions, linear combinations of the first d; a ReLU after a
      negative passes the half its direction's own filter discards. Not `ClassPCA`'s
      default, but that of `hybridize` and the `ClassPCAConv*` layers for a
      convolution a rectifier reads directly: better on held-out first conv layers
      with ReLU (median +0.8 pp), lost where BatchNormalization comes between
      (`bench_spare`, `bench_spare_rule` in docs/benchmarks.md).

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
        discriminant: number of Fisher discriminant directions among the components,
            or `"auto"` (see above); 0 for class-PCA only.
        sign_pairs: each direction followed by its negative (True), only the
            directions beyond the input's features (`"spare"`), or none (see above).
        product_dtype: `"float32"` or `"float64"` products; None picks by the data's
            dtype (see above).
        memory_limit: bytes the class statistics may take (`K·(d² + 2d + 1)` float64);
            None = the memory the system reports available. Statistics that would
            exceed it are sketched (`sketch_size="auto"`, with a warning); with
            `sketch_size=None`, or a sketch that does not fit either, a `MemoryError`
            says so, with the numbers, before any product is computed.
        eigen_solver: `"exact"` (LAPACK) or `"randomized"`: the leading eigenvectors by
            seeded subspace iteration (Halko et al. 2011; 4 iterations, 10 extra
            directions), several times faster for a few vectors of a large matrix and
            accurate to about the eigen-gap — what `cutoff="auto"`'s decision uses.
        sketch_size: `None` keeps the exact `K·d²` statistics; an integer `ℓ` keeps a
            Frequent Directions sketch of `ℓ` rows per class instead (`ClassSketch`,
            `O(K·d·ℓ)` memory; counts, sums, traces and the total second moment stay
            exact); `"auto"` (default) keeps exact statistics while they fit in
            `memory_limit` and switches to a sketch (with a warning; `sketch_size_`
            says which) when they would not: `max(64, 8 x components per class)` rows
            (fewer if that does not fit).

    Attributes (after `fit`, `partial_fit` or `from_statistics`):
        statistics_: the `ClassStatistics` solved (per-class count, sum, second moment),
            or the `ClassSketch` (see `sketch_size`).
        sketch_size_: rows per class of the sketch solved, or None for exact statistics.
        classes_, n_features_in_, n_samples_seen_, mean_, covariance_, components_,
        component_classes_, explained_variance_, explained_variance_ratio_,
        n_components_, kernel_, bias_.

    Parameters are checked by `fit` (an `InvalidParameterError`, both a `ValueError`
    and a `TypeError`), so `ClassPCA` works with `sklearn.base.clone`, `get_params` and
    `set_params`; before fitting, the fitted attributes do not exist
    (`hasattr(ClassPCA(4), "components_")` is False; using them raises
    `NotFittedError`).

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(600, 8)), np.repeat([0, 1, 2], 200)
    >>> pca = ClassPCA(6).fit(x, y)
    >>> pca.components_.shape, pca.kernel_.shape, pca.classes_.tolist()
    ((8, 6), (8, 6), [0, 1, 2])
    >>> hasattr(ClassPCA(6), "components_")
    False
    """

    _parameter_constraints = _PARAMETER_CONSTRAINTS

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
        discriminant=0,
        sign_pairs=False,
        product_dtype=None,
        memory_limit=None,
        eigen_solver="exact",
        sketch_size="auto",
    ):
        self.n_components = n_components
        self.center = center
        self.allocation = allocation
        self.scaling = scaling
        self.offset = offset
        self.variance_share = variance_share
        self.dedup_threshold = dedup_threshold
        self.n_classes = n_classes
        self.discriminant = discriminant
        self.sign_pairs = sign_pairs
        self.product_dtype = product_dtype
        self.memory_limit = memory_limit
        self.eigen_solver = eigen_solver
        self.sketch_size = sketch_size

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _get_param_names(cls):
        return list(_PARAMETER_CONSTRAINTS)

    def get_params(self, deep=True):
        """The constructor parameters, as a dict (`deep` is accepted for scikit-learn)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params):
        """Set constructor parameters and return `self` (validated at the next fit/solve).

        Accumulated statistics are kept; cached solutions are dropped.
        """
        valid = self._get_param_names()
        for name in params:
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for ClassPCA; valid parameters are {valid}."
                )
        for name, value in params.items():
            setattr(self, name, value)
        self.__dict__.pop("_solutions", None)
        return self

    def _validate_params(self):
        for name, (allowed, test) in self._parameter_constraints.items():
            value = getattr(self, name)
            if not test(value):
                raise InvalidParameterError(
                    f"`{name}` must be {allowed}; received {value!r}."
                )

    def check_params(self):
        """Raise `InvalidParameterError` for an invalid parameter (what `fit` does first).

        For wrappers that validate early, e.g. a Keras layer at construction.
        """
        self._validate_params()

    def __sklearn_tags__(self):
        from sklearn.utils import Tags, TargetTags, TransformerTags

        tags = Tags(
            estimator_type=None,
            target_tags=TargetTags(required=True),
            transformer_tags=TransformerTags(),
        )
        tags.input_tags.two_d_array = True
        tags.input_tags.allow_nan = False
        return tags

    def __repr__(self):
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"ClassPCA({params})"

    # ------------------------------------------------------------------ accumulation
    def _validated_batch(self, x, y, n_features):
        x = _as_dense(x)
        shape = tuple(x.shape)
        if len(shape) != 2:
            raise ValueError(
                f"`x` must be 2-D (n_samples, n_features); received shape {shape}. "
                "Flatten samples (or extract conv patches) first."
            )
        if n_features is not None and shape[1] != n_features:
            raise ValueError(
                f"X has {shape[1]} features, but ClassPCA is expecting {n_features} "
                "features as input (`x` must have the features it was fitted on)."
            )
        if shape[1] == 0:
            raise ValueError(
                f"`x` has 0 feature(s) (shape={shape}) while a minimum of 1 is required."
            )
        if y is None:
            raise ValueError(
                "ClassPCA requires y to be passed, but the target y is None: class-PCA "
                "needs the label of every sample."
            )
        labels = labels_to_int(y, self.n_classes)
        if len(labels) != shape[0]:
            raise ValueError(
                "`x` and `y` must have the same number of samples; received "
                f"{shape[0]} and {len(labels)}."
            )
        return x, labels

    def _auto_sketch_size(self, n_classes, n_features, error):
        """Rows per class for `sketch_size="auto"`: `SKETCH_ROWS_PER_COMPONENT` x the
        components a class gets (at least `SKETCH_MIN_ROWS`, at most `d`), fewer if that
        does not fit in memory, never fewer than the components: then `error` is raised."""
        k, d = max(int(n_classes), 1), int(n_features)
        per_class = -(-(self.n_components or 1) // k)
        size = min(d, max(SKETCH_MIN_ROWS, SKETCH_ROWS_PER_COMPONENT * per_class))
        budget = memory_budget(self.memory_limit)
        limit, limit_name = budget if budget is not None else (None, "")
        if limit is not None:
            fixed, per_row = sketch_nbytes(k, d, 0), sketch_nbytes(k, d, 1) - sketch_nbytes(k, d, 0)
            size = min(size, int((limit - fixed) // per_row))
        if size < per_class:
            # The automatic sketch was tried too: say so, with what it would need.
            raise MemoryError(
                f"{error} The automatic sketch (sketch_size='auto') does not fit either: "
                f"{per_class} rows per class (the components a class gets) need "
                f"{format_bytes(sketch_nbytes(k, d, per_class))}. Raise `memory_limit`, "
                "or ask for fewer components or classes."
            ) from None
        warn(
            f"Exact class statistics for {k} classes x {d} features need "
            f"{format_bytes(statistics_nbytes(k, d))} (K x d^2 float64), more than "
            f"{limit_name} ({format_bytes(limit)}): keeping a Frequent Directions sketch of "
            f"{size} rows per class instead (ClassSketch, "
            f"{format_bytes(sketch_nbytes(k, d, size))}); each class's leading directions "
            "are approximate. Pass sketch_size=None to raise instead, or an integer to "
            "choose the rows."
        )
        return size

    def _sketch_size_for(self, n_features):
        """Sketch rows per class for statistics of `n_features` (None: exact), by
        `sketch_size` and the memory: with a known `n_classes` decided and checked up
        front (`MemoryError` if nothing fits); without, `"auto"` starts exact and
        switches while accumulating (`_accumulate`)."""
        size, k = self.sketch_size, self.n_classes
        if k is None:
            return None if size == "auto" else size
        if size == "auto":
            try:
                check_memory(k, n_features, self.memory_limit)
                return None
            except MemoryError as error:
                return self._auto_sketch_size(k, n_features, error)
        if size is None:  # every slot will be needed: check up front
            check_memory(k, n_features, self.memory_limit)
        else:
            check_sketch_memory(k, n_features, size, self.memory_limit)
        return size

    def _new_statistics(self, n_features):
        options = dict(product_dtype=self.product_dtype, memory_limit=self.memory_limit)
        size = self._sketch_size_for(n_features)
        if size is None:
            return ClassStatistics(n_features, **options)
        return ClassSketch(n_features, size, **options)

    def _accumulate(self, statistics, x, labels):
        """`statistics.accumulate(x, labels)`; with `sketch_size="auto"`, exact
        statistics that would outgrow memory become a sketch. Returns the statistics."""
        try:
            statistics.accumulate(x, labels)
            return statistics
        except MemoryError as error:
            if self.sketch_size != "auto":
                raise
            classes = len(statistics) + len(set(np.unique(labels).tolist()) - set(
                statistics.classes.tolist()))
            size = self._auto_sketch_size(classes, statistics.n_features, error)
            if isinstance(statistics, ClassStatistics):
                sketch = ClassSketch.from_statistics(statistics, size)
            elif size < statistics.sketch_size:
                # Classes that arrived late: the automatic sketch was sized for fewer.
                # Shrunk in place (a copy would need the memory that is missing), so
                # the batch is checked first: a refused batch changes nothing.
                _check_finite(x, "x")
                sketch = statistics.shrink_to(size)
            else:
                raise
            sketch.accumulate(x, labels)
            return sketch

    def partial_fit(self, x, y):
        """Add one batch to the statistics and return `self`.

        Invalid input raises before any state changes.
        """
        self._validate_params()
        statistics = self.__dict__.get("_statistics")
        n_features = None if statistics is None else statistics.n_features
        x, labels = self._validated_batch(x, y, n_features)
        if not len(labels):
            return self
        if statistics is None:
            self._statistics = self._accumulate(self._new_statistics(x.shape[1]), x, labels)
        else:
            # atomic: checks the batch first
            self._statistics = self._accumulate(statistics, x, labels)
        self._solutions = {}
        return self

    def fit(self, data, y=None, *, batch_size=None, steps=None, statistics_pass=None):
        """Fit from scratch on `(x, y)` arrays, a `tf.data.Dataset`, or batches.

        Args:
            data: `x` (with `y`), `(x, y)`, a `tf.data.Dataset` of `(x, y)` batches
                (TFDS with `as_supervised=True`), a `keras.utils.PyDataset`, or any
                iterable of `(x, y)` batches. `x` is `(n_samples, n_features)`: NumPy
                or a tensor of the Keras backend (multiplied on its device).
            y: labels when `data` is `x`: integers or one-hot rows.
            batch_size: rows per batch when slicing arrays (default: in-memory arrays
                are accumulated in one call, a cache-sized chunk of rows at a time).
            steps: use at most this many batches. A data source that never ends
                (`dataset.repeat()`) needs it.
            statistics_pass: a callable that computes the statistics elsewhere, e.g.
                `keras_classpca.distributed.StrategyPass(strategy)` for a
                `tf.distribute` strategy: called as `statistics_pass(data, y,
                n_classes=..., batch_size=..., steps=..., product_dtype=...,
                sketch_size=...)` (`sketch_size`: a callable `n_features -> None or ℓ`,
                this estimator's rule), it returns a `ClassStatistics` or a
                `ClassSketch`. See docs/distributed.md.

        Returns:
            `self`. On any error the previous state is kept.
        """
        self._validate_params()
        if statistics_pass is not None:
            if not callable(statistics_pass):
                raise TypeError(
                    "`statistics_pass` must be callable (e.g. "
                    "keras_classpca.distributed.StrategyPass(strategy)); received "
                    f"{type(statistics_pass).__name__}."
                )
            statistics = statistics_pass(
                data,
                y,
                n_classes=self.n_classes,
                batch_size=batch_size,
                steps=steps,
                product_dtype=self.product_dtype,
                sketch_size=self._sketch_size_for,
            )
            if not isinstance(statistics, (ClassStatistics, ClassSketch)):
                raise TypeError(
                    "`statistics_pass` must return ClassStatistics or a ClassSketch; "
                    f"returned {type(statistics).__name__}."
                )
            return self._set_statistics(statistics)
        # pandas frames as arrays (their indexing is not positional); sparse `x` gets
        # `_as_dense`'s message.
        data, y = readable_data(data, sparse_ok=True), readable_data(y, sparse_ok=True)
        if y is None and hasattr(data, "__array__") and not isinstance(data, (tuple, list)):
            raise ValueError(
                "ClassPCA requires y to be passed, but the target y is None: class-PCA needs "
                "labels; pass `fit(x, y)`, `fit((x, y))`, or batches of `(x, y)`."
            )
        statistics = None
        arrays = as_arrays(data, y) if batch_size is None and steps is None else None
        if arrays is not None:
            batches = [arrays]  # in memory: one call, chunked inside `accumulate`
        else:
            batches = iter_batches(data, y, batch_size=batch_size, steps=steps, keep_tensors=True)
        for x_batch, y_batch in batches:
            n_features = None if statistics is None else statistics.n_features
            x_batch, labels = self._validated_batch(x_batch, y_batch, n_features)
            if not len(labels):
                continue
            if statistics is None:
                statistics = self._new_statistics(x_batch.shape[1])
            statistics = self._accumulate(statistics, x_batch, labels)
        if statistics is None:
            raise ValueError("`data` is empty: no samples to fit ClassPCA on.")
        return self._set_statistics(statistics)

    def _set_statistics(self, statistics):
        """Make `statistics` this estimator's, solving now to surface errors; atomic."""
        if not len(statistics):
            raise ValueError("`data` is empty: no samples to fit ClassPCA on.")
        if self.n_classes is not None and statistics.classes.max() >= self.n_classes:
            raise ValueError(
                f"The statistics hold class {statistics.classes.max()}, out of range for "
                f"n_classes={self.n_classes}."
            )
        keys = ("_statistics", "_solutions")
        previous = {k: self.__dict__[k] for k in keys if k in self.__dict__}
        self._statistics = statistics
        self._solutions = {}
        if self.n_components is not None or self.allocation == "adaptive":
            try:
                self.solve()  # surface errors (too few samples, ...) at fit time
            except ValueError:
                for key in keys:
                    self.__dict__.pop(key, None)
                self.__dict__.update(previous)
                raise
        return self

    @classmethod
    def from_statistics(cls, statistics, n_components=None, **params):
        """A fitted `ClassPCA` on given `ClassStatistics` (not copied), solved once.

        `statistics` may come from anywhere: another estimator's `statistics_`,
        `ClassStatistics.from_arrays(counts, sums, second_moments)` of sums gathered by
        another system, or a distributed pass. Raises as `fit` does.

        >>> import numpy as np
        >>> stats = ClassStatistics(3)
        >>> stats.accumulate(np.random.default_rng(0).normal(size=(60, 3)), np.arange(60) % 2)
        >>> ClassPCA.from_statistics(stats, 2).kernel_.shape
        (3, 2)
        """
        if not isinstance(statistics, (ClassStatistics, ClassSketch)):
            raise TypeError(
                "`statistics` must be ClassStatistics or ClassSketch; received "
                f"{type(statistics).__name__}."
            )
        pca = cls(n_components, **params)
        pca._validate_params()
        return pca._set_statistics(statistics)

    def merge(self, other):
        """Add the statistics of another `ClassPCA` or `ClassStatistics`; return `self`.

        The sum of shards' statistics equals one pass over all the data (to the
        rounding of the products: about 1e-7 relative for float32 data).
        """
        self._validate_params()
        if isinstance(other, ClassPCA):
            other = other.__dict__.get("_statistics")
            if other is None:
                return self
        elif not isinstance(other, (ClassStatistics, ClassSketch)):
            raise TypeError(
                "`other` must be a ClassPCA, ClassStatistics or ClassSketch; received "
                f"{type(other).__name__}."
            )
        if not len(other):
            return self
        mine = self.__dict__.get("_statistics")
        if mine is not None and other.n_features != mine.n_features:
            raise ValueError(
                f"Cannot merge statistics over {other.n_features} features into "
                f"{mine.n_features} features."
            )
        if self.n_classes is not None and other.classes.max() >= self.n_classes:
            raise ValueError(
                f"`other` holds label {other.classes.max()}, out of range for "
                f"n_classes={self.n_classes}."
            )
        if mine is None:
            mine = self._new_statistics(other.n_features)
        if isinstance(other, ClassSketch) and isinstance(mine, ClassStatistics):
            # A sketch cannot be made exact again: the merge is a sketch of its size.
            mine = ClassSketch.from_statistics(mine, other.sketch_size)
        self._statistics = mine.merge(other)
        self._solutions = {}
        return self

    # ------------------------------------------------------------------ fitted state
    def _fitted_statistics(self):
        statistics = self.__dict__.get("_statistics")
        if statistics is None:
            raise NotFittedError(
                "This ClassPCA instance is not fitted yet: call `fit(x, y)` or "
                "`partial_fit(x, y)` first."
            )
        return statistics

    @property
    def statistics_(self):
        """The `ClassStatistics` (or `ClassSketch`) this estimator solves (shared, not
        copied: adding to it — `merge`, `accumulate` — changes what this estimator
        solves, and its fitted attributes follow)."""
        return self._fitted_statistics()

    @property
    def sketch_size_(self):
        """Rows per class of the `ClassSketch` solved, or None (exact statistics)."""
        return getattr(self._fitted_statistics(), "sketch_size", None)

    def __setstate__(self, state):
        """Unpickle, also what an earlier release pickled: parameters added since take
        their defaults, and a 0.1.0 estimator's statistics (`_Moments`) become
        `ClassStatistics`; its solutions are dropped, to be solved again by this
        release's rules."""
        moments = state.pop("_moments", None)
        if isinstance(moments, _Moments):
            state.pop("_solutions", None)
            statistics = moments.to_statistics()
            if statistics is not None:
                state["_statistics"] = statistics
        for name, parameter in inspect.signature(ClassPCA).parameters.items():
            state.setdefault(name, parameter.default)
        self.__dict__.update(state)

    def __sklearn_is_fitted__(self):
        return self.is_fitted

    @property
    def is_fitted(self):
        """Whether statistics have been accumulated."""
        return self.__dict__.get("_statistics") is not None

    @property
    def classes_(self):
        statistics = self._fitted_statistics()
        if self.n_classes is not None:
            return np.arange(self.n_classes)
        return statistics.classes

    @property
    def n_features_in_(self):
        return self._fitted_statistics().n_features

    @property
    def n_samples_seen_(self):
        """Samples seen per class, aligned with `classes_`."""
        statistics = self._fitted_statistics()
        return np.array([statistics.count(c) for c in self.classes_], dtype=np.int64)

    @property
    def mean_(self):
        """Mean over all samples (all classes)."""
        statistics = self._fitted_statistics()
        return statistics.sums.sum(axis=0) / statistics.n_samples

    @property
    def covariance_(self):
        """Covariance over all samples (all classes), float64 `(d, d)`."""
        statistics = self._fitted_statistics()
        mean = self.mean_
        return statistics.total_second_moment() / statistics.n_samples - np.outer(mean, mean)

    def variance_along(self, directions):
        """The variance of all the data seen along each column of `directions` `(d, k)`:
        `diag(directionsᵀ @ covariance_ @ directions)`, without forming `covariance_`
        where the statistics need not (classes held as rows)."""
        statistics = self._fitted_statistics()
        directions = np.asarray(directions, dtype=np.float64)
        return (statistics.projected_second_moment(directions) / statistics.n_samples
                - np.square(self.mean_ @ directions))

    def total_variance(self):
        """`trace(covariance_)`: the variance of all the data seen (without forming it)."""
        statistics = self._fitted_statistics()
        traces = sum(statistics.trace(label) for label in self.classes_.tolist())
        mean = self.mean_
        return max(traces / statistics.n_samples - float(mean @ mean), 0.0)

    def class_matrix(self, label):
        """The matrix eigen-decomposed for one class (covariance or second moment)."""
        statistics = self._fitted_statistics()
        label = int(label)
        n = statistics.count(label)
        if n == 0:
            raise ValueError(f"Class {label} has no samples.")
        factor = self.class_factor(label)
        if factor is not None:  # a class held as rows: the matrix from its factor
            basis, small, _ = factor
            return basis @ small @ basis.T
        matrix = statistics.second_moment(label) / n
        if self.center:
            class_mean = statistics.sum(label) / n
            matrix = matrix - np.outer(class_mean, class_mean)
        return (matrix + matrix.T) / 2.0

    def class_factor(self, label):
        """`class_matrix(label)` as `(basis, small, trace)` with `basis @ small @
        basis.T` the matrix, where the statistics hold it in that form (a sketch, or a
        class with few rows against its features: `ClassStatistics.class_factor`);
        else None."""
        statistics = self._fitted_statistics()
        if statistics.count(label) == 0:
            raise ValueError(f"Class {int(label)} has no samples.")
        return statistics.class_factor(int(label), self.center)

    # ------------------------------------------------------------------ solving
    def _class_spectra(self, first):
        """One `_Spectrum` per class, each with its leading `first[i]` pairs computed."""
        spectra = []
        with blas_threads_for(self.n_features_in_):
            for label, k in zip(self.classes_.tolist(), first):
                factor = self.class_factor(label)
                if factor is not None:
                    spectra.append(_FactoredSpectrum(*factor))
                else:
                    spectra.append(_Spectrum(functools.partial(self.class_matrix, label), k,
                                             randomized=self.eigen_solver == "randomized"))
        return spectra

    def _adaptive_quota(self, spectrum):
        """Leading vectors whose cumulative share stays within `variance_share` (>= 1)."""
        cumulative, count = 0.0, 0
        while count < spectrum.d:
            cumulative += spectrum.share(count)
            if cumulative > self.variance_share:
                break
            count += 1
        return max(1, count)

    def _quotas(self, n_components, spectra):
        classes = self.classes_
        counts = self.n_samples_seen_
        rank_loss = 1 if self.center else 0
        if self.allocation == "adaptive":
            quotas = []
            for label, count, spectrum in zip(classes, counts, spectra):
                if count <= rank_loss:
                    raise ValueError(
                        f"Class {label} has {count} sample(s); with center=True each class "
                        "needs at least 2 samples (its covariance around its mean). Use "
                        "more data, center=False (second moments: one sample gives one "
                        "direction), or leave the class out."
                    )
                quotas.append(self._adaptive_quota(spectrum))
            return quotas
        k = len(classes)
        base, remainder = divmod(n_components, k)
        quotas = [base] * k
        if remainder:
            # The remaining slots go to the classes whose next vector explains most.
            next_share = [s.share(base) if base < s.d else 0.0 for s in spectra]
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
        self._validate_params()
        self._fitted_statistics()
        n_components = self.n_components if n_components is None else n_components
        if n_components is None and self.allocation == "equal":
            raise ValueError("`n_components` is required with allocation='equal'.")
        if n_components is not None and (not _is_int(n_components) or n_components < 1):
            raise ValueError(
                f"`n_components` must be a positive integer; received {n_components!r}."
            )
        key = None if n_components is None else int(n_components)
        # The statistics may be shared (`from_statistics`, `statistics_`) and grow
        # elsewhere: solutions hold for the version they were computed from.
        version = self._fitted_statistics().version
        if self.__dict__.get("_solved_version") != version:
            self._solutions, self._solved_version = {}, version
        solutions = self.__dict__.setdefault("_solutions", {})
        if key not in solutions:
            solutions[key] = self._solve(key)
        return solutions[key]

    def _paired_directions(self, n_components):
        """How many directions `n_components` filters hold under `sign_pairs`, the rest
        being negatives (None: as many as the adaptive rule keeps)."""
        if n_components is None or not self.sign_pairs:
            return n_components
        half = -(-n_components // 2)  # an odd count leaves the last direction unpaired
        if self.sign_pairs == "spare":
            return max(min(self.n_features_in_, n_components), half)
        return half

    def _solve(self, n_components):
        """Class-PCA directions, Fisher directions mixed in, then sign pairs."""
        directions = self._paired_directions(n_components)
        pair_all = n_components is None and self.sign_pairs and self.sign_pairs != "spare"
        if directions == n_components and not pair_all and self.discriminant == 0:
            return self._solve_class_pca(n_components)
        n_fisher = self._n_discriminant(directions)
        if directions is not None and n_fisher >= directions:
            raise ValueError(
                f"discriminant={self.discriminant!r} leaves no class-PCA component of the "
                f"{directions} direction(s); use fewer discriminant directions."
            )
        solution = self._solve_class_pca(None if directions is None else directions - n_fisher,
                                         requested=n_components)
        components = solution.components
        classes = solution.component_classes
        n_pca = components.shape[1]
        if n_fisher:
            fisher = self._discriminant_directions(n_fisher)
            components = np.column_stack([components, fisher])
            classes = np.concatenate([classes, np.full(n_fisher, -1, dtype=classes.dtype)])
        # Variance of every direction over all the data (a Fisher direction has no class
        # eigenvalue); the class-PCA ones keep their class eigenvalues.
        covariance = self.covariance_  # a sum over the classes' matrices: once
        pooled = np.sum(components * (covariance @ components), axis=0)
        variance = np.concatenate([solution.explained_variance, pooled[n_pca:]])
        total = np.trace(covariance)
        ratio = np.concatenate([
            solution.explained_variance_ratio,
            pooled[n_pca:] / total if total > 0 else np.zeros(n_fisher),
        ])
        kernel = components * self._scales(components, variance)
        bias = -(self.mean_ @ kernel) if self.offset == "center" else np.zeros(kernel.shape[1])
        n_paired = len(ratio) if pair_all else (n_components or 0) - (directions or 0)
        if n_paired:
            # `n_paired` directions get their negative right after them: the leading
            # ones by share for "spare"; for True all but, with an odd count, the last.
            order = np.arange(len(ratio))
            if self.sign_pairs == "spare":
                order = np.argsort(-ratio, kind="stable")
            paired = np.zeros(len(ratio), dtype=bool)
            paired[order[:n_paired]] = True
            columns, signs = sign_pair_columns(paired)
            kernel, bias = kernel[:, columns] * signs, bias[columns] * signs
            components = components[:, columns] * signs
            classes, variance, ratio = classes[columns], variance[columns], ratio[columns]
        return Solution(components, classes, variance, ratio, kernel, bias)

    def _n_discriminant(self, directions):
        """How many Fisher directions: at most K - 1 (and the features); `"auto"` takes
        K - 1 but at most half of the `directions`."""
        limit = min(len(self.classes_) - 1, self.n_features_in_)
        if self.discriminant == "auto":
            return max(0, min(limit, (directions or 2 * limit) // 2))
        return min(int(self.discriminant), limit)

    def _discriminant_directions(self, n):
        statistics = self._fitted_statistics()
        labels = self.classes_.tolist()
        counts = np.array([statistics.count(c) for c in labels], dtype=np.float64)
        means = np.stack([statistics.sum(c) / statistics.count(c) for c in labels])
        # Pooled within-class covariance = (Σ x xᵀ − Σ_c n_c μ_c μ_cᵀ) / N: exact from
        # the total second moment, also when the classes are sketched.
        within = statistics.total_second_moment() - (means.T * counts) @ means
        directions, _ = discriminant_directions(counts, means, None, n,
                                                within=within / counts.sum())
        return directions

    def _solve_class_pca(self, n_components, requested=None):
        """Class-PCA of `n_components` directions; `requested`: the components asked for
        in all (sign pairs and Fisher directions included), for the error message."""
        classes = self.classes_
        d = self.n_features_in_
        capacity = len(classes) * d
        if n_components is not None and n_components > capacity:
            requested = requested or n_components
            asked = ("" if requested == n_components else
                     f" (of the {requested} asked for; the rest are sign pairs or Fisher "
                     "directions)")
            if not self.sign_pairs and requested <= 2 * capacity:
                fix = ("use fewer components, or sign_pairs=True (half as many directions, "
                       "each with its negative)")
            else:
                fix = (f"this data can give at most {2 * capacity if self.sign_pairs else capacity}"
                       " components: use fewer (a smaller layer), data with more classes, or "
                       "leave the layer to training (a smaller cutoff)")
            raise ValueError(
                f"n_components={n_components}{asked} exceeds what {len(classes)} classes x "
                f"{d} features can give ({capacity}): {fix}."
            )
        for label, count in zip(classes, self.n_samples_seen_):
            if count == 0:
                raise ValueError(
                    f"Class {label} (of n_classes={self.n_classes}) has no samples: drop "
                    "`n_classes` to solve from the classes present, or check that the data "
                    "holds every class (a dataset sorted by class and cut short?)."
                )
        if n_components is not None and n_components > d:
            warn(
                f"n_components={n_components} exceeds the {d} input features: the kernel "
                f"has rank at most {d}, so {n_components - d} of its columns are linear "
                "combinations of the others (`sign_pairs='spare'` gives them the "
                "negatives of the leading directions instead).",
                OvercompleteWarning
            )
        # Pairs computed up front: the class's share of the components plus room for
        # skipped duplicates; more are computed on demand.
        if self.allocation == "adaptive":
            first = [8] * len(classes)
        else:
            base = n_components // len(classes)
            first = [base + 1 + max(4, base // 2)] * len(classes)
        spectra = self._class_spectra(first)
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
            kept_vectors = np.column_stack([kept_vectors, spectra[ci].vector(vi)])

        # Each class's quota, the classes' next vectors examined largest share first:
        # of two classes sharing a direction, the one it explains more of keeps it,
        # whatever their labels (in label order, renumbering the classes changed which
        # filters a layer got).
        cursor = [0] * len(classes)  # next unexamined vector of each class
        taken = [0] * len(classes)
        queue = [(-spectra[ci].share(0), ci) for ci, quota in enumerate(quotas)
                 if quota > 0 and spectra[ci].alive(0)]
        heapq.heapify(queue)
        while queue:
            _, ci = heapq.heappop(queue)
            vi = cursor[ci]
            cursor[ci] += 1
            if not is_duplicate(ci, spectra[ci].vector(vi)):
                take(ci, vi)
                taken[ci] += 1
            if taken[ci] < quotas[ci] and spectra[ci].alive(cursor[ci]):
                heapq.heappush(queue, (-spectra[ci].share(cursor[ci]), ci))

        if n_components is not None and len(kept) > n_components:
            # Adaptive rule kept more than asked: keep those of largest share.
            by_share = sorted(
                range(len(kept)), key=lambda j: (-spectra[kept[j][0]].share(kept[j][1]), j)
            )
            kept = [kept[j] for j in sorted(by_share[:n_components])]
        # Exhausted or deduplicated classes hand their slots to the best next vectors.
        while n_components is not None and len(kept) < n_components:
            best = None
            for ci in range(len(classes)):
                while spectra[ci].alive(cursor[ci]):
                    if not is_duplicate(ci, spectra[ci].vector(cursor[ci])):
                        break
                    cursor[ci] += 1
                if spectra[ci].alive(cursor[ci]):
                    share = spectra[ci].share(cursor[ci])
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
                (-spectra[ci].share(vi), ci, vi)
                for ci in range(len(classes))
                for vi in range(d)
                if (ci, vi) not in taken and spectra[ci].alive(vi)
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
        components = np.column_stack([spectra[ci].vector(vi) for ci, vi in kept])
        variance = np.array([spectra[ci].value(vi) for ci, vi in kept])
        ratio = np.array([spectra[ci].share(vi) for ci, vi in kept])
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
        output_variance = self.variance_along(components)
        floor = 1e-12 * max(float(output_variance.max()), 1e-300)
        return 1.0 / np.sqrt(np.maximum(output_variance, floor))

    # ------------------------------------------------------------------ solution
    def _solution(self):
        self._fitted_statistics()
        if self.n_components is None and self.allocation == "equal":
            raise NotFittedError(
                "This ClassPCA has statistics but no solution: `n_components` is None with "
                "allocation='equal'; call `solve(n_components)` or set `n_components`."
            )
        return self.solve()

    @property
    def components_(self):
        """Unit eigenvectors `(n_features, n_components)`, grouped by class."""
        return self._solution().components

    @property
    def component_classes_(self):
        return self._solution().component_classes

    @property
    def explained_variance_(self):
        return self._solution().explained_variance

    @property
    def explained_variance_ratio_(self):
        return self._solution().explained_variance_ratio

    @property
    def n_components_(self):
        return self._solution().components.shape[1]

    @property
    def kernel_(self):
        """Layer kernel `(n_features, n_components)`: components after `scaling`."""
        return self._solution().kernel

    @property
    def bias_(self):
        """Layer bias `(n_components,)` per `offset`."""
        return self._solution().bias

    def transform(self, x):
        """`x @ kernel_ + bias_`: what the solved linear layer computes."""
        solution = self._solution()
        if _is_backend_tensor(x):  # fit streams backend tensors; the product is NumPy's
            import keras

            x = keras.ops.convert_to_numpy(x)
        x = _as_dense(x)
        if x.ndim != 2:
            raise ValueError(
                f"`x` must be 2-D (n_samples, {self.n_features_in_}); received shape "
                f"{x.shape}. " + ("Reshape your data: x.reshape(1, -1) for one sample."
                                  if x.ndim == 1 else "Flatten samples (or extract conv "
                                  "patches) first.")
            )
        if x.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {x.shape[-1] if x.ndim else 0} features, but ClassPCA is expecting "
                f"{self.n_features_in_} features as input (`x` must have shape (n_samples, "
                f"{self.n_features_in_}); received {x.shape})."
            )
        x = x.astype(np.float64, copy=False)
        _check_finite(x, "x")
        return x @ solution.kernel + solution.bias

    def fit_transform(self, data, y=None, **fit_params):
        """`fit(data, y, **fit_params).transform(x)` for in-memory `x`."""
        return self.fit(data, y, **fit_params).transform(data if y is not None else data[0])

    def copy(self):
        """An independent copy with the same parameters and statistics."""
        twin = type(self)(**self.get_params())
        statistics = self.__dict__.get("_statistics")
        if statistics is not None:
            twin._statistics = statistics.copy()
            twin._solutions = {}
        return twin
